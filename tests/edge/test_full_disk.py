"""A full volume under the listener: a 4 MiB tmpfs the test mounts (skipped where it cannot).

The modality gets 0xA700 (Out of Resources, PS3.4 Table B.2-1) with an Error
Comment, never a torn file and never a failing handler (0xC211); receiving
resumes by itself once space returns.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from typer.testing import CliRunner

from aifi.cli import app
from aifi.demo.samples import cr_study
from aifi.edge.config import ListenerSettings
from aifi.edge.scp import EdgeReceiver
from aifi.edge.state import EdgeState
from peers.dcmtk import echoscu


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted at ``tmp_path/vol``."""
    volume = tmp_path / "vol"
    volume.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(volume)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield volume
    finally:
        subprocess.run(["umount", "-l", str(volume)], check=False)


def start(state_dir: Path, received: Path, min_free_bytes: int) -> EdgeReceiver:
    settings = ListenerSettings(
        port=0, allowed_calling_aets=["PACS", "ECHOSCU"], min_free_bytes=min_free_bytes
    )
    scp = EdgeReceiver(settings, EdgeState(state_dir / "edge.db"), received)
    scp.start()
    return scp


def store(port: int, ds: Dataset) -> tuple[int, str]:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="AIFI_EDGE")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(rsp.Status), str(rsp.get("ErrorComment", ""))


def images(n: int, seed: str) -> list[Dataset]:
    """Radiographs of about 512 KB each."""
    return cr_study(n, rows=512, columns=512, view_positions=("PA",) * n, seed=seed)


def fill(volume: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free on ``volume``."""
    ballast = volume / "ballast"
    with ballast.open("wb") as fp:
        while True:
            free = _free(volume)
            if free <= leave:
                break
            try:
                fp.write(b"\x00" * min(free - leave, 1 << 20))
                fp.flush()
            except OSError:
                break
    return ballast


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def assert_whole(scp: EdgeReceiver, sent: list[Dataset]) -> None:
    """Every file under received/ is a recorded instance, whole; no temporary file left."""
    files = [p for p in scp.store_dir.rglob("*") if p.is_file() and p.name != "ballast"]
    assert not [p for p in files if p.name.endswith(".part")]
    by_uid = {ds.SOPInstanceUID: ds for ds in sent}
    for path in files:
        row = scp.state.instance(path.stem)
        assert row is not None, f"{path} is on disk but not recorded"
        assert pydicom.dcmread(path).PixelData == by_uid[path.stem].PixelData


def test_below_the_threshold_the_modality_gets_a700_and_receiving_resumes(
    tmp_path: Path, small_volume: Path
) -> None:
    scp = start(tmp_path / "state", small_volume, min_free_bytes=1 << 20)
    try:
        ballast = fill(small_volume, leave=(5 << 20) // 2)
        sent = images(6, "guard")
        answers = [store(scp.port, ds) for ds in sent]
        statuses = [status for status, _ in answers]
        assert statuses[0] == 0x0000
        assert 0xA700 in statuses, answers
        first_refused = statuses.index(0xA700)
        assert all(s == 0xA700 for s in statuses[first_refused:])  # none slips through
        assert "disk space low" in answers[first_refused][1]
        assert_whole(scp, sent)
        assert _free(small_volume) >= 1 << 20  # the guard kept its margin
        paused = scp.state.receiving_paused()
        assert paused is not None and "listener.min_free_bytes" in paused["detail"]
        assert len(scp.state.events("receive-paused")) == 1  # said once, not per instance
        config = tmp_path / "edge.toml"
        config.write_text(f'data_dir = "{tmp_path / "state"}"\n', encoding="utf-8")
        shown = CliRunner().invoke(app, ["edge", "tasks", "--config", str(config)])
        assert shown.exit_code == 0, shown.output
        assert "receiving paused since" in shown.output
        assert echoscu("127.0.0.1", scp.port, calling_aet="ECHOSCU").returncode == 0

        ballast.unlink()  # space returns
        again = images(1, "after")[0]
        assert store(scp.port, again) == (0x0000, "")
        assert scp.state.receiving_paused() is None
        assert len(scp.state.events("receive-resumed")) == 1
    finally:
        scp.stop()


def test_disk_full_while_writing_is_a700_with_nothing_torn(
    tmp_path: Path, small_volume: Path
) -> None:
    """Guard off: the write itself meets ENOSPC; the partial file is removed."""
    scp = start(tmp_path / "state", small_volume, min_free_bytes=0)
    try:
        ballast = fill(small_volume, leave=200_000)
        ds = images(1, "enospc")[0]
        status, comment = store(scp.port, ds)
        assert status == 0xA700 and "disk full" in comment
        assert scp.state.instance(ds.SOPInstanceUID) is None
        assert_whole(scp, [ds])
        assert scp.state.events("store-failed")
        ballast.unlink()
        assert store(scp.port, ds) == (0x0000, "")
        assert_whole(scp, [ds])
        assert scp.state.receiving_paused() is None
    finally:
        scp.stop()


def test_whole_data_folder_full_never_fails_the_handler(tmp_path: Path, small_volume: Path) -> None:
    """State database on the full volume too: still 0xA700, not 0xC211 from a failing handler."""
    scp = start(small_volume, small_volume / "received", min_free_bytes=0)
    try:
        first = images(1, "first")[0]
        assert store(scp.port, first)[0] == 0x0000
        ballast = fill(small_volume, leave=0)
        sent = images(3, "full")
        statuses = [store(scp.port, ds)[0] for ds in sent]
        sent.append(first)
        assert all(s == 0xA700 for s in statuses), [hex(s) for s in statuses]
        assert_whole(scp, sent)
        assert echoscu("127.0.0.1", scp.port, calling_aet="ECHOSCU").returncode == 0
        ballast.unlink()
        assert store(scp.port, sent[0]) == (0x0000, "")
    finally:
        scp.stop()
