"""The edge's steps land in a hash-chained audit trail that `aifi audit verify` checks."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from aifi.edge.assembly import Assembler
from aifi.edge.rules import Rule
from aifi.edge.state import EdgeState, InstanceRow


def test_edge_events_are_chained_and_tampering_is_found(tmp_path: Path) -> None:
    state = EdgeState(tmp_path / "edge.db", hospital="St. Example")
    row = InstanceRow(
        "1.1",
        "1.2.3",
        "1.9.1",
        "1.2.840.10008.5.1.4.1.1.1",
        "1.2.840.10008.1.2.1",
        tmp_path / "x.dcm",
        1,
    )
    state.add_instance(row, "PACS", {"Modality": "CR"})
    (task_id,) = Assembler(state, [Rule(algorithm="integrity-check")], 0).tick()
    state.record_event("task-submitted", "hub task h1", task_id=task_id)
    events = list(state.audit.events())
    assert [e.action for e in events] == ["study-stable", "task-submitted"]
    assert all(e.correlation_id == task_id and e.algorithm == "integrity-check" for e in events)
    assert all(e.hospital == "St. Example" and e.actor == "edge" for e in events)
    state.close()

    audit_db = tmp_path / "audit.db"
    verify = [sys.executable, "-m", "aifi", "audit", "verify", "--edge-db", str(audit_db)]
    assert subprocess.run(verify, capture_output=True, text=True).returncode == 0
    with sqlite3.connect(audit_db) as db:
        db.execute("UPDATE audit_events SET action='task-canceled' WHERE seq=2")
    tampered = subprocess.run(verify, capture_output=True, text=True)
    assert tampered.returncode == 1
    assert "2" in tampered.stdout + tampered.stderr
