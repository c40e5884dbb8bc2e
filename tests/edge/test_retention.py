"""Edge retention: received originals and outbox copies leave the disk, audited.

The first test runs a whole edge (real hub in-process, the demo PACS as a
real Storage SCP) and watches its own purge loop delete a delivered study.
The others drive :class:`~aifi.edge.retention.Purger` on the edge's real
state database with a clock moved forward, and ``aifi edge purge``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from aifi.cli import app
from aifi.demo.pacs import DemoPacs
from aifi.demo.samples import cr_study, write_study
from aifi.edge.config import (
    DicomPeer,
    EdgeSettings,
    HubPeer,
    ListenerSettings,
    RetentionSettings,
)
from aifi.edge.pacs import store_to_pacs
from aifi.edge.retention import Purger
from aifi.edge.rules import Rule
from aifi.edge.service import EdgeService
from aifi.edge.state import EdgeState, InstanceRow
from peers.hub import LocalHub, local_hub

DAY = 86400.0


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[LocalHub]:
    with local_hub(tmp_path / "hub") as running:
        yield running


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[DemoPacs]:
    scp = DemoPacs(tmp_path / "pacs", ae_title="PACS")
    scp.start()
    yield scp
    scp.stop()


def wait_for(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_running_edge_purges_a_delivered_study_after_the_retention(
    tmp_path: Path, hub: LocalHub, pacs: DemoPacs
) -> None:
    settings = EdgeSettings(
        data_dir=tmp_path / "edge",
        quiet_period_s=0.3,
        listener=ListenerSettings(port=0, allowed_calling_aets=["PACS"]),
        hub=HubPeer(url=hub.url, token=hub.add_hospital("St. Tidy"), poll_interval_s=0.1),
        pacs=DicomPeer(ae_title="PACS", host="127.0.0.1", port=pacs.port),
        rules=[Rule(algorithm="integrity-check")],
        retention=RetentionSettings(keep_delivered_days=1.5 / DAY, interval_s=0.2),
    )
    edge = EdgeService(settings)
    edge.start()
    try:
        files = write_study(cr_study(3, rows=128, columns=128), tmp_path / "modality")
        datasets = [pydicom.dcmread(f) for f in files]
        to_edge = DicomPeer(
            ae_title=settings.listener.ae_title,
            host="127.0.0.1",
            port=edge.dicom_port,
            calling_ae_title="PACS",
        )
        assert all(r.ok for r in store_to_pacs(to_edge, datasets))
        received = sorted((settings.data_dir / "received").rglob("*.dcm"))
        assert len(received) == 3

        wait_for(lambda: [t.state for t in edge.state.tasks()] == ["delivered"])
        (task,) = edge.state.tasks()
        assert all(p.exists() for p in received)  # kept for the retention period ...
        wait_for(lambda: edge.state.events("purged"))
        assert not any(p.exists() for p in received)  # ... then gone
    finally:
        edge.stop()

    (event,) = edge.state.events("purged")
    assert event["task_id"] == task.id
    assert event["detail"].startswith("3 received instances (")
    assert "task delivered" in event["detail"]
    study_uid = str(datasets[0].StudyInstanceUID)
    assert [i.sop_instance_uid for i in edge.state.instances(study_uid)] == []
    # The rows stay for the audit: which task held which instance.
    assert len(edge.state.task_instances(task.id)) == 3
    assert not any(i.path.exists() for i, _p, _d in edge.state.task_instances(task.id))
    audit = EdgeState(settings.data_dir / "edge.db").audit
    assert "purged" in {e.action for e in audit.events()}
    assert sorted(p.name for p in pacs.instances())  # the result is in PACS


STUDY_A, STUDY_B, STUDY_C = "1.2.3.1", "1.2.3.2", "1.2.3.3"


def receive(state: EdgeState, folder: Path, study: str, sop: str, modality: str = "CR") -> Path:
    path = folder / study / "1" / f"{sop}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 100)
    row = InstanceRow(sop, study, f"{study}.9", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.1.2.1",
                      path, 100)  # fmt: skip
    assert state.add_instance(row, "PACS", {"Modality": modality})
    return path


@pytest.fixture
def edge_data(tmp_path: Path) -> tuple[EdgeState, Path, Path]:
    state = EdgeState(tmp_path / "edge" / "edge.db")
    return state, tmp_path / "edge" / "received", tmp_path / "edge" / "outbox"


def test_failed_work_goes_after_the_maximum_age_and_open_tasks_keep_their_instances(
    edge_data: tuple[EdgeState, Path, Path],
) -> None:
    state, received, outbox = edge_data
    a = [receive(state, received, STUDY_A, f"1.{i}") for i in range(2)]
    b = receive(state, received, STUDY_B, "2.1")
    for study in (STUDY_A, STUDY_B):
        state.mark_dispatched(study, time.time())
    failed = state.create_task(STUDY_A, "fracture", "r", ["1.0", "1.1"], time.time())
    state.update_task(failed, state="failed", reason="refused by the hub")
    (outbox / failed).mkdir(parents=True)
    (outbox / failed / "pseudo.dcm").write_bytes(b"y")
    still_open = state.create_task(STUDY_A, "bone-age", "r", ["1.1"], time.time())
    delivered = state.create_task(STUDY_B, "fracture", "r", ["2.1"], time.time())
    state.update_task(delivered, state="delivered", delivered_at=time.time())
    retention = RetentionSettings(keep_delivered_days=7, max_failed_age_days=30)

    def purge_at(days: float) -> None:
        Purger(state, retention, outbox, received, clock=lambda: time.time() + days * DAY).tick()

    purge_at(1)
    assert all(p.exists() for p in [*a, b]) and (outbox / failed).exists()

    purge_at(8)  # the delivered study is past its retention
    assert not b.exists() and all(p.exists() for p in a)

    purge_at(31)  # the failed task is past the maximum age; the open task keeps 1.1
    assert not a[0].exists() and a[1].exists()
    assert not (outbox / failed).exists()
    assert {e["task_id"] for e in state.events("purged")} == {delivered, failed}
    assert state.task(still_open).state == "pending"

    state.update_task(still_open, state="CANCELED", reason="canceled at the hub")
    purge_at(62)
    assert not a[1].exists()
    assert not received.exists() or not any(received.rglob("*.dcm"))


def test_unrouted_studies_go_and_a_purged_instance_sent_again_is_received_again(
    edge_data: tuple[EdgeState, Path, Path],
) -> None:
    state, received, outbox = edge_data
    path = receive(state, received, STUDY_C, "3.1", modality="MR")
    retention = RetentionSettings(keep_unrouted_days=1)
    purger = Purger(state, retention, outbox, received, clock=lambda: time.time() + 2 * DAY)
    assert purger.tick().instances == 0  # still receiving: never purged
    state.mark_dispatched(STUDY_C, time.time())
    assert purger.tick().instances == 1
    assert not path.exists()
    (event,) = state.events("purged")
    assert "1 received instances of 1 studies no rule routed" in event["detail"]

    assert not state.has_instance("3.1")  # the listener takes it again ...
    receive(state, received, STUDY_C, "3.1", modality="MR")
    assert state.has_instance("3.1")  # ... and keeps it (has_instance: held, not purged)
    assert state.undispatched_studies() == [STUDY_C]


def test_aifi_edge_purge_runs_on_demand(
    tmp_path: Path, edge_data: tuple[EdgeState, Path, Path]
) -> None:
    state, received, _outbox = edge_data
    path = receive(state, received, STUDY_A, "1.1")
    state.mark_dispatched(STUDY_A, time.time())
    task = state.create_task(STUDY_A, "fracture", "r", ["1.1"], time.time())
    state.update_task(task, state="delivered", delivered_at=time.time() - 3 * DAY)
    config = tmp_path / "edge.toml"
    config.write_text('data_dir = "edge"\n[retention]\nkeep_delivered_days = 2\n', "utf-8")

    done = CliRunner().invoke(app, ["edge", "purge", "--config", str(config)])

    assert done.exit_code == 0, done.output
    assert "purged 1 received instances (100 bytes)" in done.output
    assert not path.exists()
    assert [e["task_id"] for e in state.events("purged")] == [task]
