"""SIGKILL of the edge aimed at exact windows of the receive path, with real peers.

* right after the modality's C-STORE got its Success answers, before the
  study's quiet period ended: the instances answered Success are on disk and
  become one task once the edge is back;
* in the middle of a study's transfer: the modality (dcmtk storescu, as a PACS
  auto-routing job would) sends the whole study again once the edge is back,
  and the study becomes one task with every instance, not a half task and a
  whole one.

Each ends with the result in Orthanc exactly once and the integrity check
verified.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from aifi.demo.samples import cr_study, write_study
from aifi.edge.state import EdgeState, TaskRow
from aifi.netutil import free_port
from peers.dcmtk import storescu
from peers.orthanc import Orthanc

from .conftest import EdgeProcess, HubProcess

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.slow]


@pytest.fixture
def edge(tmp_path: Path, hub: HubProcess, orthanc: Orthanc) -> Iterator[EdgeProcess]:
    folder = tmp_path / "edge"
    folder.mkdir()
    port = free_port()
    process = EdgeProcess(
        folder,
        f"""\
data_dir = "data"
quiet_period_s = 3

[listener]
port = {port}
allowed_calling_aets = ["MODALITY"]

[hub]
url = "{hub.url}"
token = "{hub.add_hospital("St. Example")}"
poll_interval_s = 0.1
max_backoff_s = 1

[pacs]
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}

[[rules]]
name = "connection test"
algorithm = "integrity-check"
""",
    )
    process.port = port  # type: ignore[attr-defined]
    process.start(port)
    yield process
    process.stop()


def tasks_of(edge: EdgeProcess) -> list[TaskRow]:
    state = EdgeState(edge.folder / "data" / "edge.db")
    try:
        return state.tasks()
    finally:
        state.close()


def settled(edge: EdgeProcess, timeout: float = 90) -> list[TaskRow]:
    deadline = time.monotonic() + timeout
    while True:
        tasks = tasks_of(edge)
        if tasks and all(t.state == "delivered" for t in tasks):
            return tasks
        assert time.monotonic() < deadline, [(t.state, t.reason) for t in tasks]
        time.sleep(0.2)


def srs_in(orthanc: Orthanc, study_uid: str) -> int:
    time.sleep(1.0)  # a duplicate, if any, would arrive now
    return len(orthanc.find_instances(StudyInstanceUID=study_uid, Modality="SR"))


def test_killed_right_after_answering_success(
    tmp_path: Path, orthanc: Orthanc, edge: EdgeProcess
) -> None:
    files = write_study(cr_study(4, rows=64, columns=64), tmp_path / "modality")
    done = storescu(files, "127.0.0.1", edge.port, calling_aet="MODALITY")  # type: ignore[attr-defined]
    assert done.returncode == 0, done.stderr
    edge.kill()  # Success was answered; the quiet period (3 s) has not ended
    assert tasks_of(edge) == []
    edge.start(edge.port)  # type: ignore[attr-defined]
    (task,) = settled(edge)
    assert len(EdgeState(edge.folder / "data" / "edge.db").task_instances(task.id)) == 4
    assert task.verified is True, task.verification
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    assert srs_in(orthanc, study_uid) == 1


def test_killed_during_a_transfer_then_sent_again_whole(
    tmp_path: Path, orthanc: Orthanc, edge: EdgeProcess
) -> None:
    files = write_study(cr_study(24, rows=256, columns=256), tmp_path / "modality")
    sender = subprocess.Popen(
        [
            "storescu",
            "-aet",
            "MODALITY",
            "-aec",
            "AIFI_EDGE",
            "127.0.0.1",
            str(edge.port),  # type: ignore[attr-defined]
            *map(str, files),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    received = edge.folder / "data" / "received"
    deadline = time.monotonic() + 30
    while len(list(received.rglob("*.dcm"))) < 6:  # part of the study is in
        assert time.monotonic() < deadline, "the transfer did not start"
        time.sleep(0.02)
    edge.kill()
    sender.wait(timeout=60)
    part = len(list(received.rglob("*.dcm")))
    assert part < len(files), "the whole study arrived before the kill; nothing was cut"
    edge.start(edge.port)  # type: ignore[attr-defined]
    again = storescu(files, "127.0.0.1", edge.port, calling_aet="MODALITY")  # type: ignore[attr-defined]
    assert again.returncode == 0, again.stderr
    (task,) = settled(edge)
    assert len(EdgeState(edge.folder / "data" / "edge.db").task_instances(task.id)) == 24
    assert task.verified is True, task.verification
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    assert srs_in(orthanc, study_uid) == 1
