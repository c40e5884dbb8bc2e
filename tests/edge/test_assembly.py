"""Stable-study detection and routing into tasks, on the edge's real state database."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom

from aifi.demo.samples import cr_study, write_study
from aifi.edge.assembly import Assembler
from aifi.edge.config import DicomPeer, EdgeSettings, HubPeer, ListenerSettings
from aifi.edge.pacs import store_to_pacs
from aifi.edge.rules import Rule
from aifi.edge.service import EdgeService
from aifi.edge.state import EdgeState, InstanceRow
from aifi.netutil import free_port

STUDY = "1.2.3.100"


def add(state: EdgeState, sop: str, series: str, modality: str = "CR") -> bool:
    row = InstanceRow(
        sop,
        STUDY,
        series,
        "1.2.840.10008.5.1.4.1.1.1",
        "1.2.840.10008.1.2.1",
        Path(f"/nonexistent/{sop}.dcm"),
        10,
    )
    return state.add_instance(row, "PACS", {"Modality": modality, "BodyPartExamined": "HAND"})


def task_sops(state: EdgeState, task_id: str) -> set[str]:
    return {i.sop_instance_uid for i, _p, _d in state.task_instances(task_id)}


def test_study_waits_for_quiet_period(tmp_path: Path) -> None:
    state = EdgeState(tmp_path / "edge.db")
    add(state, "1.1", "1.9.1")
    slow = Assembler(state, [Rule(algorithm="integrity-check")], quiet_period_s=60)
    assert slow.tick() == []
    fast = Assembler(state, [Rule(algorithm="integrity-check")], quiet_period_s=0)
    (task_id,) = fast.tick()
    assert task_sops(state, task_id) == {"1.1"}
    assert fast.tick() == []  # dispatched once


def test_rules_pick_series_and_skip_non_images(tmp_path: Path) -> None:
    state = EdgeState(tmp_path / "edge.db")
    add(state, "1.1", "1.9.1", "CR")
    add(state, "1.2", "1.9.1", "CR")
    add(state, "2.1", "1.9.2", "SR")  # a report in the same study
    add(state, "3.1", "1.9.3", "CT")
    rules = [
        Rule(name="radiographs", algorithm="fracture", match={"Modality": ["CR", "DX"]}),
        Rule(name="everything", algorithm="integrity-check"),
    ]
    task_ids = Assembler(state, rules, quiet_period_s=0).tick()
    by_algorithm = {state.task(t).algorithm_id: task_sops(state, t) for t in task_ids}
    assert by_algorithm == {"fracture": {"1.1", "1.2"}, "integrity-check": {"1.1", "1.2", "3.1"}}


def test_late_instances_make_a_new_task_with_the_whole_series(tmp_path: Path) -> None:
    state = EdgeState(tmp_path / "edge.db")
    add(state, "1.1", "1.9.1")
    add(state, "2.1", "1.9.2")
    assembler = Assembler(state, [Rule(algorithm="integrity-check")], quiet_period_s=0)
    (first,) = assembler.tick()
    time.sleep(0.01)
    assert not add(state, "1.1", "1.9.1")  # a re-send is ignored ...
    assert assembler.tick() == []  # ... and makes no task
    add(state, "2.2", "1.9.2")  # a late instance of series 2
    (second,) = assembler.tick()
    assert task_sops(state, first) == {"1.1", "2.1"}
    assert task_sops(state, second) == {"2.1", "2.2"}  # the whole late series


def test_late_instances_can_be_ignored(tmp_path: Path) -> None:
    state = EdgeState(tmp_path / "edge.db")
    add(state, "1.1", "1.9.1")
    assembler = Assembler(state, [Rule(algorithm="integrity-check")], 0, "ignore")
    assert len(assembler.tick()) == 1
    add(state, "1.2", "1.9.1")
    assert assembler.tick() == []
    assert state.instance("1.2") is not None  # kept, not sent


def test_unrouted_study_is_recorded(tmp_path: Path) -> None:
    state = EdgeState(tmp_path / "edge.db")
    add(state, "1.1", "1.9.1", "MR")
    assert Assembler(state, [Rule(algorithm="x", match={"Modality": ["CT"]})], 0).tick() == []
    assert state.events("study-not-routed")


def test_a_study_cut_off_by_a_crash_becomes_one_task_when_the_rest_arrives(
    tmp_path: Path,
) -> None:
    """The time the edge was down is not quiet time (issue 11, item 7).

    Part of a study arrives, the edge stops before the quiet period ends, stays
    down longer than the quiet period, and the rest arrives soon after it is
    back: one task with every instance, not one on the part and one whole.
    """
    quiet = 1.0
    settings = EdgeSettings(
        data_dir=tmp_path / "edge",
        quiet_period_s=quiet,
        listener=ListenerSettings(port=free_port(), allowed_calling_aets=["PACS"]),
        hub=HubPeer(url=f"http://127.0.0.1:{free_port()}"),  # down: tasks wait in the outbox
        rules=[Rule(algorithm="integrity-check")],
    )
    files = write_study(cr_study(4, rows=64, columns=64), tmp_path / "modality")
    datasets = [pydicom.dcmread(f) for f in files]
    to_edge = DicomPeer(
        ae_title=settings.listener.ae_title,
        host="127.0.0.1",
        port=settings.listener.port,
        calling_ae_title="PACS",
    )

    first = EdgeService(settings)
    first.start()
    assert all(r.ok for r in store_to_pacs(to_edge, datasets[:2]))
    first.stop()  # before the quiet period ends
    assert first.state.tasks() == []
    time.sleep(quiet * 1.5)  # down for longer than the quiet period

    second = EdgeService(settings)
    second.start()
    try:
        time.sleep(quiet / 4)
        assert all(r.ok for r in store_to_pacs(to_edge, datasets[2:]))
        time.sleep(quiet * 2)
    finally:
        second.stop()

    (task,) = second.state.tasks()
    assert task_sops(second.state, task.id) == {str(ds.SOPInstanceUID) for ds in datasets}


def test_a_study_sent_again_after_a_failure_becomes_a_new_task(tmp_path: Path) -> None:
    state = EdgeState(tmp_path / "edge.db")
    assembler = Assembler(state, [Rule(algorithm="integrity-check")], quiet_period_s=0)
    add(state, "1.1", "1.9.1")
    add(state, "1.2", "1.9.1")
    (first,) = assembler.tick()
    assert not add(state, "1.1", "1.9.1")  # a duplicate while the task is open: ignored
    assert assembler.tick() == []
    state.update_task(first, state="failed", reason="refused by the hub")
    assert add(state, "1.1", "1.9.1") and add(state, "1.2", "1.9.1")  # sent again
    (second,) = assembler.tick()
    assert second != first
    assert task_sops(state, second) == {"1.1", "1.2"}
    state.update_task(second, state="delivered")
    assert not add(state, "1.1", "1.9.1")  # done once: a copy is a duplicate again
    assert assembler.tick() == []
