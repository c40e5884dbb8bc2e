"""The bad-input corpus (``bad_input.py``) through a running listener and ``aifi pseudonymize``.

Each case goes over a real association (pynetdicom's SCU sends the damaged
bytes as they are, which dcmtk's storescu refuses to do; storescu sends the
traversal UIDs, the way the issue reproduced them). Every case is answered
with the status of its cause and an Error Comment naming it, recorded as an
event; the listener keeps serving (C-ECHO afterwards) and nothing is written
outside its data folder.
"""

from __future__ import annotations

import copy
import re
import subprocess
import threading
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from bad_input import Case, base_instance, corpus, part10
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from typer.testing import CliRunner

from aifi.cli import app
from aifi.edge.config import ListenerSettings
from aifi.edge.scp import EdgeReceiver
from aifi.edge.state import EdgeState
from peers.dcmtk import dcmtk_env, echoscu, storescu

# case → (status, words of the Error Comment); PS3.4 Table B.2-1, PS3.7 C.4.2
EXPECTED: dict[str, tuple[int, str]] = {
    "not-dicom": (0xC000, "truncated or not DICOM"),
    "empty-elements": (0xA900, "missing StudyInstanceUID"),
    "truncated": (0xC000, "truncated or not DICOM"),
    "lying-length": (0xC000, "malformed data set"),
    "no-study-uid": (0xA900, "missing StudyInstanceUID"),
    "bad-uid-leading-zero": (0xA900, "invalid StudyInstanceUID"),
    "bad-uid-letters": (0xA900, "invalid SeriesInstanceUID"),
    "bad-uid-too-long": (0xA900, "invalid StudyInstanceUID"),
    "traversal-study-uid": (0xA900, "invalid StudyInstanceUID"),
    "absolute-series-uid": (0xA900, "invalid SeriesInstanceUID"),
    "traversal-sop-uid": (0xA900, "invalid SOP Instance UID"),
    "sop-uid-mismatch": (0xA900, "SOP Instance UID differs from the request"),
    "deflate-bomb": (0xC000, "inflated data set exceeds the edge's limit"),
    "deflate-corrupt": (0xC000, "deflated data set is corrupt"),
    "deflated-fine": (0x0000, ""),
    "nesting-300": (0xA900, "sequences nested too deep"),
    "nesting-3000": (0xA900, "sequences nested too deep"),
    "invalid-utf8": (0x0000, ""),
    "iso-2022": (0x0000, ""),
}
CASES = {case.name: case for case in corpus(bomb_bytes=32 << 20)}
_UID = r"[0-9]+(\.[0-9]+)*"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[EdgeReceiver]:
    data = tmp_path / "data"
    settings = ListenerSettings(
        port=0,
        allowed_calling_aets=["STORESCU", "PACS", "ECHOSCU"],
        max_inflated_bytes=8 << 20,
        max_nesting_depth=64,
    )
    scp = EdgeReceiver(settings, EdgeState(data / "edge.db"), data / "received")
    scp.start()
    yield scp
    scp.stop()


def send_raw(port: int, case: Case) -> tuple[int, str]:
    """C-STORE the case's bytes as they are (a broken modality); (status, Error Comment)."""
    ae = AE(ae_title="PACS")
    ae.dimse_timeout = 20
    ae.add_requested_context(case.sop_class_uid, [ExplicitVRLittleEndian])
    ae.add_requested_context(case.sop_class_uid, [DeflatedExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="AIFI_EDGE")
    assert assoc.is_established
    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = case.sop_class_uid
    req.AffectedSOPInstanceUID = case.sop_instance_uid
    req.Priority = 2
    req.DataSet = BytesIO(case.body)
    context = assoc._get_valid_context(case.sop_class_uid, case.transfer_syntax, "scu")
    assoc._reactor_checkpoint.clear()
    try:
        assoc.dimse.send_msg(req, context.context_id)
        _cx, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assoc.release()
    assert rsp is not None
    return int(rsp.Status), str(getattr(rsp, "ErrorComment", None) or "")


def assert_contained(tmp_path: Path) -> None:
    """Only the state files and UID-named instances, all under the data folder."""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    data = tmp_path / "data"
    for path in data.rglob("*"):
        rel = path.relative_to(data)
        if rel.parts[0] != "received":
            assert len(rel.parts) == 1 and rel.name.split(".db")[0] in ("edge", "audit"), rel
        elif path.is_file():
            assert len(rel.parts) == 4, rel
            assert all(re.fullmatch(_UID, part) for part in rel.parts[1:3]), rel
            assert re.fullmatch(_UID + r"\.dcm", rel.parts[3]), rel
    assert not Path("/tmp/aifi-evil").exists()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_case_is_answered_with_its_cause(
    receiver: EdgeReceiver, tmp_path: Path, name: str
) -> None:
    case = CASES[name]
    status, comment = send_raw(receiver.port, case)
    expected_status, expected_words = EXPECTED[name]
    assert (status, comment) == (expected_status, expected_words) or (
        status == expected_status and expected_words in comment
    ), f"{name}: 0x{status:04X} {comment!r}"
    stored = receiver.state.instance(case.sop_instance_uid)
    if expected_status == 0x0000:
        assert stored is not None and stored.path.is_file()
    else:
        assert stored is None
        events = receiver.state.events("instance-refused")
        assert events and f"0x{expected_status:04X}" in events[-1]["detail"]
    assert echoscu("127.0.0.1", receiver.port, calling_aet="ECHOSCU").returncode == 0
    assert_contained(tmp_path)
    assert not list((tmp_path / "data").rglob("*.part"))


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
def test_storescu_traversal_uids_are_refused_and_nothing_leaves_the_folder(
    receiver: EdgeReceiver, tmp_path: Path
) -> None:
    """The issue's reproduction: plain storescu, UIDs that are paths."""
    ds = base_instance("traversal")
    files = tmp_path.parent / f"{tmp_path.name}-send"
    files.mkdir()
    sent = []
    for n, values in enumerate(
        (
            {"StudyInstanceUID": "../../.."},
            {"SeriesInstanceUID": "/tmp/aifi-evil"},
            {"SOPInstanceUID": "../../../../escaped"},
        )
    ):
        bad = copy.deepcopy(ds)
        with pytest.warns(UserWarning):
            for keyword, value in values.items():
                setattr(bad, keyword, value)
                if keyword == "SOPInstanceUID":
                    bad.file_meta.MediaStorageSOPInstanceUID = value
        path = files / f"bad{n}.dcm"
        bad.save_as(path, enforce_file_format=True)
        sent.append(path)
    for path in sent:
        assert storescu([path], "127.0.0.1", receiver.port).returncode != 0
    refused = receiver.state.events("instance-refused")
    assert len(refused) == 3 and all("0xA900" in e["detail"] for e in refused)
    assert "not a valid UID" in refused[0]["detail"]
    assert_contained(tmp_path)
    assert not (tmp_path.parent / str(ds.SeriesInstanceUID)).exists()
    assert not list(tmp_path.parent.rglob("escaped*"))


def test_empty_file_is_not_sent_and_the_listener_stays_up(
    receiver: EdgeReceiver, tmp_path: Path
) -> None:
    """A zero-byte file: storescu refuses it; a data set with no element cannot be sent at all."""
    empty = tmp_path.parent / f"{tmp_path.name}-empty.dcm"
    empty.write_bytes(b"")
    sent = subprocess.run(
        ["storescu", "-aet", "STORESCU", "127.0.0.1", str(receiver.port), str(empty)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dcmtk_env(),
    )
    assert sent.returncode != 0
    assert echoscu("127.0.0.1", receiver.port, calling_aet="ECHOSCU").returncode == 0
    assert_contained(tmp_path)


def _variant(ds: Dataset, value: int) -> Dataset:
    """The same instance (same SOP Instance UID) with different pixels."""
    out = copy.deepcopy(ds)
    pixels = out.pixel_array.copy()
    pixels[:] = value
    out.PixelData = pixels.astype(np.uint16).tobytes()
    return out


def _store(port: int, ds: Dataset) -> tuple[int, str]:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="AIFI_EDGE")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(rsp.Status), str(rsp.get("ErrorComment", ""))


def _stored_pixels(receiver: EdgeReceiver, sop_uid: str) -> bytes:
    row = receiver.state.instance(sop_uid)
    assert row is not None
    return bytes(pydicom.dcmread(row.path).PixelData)


def test_same_uid_with_other_pixels_is_refused_and_recorded(receiver: EdgeReceiver) -> None:
    first = _variant(base_instance("duplicate"), 100)
    second = _variant(first, 200)
    assert _store(receiver.port, first) == (0x0000, "")
    assert _store(receiver.port, first) == (0x0000, "")  # a plain re-send is harmless
    status, comment = _store(receiver.port, second)
    assert status == 0x0111 and "already received with other content" in comment
    assert _stored_pixels(receiver, first.SOPInstanceUID) == first.PixelData  # first kept
    conflicts = receiver.state.events("instance-conflict")
    assert len(conflicts) == 1 and first.SOPInstanceUID in conflicts[0]["detail"]


def test_racing_senders_of_one_uid_leave_one_whole_file(receiver: EdgeReceiver) -> None:
    """8 associations at once, the same SOP Instance UID, two different contents."""
    ds = base_instance("race")
    versions = [_variant(ds, 1000 + n % 2) for n in range(8)]
    barrier = threading.Barrier(len(versions))
    answers: list[tuple[int, str]] = [(-1, "")] * len(versions)

    def send(n: int) -> None:
        barrier.wait()
        answers[n] = _store(receiver.port, versions[n])

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(versions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    stored = _stored_pixels(receiver, ds.SOPInstanceUID)
    winner = next(n for n in range(2) if versions[n].PixelData == stored)  # whole, one version
    for n, (status, _comment) in enumerate(answers):
        assert status == (0x0000 if n % 2 == winner else 0x0111), (n, answers)
    assert len(receiver.state.events("instance-conflict")) == 4
    files = list(receiver.store_dir.rglob("*"))
    assert [p.name for p in files if p.is_file()] == [f"{ds.SOPInstanceUID}.dcm"]


def test_pseudonymize_goes_through_the_whole_corpus(tmp_path: Path) -> None:
    """Each bad file is refused or failed with its reason; the batch never stops early."""
    src = tmp_path / "src"
    src.mkdir()
    for case in CASES.values():
        (src / f"{case.name}.dcm").write_bytes(part10(case))
    (src / "no-meta.dcm").write_bytes(CASES["iso-2022"].body)  # a bare data set, no Part 10
    (src / "zero-bytes.dcm").write_bytes(b"")
    dst = tmp_path / "dst"
    result = CliRunner().invoke(
        app, ["pseudonymize", str(src), str(dst), "--key-file", str(tmp_path / "key")]
    )
    output = result.output
    assert result.exit_code == 1, output  # some files failed, and the command says so
    summary = re.search(r"(\d+) written, (\d+) refused, (\d+) failed", output)
    assert summary is not None, output
    total = sum(int(n) for n in summary.groups())
    assert total == len(CASES) + 2  # every file has an outcome
    assert re.search(r"failed: truncated\.dcm: \S", output), output
    # too deep to walk: a named refusal of the pseudonymizer, not a crash of the batch
    assert "nesting-3000.dcm: its sequences are nested too deeply" in output, output
    assert "nested too deeply" in output
    assert int(summary.group(1)) >= 3  # the sound ones (deflated-fine, invalid-utf8, iso-2022)
    for path in tmp_path.rglob("*"):
        assert path.is_relative_to(src) or path.is_relative_to(dst) or path.name == "key"
    for path in dst.rglob("*.dcm"):
        assert not path.name.startswith(".")
        pydicom.dcmread(path)  # what was written is readable DICOM
