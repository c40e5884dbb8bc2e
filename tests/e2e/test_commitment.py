"""Storage commitment (PS3.4 Annex J) with Orthanc: "delivered" means "committed".

Orthanc (1.10) is the PACS; it answers the edge's N-ACTION and reports the
outcome with an N-EVENT-REPORT on a new association to the edge's listener
(the edge's AE title is a modality there, allowed storage commitment). A
storage SCP that offers no storage commitment keeps the task from being
delivered, with the reason recorded. Each destination asks for commitment
on its own: Orthanc as a further destination (a VNA) commits there, while
the primary does not ask and an archive that cannot commit is given up on
alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aifi.demo.samples import cr_study
from aifi.edge.config import (
    DeliverySettings,
    Destination,
    DicomPeer,
    EdgeSettings,
    HubPeer,
    ListenerSettings,
)
from aifi.edge.metrics import render
from aifi.edge.rules import Rule
from aifi.edge.service import EdgeService
from peers.orthanc import Orthanc

from .conftest import HubProcess
from .test_delivery_faults import RefusingPacs, send, settled

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.slow]


def _edge(
    tmp_path: Path,
    hub: HubProcess,
    orthanc: Orthanc,
    pacs: DicomPeer,
    destinations: Sequence[Destination] = (),
) -> EdgeService:
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
        pacs=pacs,
        destinations=list(destinations),
        delivery=DeliverySettings(max_attempts=3, reconcile_interval_s=1.0),
        rules=[Rule(name="connection test", algorithm="integrity-check")],
    )
    service = EdgeService(settings)
    service.start()
    response = orthanc.client.put(
        "/modalities/aifi",
        json={
            "AET": settings.listener.ae_title,
            "Host": "127.0.0.1",
            "Port": service.dicom_port,
            "AllowEcho": True,
            "AllowStore": True,
            "AllowStorageCommitment": True,
        },
    )
    response.raise_for_status()
    return service


def figure(edge: EdgeService, name: str, **labels: str) -> float:
    """One sample of the edge's /metrics (the registry its status server serves)."""
    for family in text_string_to_metric_families(render(edge.metrics).decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels}")


@pytest.fixture
def committing_edge(tmp_path: Path, hub: HubProcess, orthanc: Orthanc) -> Iterator[EdgeService]:
    pacs = DicomPeer(
        ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port, commitment=True
    )
    service = _edge(tmp_path, hub, orthanc, pacs)
    yield service
    service.stop()


def test_delivered_only_once_orthanc_reports_the_commitment(
    tmp_path: Path, orthanc: Orthanc, committing_edge: EdgeService
) -> None:
    edge = committing_edge
    study = send(orthanc, tmp_path, cr_study(1, rows=64, columns=64), "cr")
    assert settled(edge, 1) == {f"integrity-check:{study}": "delivered"}
    (task,) = edge.state.tasks()
    kinds = [e["kind"] for e in edge.state.task_events(task.id)]
    assert kinds.index("commitment-requested") < kinds.index("task-delivered")
    latest = edge.deliverer.commitments.latest(task.id, "pacs")
    assert latest is not None and latest.state == "committed", latest
    assert latest.detail == "1 objects committed"
    assert orthanc.find_instances(StudyInstanceUID=study, Modality="SR")
    metric = "aifi_edge_destination_objects_total"
    assert figure(edge, metric, destination="pacs", status="committed") == 1
    assert figure(edge, "aifi_edge_destination_tasks", destination="pacs", state="committed") == 1
    seconds = "aifi_edge_destination_delivery_seconds"
    assert figure(edge, f"{seconds}_count", destination="pacs", stage="committed") == 1
    stored_s = figure(edge, f"{seconds}_sum", destination="pacs", stage="stored")
    assert 0 <= stored_s <= figure(edge, f"{seconds}_sum", destination="pacs", stage="committed")


def test_a_pacs_without_storage_commitment_keeps_the_task_undelivered(
    tmp_path: Path, hub: HubProcess, orthanc: Orthanc
) -> None:
    plain = RefusingPacs(tmp_path / "plain")
    pacs = DicomPeer(ae_title=plain.aet, host="127.0.0.1", port=plain.dicom_port, commitment=True)
    edge = _edge(tmp_path, hub, orthanc, pacs)
    try:
        send(orthanc, tmp_path, cr_study(1, rows=64, columns=64), "cr")
        settled(edge, 1)
        (task,) = edge.state.tasks()
        assert task.state == "dead-letter"
        assert "storage commitment" in (task.reason or ""), task.reason
        assert plain.held("1.2.840.10008.5.1.4.1.1.88.34") == 1  # stored, never committed
    finally:
        edge.stop()
        plain.stop()


def test_each_destination_asks_for_commitment_on_its_own(
    tmp_path: Path, hub: HubProcess, orthanc: Orthanc
) -> None:
    primary = RefusingPacs(tmp_path / "primary")  # takes everything, is not asked to commit
    archive = RefusingPacs(tmp_path / "archive")  # takes everything, cannot commit
    pacs = DicomPeer(ae_title=primary.aet, host="127.0.0.1", port=primary.dicom_port)
    vna = Destination(
        name="vna", ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port, commitment=True
    )
    research = Destination(
        name="research",
        ae_title=archive.aet,
        host="127.0.0.1",
        port=archive.dicom_port,
        commitment=True,
        max_attempts=2,
    )
    edge = _edge(tmp_path, hub, orthanc, pacs, [vna, research])
    try:
        study = send(orthanc, tmp_path, cr_study(1, rows=64, columns=64), "cr")
        assert settled(edge, 1) == {f"integrity-check:{study}": "delivered"}
        (task,) = edge.state.tasks()
        rows = edge.deliverer.others.rows(task.id)
        assert rows["vna"].state == "committed", rows["vna"]
        latest = edge.deliverer.commitments.latest(task.id, "vna")
        assert latest is not None and latest.state == "committed", latest
        assert latest.detail == "1 objects committed"
        assert orthanc.find_instances(StudyInstanceUID=study, Modality="SR")
        assert edge.deliverer.commitments.latest(task.id, "pacs") is None  # not asked
        assert rows["research"].state == "dead-letter"
        reason = rows["research"].reason or ""
        assert "gave up after 2 attempts: storage commitment not requested" in reason, reason
        assert "refused or missed the storage commitment association" in reason, reason
        assert archive.held("1.2.840.10008.5.1.4.1.1.88.34") == 1  # stored, never committed
        assert "destination research: gave up after 2 attempts" in (task.reason or "")
        kinds = [e["kind"] for e in edge.state.task_events(task.id)]
        assert kinds.index("destination-committed") < kinds.index("task-delivered")
        tasks = "aifi_edge_destination_tasks"
        assert figure(edge, tasks, destination="vna", state="committed") == 1
        assert figure(edge, tasks, destination="pacs", state="stored") == 1
        assert figure(edge, tasks, destination="research", state="dead-letter") == 1
        metric = "aifi_edge_destination_objects_total"
        assert figure(edge, metric, destination="vna", status="committed") == 1
        assert figure(edge, metric, destination="pacs", status="committed") == 0
        assert figure(edge, "aifi_edge_destination_dead_letters_total", destination="research") == 1
    finally:
        edge.stop()
        primary.stop()
        archive.stop()
