"""Several result destinations (``[[destinations]]``), with real peers.

Orthanc is the hospital's PACS (the primary destination, and the source of
the study); a pynetdicom storage SCP that lacks the SR storage SOP class
stands for a research archive that refuses. The archive's refusal is
recorded and parks only that destination; the task is delivered with the
results in Orthanc.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aifi.demo.samples import cr_study
from aifi.edge.config import (
    DeliverySettings,
    Destination,
    DicomPeer,
    EdgeSettings,
    HubPeer,
    ListenerSettings,
)
from aifi.edge.rules import Rule
from aifi.edge.service import EdgeService
from aifi.edge.state import DEAD_LETTER
from peers.orthanc import Orthanc

from .conftest import HubProcess
from .test_delivery_faults import COMPREHENSIVE_3D_SR, RefusingPacs, send, settled

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.slow]


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[RefusingPacs]:
    server = RefusingPacs(tmp_path / "archive", without=COMPREHENSIVE_3D_SR)
    yield server
    server.stop()


@pytest.fixture
def edge(
    tmp_path: Path, hub: HubProcess, orthanc: Orthanc, archive: RefusingPacs
) -> Iterator[EdgeService]:
    settings = EdgeSettings(
        data_dir=tmp_path / "edge",
        quiet_period_s=0.5,
        listener=ListenerSettings(port=0, allowed_calling_aets=[orthanc.aet]),
        hub=HubPeer(
            url=hub.url,
            token=hub.add_hospital("St. Example"),
            poll_interval_s=0.1,
            max_backoff_s=0.2,
        ),
        pacs=DicomPeer(ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port),
        destinations=[
            Destination(
                name="research",
                ae_title=archive.aet,
                host="127.0.0.1",
                port=archive.dicom_port,
                result_kinds=["sr"],
                transfer_syntax=["1.2.840.10008.1.2.1"],
                max_attempts=2,
            )
        ],
        delivery=DeliverySettings(max_attempts=5, reconcile_interval_s=1.0),
        rules=[Rule(name="connection test", algorithm="integrity-check")],
    )
    service = EdgeService(settings)
    service.start()
    orthanc.add_modality("aifi", settings.listener.ae_title, "127.0.0.1", service.dicom_port)
    yield service
    service.stop()


def test_a_refusing_destination_is_parked_alone_and_the_pacs_gets_the_results(
    tmp_path: Path, orthanc: Orthanc, archive: RefusingPacs, edge: EdgeService
) -> None:
    study = send(orthanc, tmp_path, cr_study(1, rows=64, columns=64), "cr")
    states = settled(edge, 1)
    assert states == {f"integrity-check:{study}": "delivered"}
    assert orthanc.find_instances(StudyInstanceUID=study, Modality="SR")  # the primary has it
    assert archive.held(COMPREHENSIVE_3D_SR) == 0
    (task,) = edge.state.tasks()
    reason = task.reason or ""
    assert "destination research: gave up after 2 attempts" in reason, reason
    assert "accepts none of the SOP classes offered (Comprehensive 3D SR" in reason, reason
    kinds = [e["kind"] for e in edge.state.task_events(task.id)]
    assert kinds.count("destination-failed") == 1 and kinds.count("destination-dead-letter") == 1
    [row] = edge.deliverer.others.dead_letters(task.id)
    assert row.destination == "research" and row.state == DEAD_LETTER
    assert "dead-letter" not in kinds  # the task itself was never parked


def test_every_destination_receives_what_it_takes(
    tmp_path: Path, orthanc: Orthanc, archive: RefusingPacs, edge: EdgeService
) -> None:
    archive.stop()
    accepting = RefusingPacs(archive.folder)  # this time with the SR SOP class
    edge.deliverer.others.destinations[0] = edge.deliverer.others.destinations[0].model_copy(
        update={"port": accepting.dicom_port}
    )
    try:
        study = send(orthanc, tmp_path, cr_study(1, rows=64, columns=64), "cr")
        assert settled(edge, 1) == {f"integrity-check:{study}": "delivered"}
        assert accepting.held(COMPREHENSIVE_3D_SR) == 1
        assert orthanc.find_instances(StudyInstanceUID=study, Modality="SR")
        (task,) = edge.state.tasks()
        assert task.reason is None
        assert edge.deliverer.others.settled(task.id)
        assert list(edge.deliverer.others.stored(task.id, "research").values()) == ["stored"]
    finally:
        accepting.stop()
