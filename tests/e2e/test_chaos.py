"""Chaos: studies flow while the edge and the hub are SIGKILLed at random moments.

Bounded: 20 studies, 10 kills (edge or hub, chosen at random with a fixed
seed), each process restarted after a short outage. The modality sends to
Orthanc (the PACS); Orthanc's routing sends each study to the edge and, like
a real PACS's auto-routing job, sends it again when the edge was down. The
outcome is what the PACS administrator would check: every study's result
in Orthanc exactly once, no task left open, no false verification.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from aifi.demo.samples import DEMO_PATIENTS, cr_study, write_study
from aifi.edge.state import EdgeState
from aifi.netutil import free_port
from peers.dcmtk import storescu
from peers.orthanc import Orthanc

from .conftest import HUB_ON_BOTH_DATABASES, EdgeProcess, HubProcess

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.slow]

STUDIES = 20
KILLS = 10


@pytest.fixture
def edge(tmp_path: Path, hub: HubProcess, orthanc: Orthanc) -> Iterator[EdgeProcess]:
    folder = tmp_path / "edge"
    folder.mkdir()
    port = free_port()
    token = hub.add_hospital("St. Example")
    process = EdgeProcess(
        folder,
        f"""\
data_dir = "data"
quiet_period_s = 2

[listener]
port = {port}
allowed_calling_aets = ["{orthanc.aet}"]
fsync = true

[hub]
url = "{hub.url}"
token = "{token}"
poll_interval_s = 0.1
max_backoff_s = 1

[pacs]
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}

[delivery]
reconcile_interval_s = 2

[[rules]]
name = "connection test"
algorithm = "integrity-check"
""",
    )
    process.port = port  # type: ignore[attr-defined]
    process.start(port)
    orthanc.add_modality("aifi", "AIFI_EDGE", "127.0.0.1", port)
    yield process
    process.stop()


def route(orthanc: Orthanc, ids: list[str], stop_at: float) -> None:
    """Orthanc's auto-routing job: send the study to the edge until it took it."""
    while time.monotonic() < stop_at:
        try:
            orthanc.store_to("aifi", ids)
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise AssertionError("the edge never took the study")


@HUB_ON_BOTH_DATABASES
def test_every_result_lands_exactly_once_through_kills(
    tmp_path: Path, orthanc: Orthanc, hub: HubProcess, edge: EdgeProcess
) -> None:
    rng = random.Random(20261201)
    study_uids: list[str] = []
    for index in range(STUDIES):
        datasets = cr_study(
            1 + index % 2, patient=DEMO_PATIENTS[index % len(DEMO_PATIENTS)], rows=64, columns=64
        )
        files = write_study(datasets, tmp_path / f"modality-{index}")
        done = storescu(
            files, "127.0.0.1", orthanc.dicom_port, calling_aet="MOD", called_aet=orthanc.aet
        )
        assert done.returncode == 0, done.stderr
        study_uids.append(str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID))

    stop_at = time.monotonic() + 240
    senders: list[threading.Thread] = []

    def send(uid: str) -> None:
        route(orthanc, orthanc.find_instances(StudyInstanceUID=uid), stop_at)

    killer_done = threading.Event()
    kills: list[str] = []

    def killer() -> None:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.5, 2.5))
            victim = rng.choice(["edge", "hub"])
            kills.append(victim)
            if victim == "edge":
                edge.kill()
                time.sleep(rng.uniform(0.2, 1.0))
                edge.start(edge.port)  # type: ignore[attr-defined]
            else:
                hub.kill()
                time.sleep(rng.uniform(0.2, 1.0))
                hub.start()
        killer_done.set()

    chaos = threading.Thread(target=killer, name="chaos")
    chaos.start()
    for uid in study_uids:
        sender = threading.Thread(target=send, args=(uid,))
        sender.start()
        senders.append(sender)
        time.sleep(0.3)
    for sender in senders:
        sender.join()
    chaos.join()
    assert len(kills) == KILLS

    def settled() -> list:  # type: ignore[type-arg]
        state = EdgeState(edge.folder / "data" / "edge.db")
        try:
            return state.tasks()
        finally:
            state.close()

    deadline = time.monotonic() + 120
    while True:
        tasks = settled()
        by_study = {t.study_instance_uid for t in tasks}
        if by_study >= set(study_uids) and all(t.state == "delivered" for t in tasks):
            break
        assert time.monotonic() < deadline, [
            (t.state, t.reason) for t in tasks if t.state != "delivered"
        ]
        time.sleep(0.5)

    time.sleep(1.0)  # a duplicate, if any, would arrive now
    sent = lost = duplicated = 0
    for uid in study_uids:
        srs = orthanc.find_instances(StudyInstanceUID=uid, Modality="SR")
        sent += 1
        lost += not srs
        duplicated += len(srs) > 1
    false_verifications = [t for t in settled() if t.verified is not True]
    print(f"chaos: sent {sent}, lost {lost}, duplicated {duplicated}, kills {kills}")
    assert (lost, duplicated) == (0, 0)
    assert not false_verifications, [(t.id, t.verification) for t in false_verifications]
