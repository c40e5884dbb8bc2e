"""Priority at the edge: urgent and stat work leaves the outbox before routine work.

A rule ``priority = "urgent"`` (or a workitem's HIGH) gives the task rank 0;
the outbox takes due tasks by priority, then age.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from aifi.edge.assembly import Assembler
from aifi.edge.rules import Rule
from aifi.edge.state import EdgeState, InstanceRow


def held(state: EdgeState, study: str, modality: str) -> None:
    uid = f"{study}.1"
    row = InstanceRow(uid, study, f"{study}.9", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1",
                      Path("/nonexistent"), 1)  # fmt: skip
    state.add_instance(row, "MODALITY", {"Modality": modality, "BodyPartExamined": "CHEST"})


def test_an_urgent_ct_after_20_radiographs_leaves_the_outbox_first(tmp_path: Path) -> None:
    state = EdgeState(tmp_path / "edge.db")
    rules = [
        Rule(name="radiographs", algorithm="fracture", match={"Modality": ["CR", "DX"]}),
        Rule(name="PE", algorithm="pe", match={"Modality": ["CT"]}, priority="urgent"),
    ]
    assembler = Assembler(state, rules, quiet_period_s=0.0, late_instances="ignore")
    for n in range(20):
        held(state, f"1.2.826.0.1.1.{n}", "CR")
    assembler.tick()
    held(state, "1.2.826.0.1.2.1", "CT")
    assembler.tick()

    due = state.due_tasks("pending")

    assert len(due) == 21
    assert (due[0].algorithm_id, due[0].priority) == ("pe", 0)
    assert {t.priority for t in due[1:]} == {1}
    assert [t.created_at for t in due[1:]] == sorted(t.created_at for t in due[1:])
    assert state.open_tasks_by_priority() == {"HIGH": 1, "MEDIUM": 20, "LOW": 0}  # /metrics
    state.close()


def test_a_rule_priority_is_one_of_the_known_words() -> None:
    with pytest.raises(ValidationError):
        Rule(algorithm="pe", priority="asap")  # type: ignore[arg-type]
