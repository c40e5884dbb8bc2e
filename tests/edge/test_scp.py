"""The edge's DICOM listener against real peers: dcmtk's storescu/echoscu and pynetdicom."""

from __future__ import annotations

import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from aifi.demo.samples import cr_study, write_study
from aifi.edge.config import ListenerSettings
from aifi.edge.scp import EdgeReceiver
from aifi.edge.state import EdgeState
from peers.dcmtk import echoscu, storescu


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[EdgeReceiver]:
    settings = ListenerSettings(port=0, allowed_calling_aets=["STORESCU", "PACS"], fsync=True)
    state = EdgeState(tmp_path / "edge.db")
    scp = EdgeReceiver(settings, state, tmp_path / "received")
    scp.start()
    yield scp
    scp.stop()


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file, without preamble and file meta."""
    raw = path.read_bytes()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return raw[meta_end:]


def test_echo(receiver: EdgeReceiver) -> None:
    assert echoscu("127.0.0.1", receiver.port, calling_aet="STORESCU").returncode == 0


def test_storescu_study_is_stored_as_received(receiver: EdgeReceiver, tmp_path: Path) -> None:
    files = write_study(cr_study(4, rows=256, columns=256), tmp_path / "study")
    result = storescu(files, "127.0.0.1", receiver.port, calling_aet="STORESCU")
    assert result.returncode == 0, result.stderr
    state = receiver.state
    for path in files:
        sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        row = state.instance(sop)
        assert row is not None
        assert dataset_bytes(row.path) == dataset_bytes(path)  # byte for byte as sent
        stored = pydicom.dcmread(row.path)
        assert stored.file_meta.TransferSyntaxUID == row.transfer_syntax_uid
    study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    assert len(state.instances(study_uid)) == 4
    assert state.series_of(study_uid)  # routing attributes kept per series


def test_resent_instances_are_ignored(receiver: EdgeReceiver, tmp_path: Path) -> None:
    files = write_study(cr_study(2, rows=64, columns=64), tmp_path / "study")
    assert storescu(files, "127.0.0.1", receiver.port, calling_aet="STORESCU").returncode == 0
    assert storescu(files, "127.0.0.1", receiver.port, calling_aet="STORESCU").returncode == 0
    study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    assert len(receiver.state.instances(study_uid)) == 2


def test_compressed_transfer_syntax_is_stored_without_decoding(
    receiver: EdgeReceiver,
) -> None:
    path = Path(str(get_testdata_file("JPEG2000.dcm")))
    ds = pydicom.dcmread(path)
    ae = AE(ae_title="PACS")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="AIFI_EDGE")
    assert assoc.is_established
    status = assoc.send_c_store(path)
    assoc.release()
    assert status.Status == 0x0000
    row = receiver.state.instance(ds.SOPInstanceUID)
    assert row is not None
    assert row.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert dataset_bytes(row.path) == dataset_bytes(path)


def test_unknown_calling_ae_title_is_refused_and_recorded(
    receiver: EdgeReceiver, tmp_path: Path
) -> None:
    files = write_study(cr_study(1, rows=64, columns=64), tmp_path / "study")
    result = storescu(files, "127.0.0.1", receiver.port, calling_aet="INTRUDER")
    assert result.returncode != 0
    deadline = time.monotonic() + 5  # recorded by the listener's thread, maybe after storescu exits
    while not receiver.state.events("association-refused") and time.monotonic() < deadline:
        time.sleep(0.05)
    events = receiver.state.events("association-refused")
    assert events and "INTRUDER" in events[-1]["detail"]
    # the listener keeps working for allowed peers
    assert storescu(files, "127.0.0.1", receiver.port, calling_aet="STORESCU").returncode == 0


def _send_raw(port: int, sop_class: str, sop_uid: str, payload: bytes) -> int:
    """Send an arbitrary encoded data set (as a broken modality would)."""
    ae = AE(ae_title="PACS")
    ae.add_requested_context(sop_class, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="AIFI_EDGE")
    assert assoc.is_established
    from pynetdicom.dimse_primitives import C_STORE

    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_uid
    req.Priority = 2
    req.DataSet = BytesIO(payload)
    context = assoc._get_valid_context(sop_class, "1.2.840.10008.1.2.1", "scu")
    assoc._reactor_checkpoint.clear()
    try:
        assoc.dimse.send_msg(req, context.context_id)
        _cx, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assoc.release()
    return int(rsp.Status) if rsp is not None else -1


def test_truncated_and_garbage_instances_get_a_failure_status(
    receiver: EdgeReceiver, tmp_path: Path
) -> None:
    ds = cr_study(1, rows=64, columns=64)[0]
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    encoded = buffer.getvalue()
    truncated = _send_raw(receiver.port, CTImageStorage, ds.SOPInstanceUID, encoded[:-500])
    garbage = _send_raw(receiver.port, CTImageStorage, "1.2.3.4.5", b"this is not DICOM at all!")
    assert truncated == 0xC000  # Cannot understand (PS3.4 Table B.2-1)
    assert garbage == 0xC000
    assert receiver.state.instance(ds.SOPInstanceUID) is None
    refused = receiver.state.events("instance-refused")
    assert len(refused) == 2
    assert "declares" in refused[0]["detail"] or "truncated" in refused[0]["detail"]
    # still serving
    assert echoscu("127.0.0.1", receiver.port, calling_aet="STORESCU").returncode == 0
