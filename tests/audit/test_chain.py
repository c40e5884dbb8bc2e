"""The hash chain finds every kind of tampering, says where, and stays linear under threads."""

from __future__ import annotations

import io
import itertools
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aifi.audit import GENESIS, AuditEvent, SqliteAuditLog, chain_hash, verify_jsonl
from aifi.cli import app


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SqliteAuditLog]:
    log = SqliteAuditLog(tmp_path / "edge.sqlite")
    for n in range(1, 7):
        log.append(
            "pseudonymized" if n % 2 else "uploaded",
            actor="edge",
            hospital="h1",
            task=f"task-{n}",
            algorithm="integrity-check",
            algorithm_version="1.0.0",
            agreement="connection-test",
            correlation_id="corr-1",
            detail={"instances": n, "bytes": 1000 * n},
        )
    yield log
    log.close()


def _sql(log: SqliteAuditLog, statement: str) -> None:
    with sqlite3.connect(log.path) as db:
        db.execute(statement)


def test_an_untouched_chain_is_intact(log: SqliteAuditLog) -> None:
    events = list(log.events())
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[0].prev_hash == "0" * 64
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    assert log.verify() == []


def test_an_edited_event_is_found(log: SqliteAuditLog) -> None:
    _sql(log, 'UPDATE audit_events SET detail = \'{"bytes":1,"instances":3}\' WHERE seq = 3')
    assert log.verify() == ["event 3 was changed after it was recorded"]


def test_a_deleted_event_is_found(log: SqliteAuditLog) -> None:
    _sql(log, "DELETE FROM audit_events WHERE seq = 4")
    problems = log.verify()
    assert "events 4..4 are missing before event 5 (deleted)" in problems
    assert any(p.startswith("event 5 does not follow") for p in problems)


def test_reordered_events_are_found(log: SqliteAuditLog) -> None:
    with sqlite3.connect(log.path) as db:
        two = db.execute("SELECT * FROM audit_events WHERE seq = 2").fetchone()
        three = db.execute("SELECT * FROM audit_events WHERE seq = 3").fetchone()
        columns = [c[1] for c in db.execute("PRAGMA table_info(audit_events)")][1:]
        assignments = ", ".join(f"{c} = ?" for c in columns)
        db.execute(f"UPDATE audit_events SET {assignments} WHERE seq = 2", three[1:])
        db.execute(f"UPDATE audit_events SET {assignments} WHERE seq = 3", two[1:])
    problems = log.verify()
    assert any(p.startswith("event 2 does not follow") for p in problems)
    assert problems  # and the seq/hash mismatches after it


def test_a_cut_off_tail_is_found(log: SqliteAuditLog) -> None:
    _sql(log, "DELETE FROM audit_events WHERE seq >= 5")
    assert log.verify() == ["events 5..6 are missing at the end (truncated)"]


def test_appends_from_many_threads_and_two_handles_stay_one_linear_chain(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shared.sqlite"
    first, second = SqliteAuditLog(path), SqliteAuditLog(path)

    def work(log: SqliteAuditLog, n: int) -> None:
        for i in range(25):
            log.append("run.started", actor=f"worker-{n}", detail={"i": i})

    threads = [
        threading.Thread(target=work, args=(handle, n))
        for n, handle in enumerate([first, second, first, second])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [e.seq for e in first.events()] == list(range(1, 101))
    assert first.verify() == []
    first.close()
    second.close()


def test_an_export_verifies_on_its_own_and_a_reordered_export_does_not(
    log: SqliteAuditLog,
) -> None:
    out = io.StringIO()
    assert log.export_jsonl(out) == 6
    lines = out.getvalue().splitlines()
    assert json.loads(lines[0])["action"] == "pseudonymized"
    assert verify_jsonl(io.StringIO(out.getvalue())) == []

    lines[1], lines[2] = lines[2], lines[1]
    problems = verify_jsonl(io.StringIO("\n".join(lines) + "\n"))
    assert any("event 3" in p for p in problems)


def test_aifi_audit_verify_names_the_changed_event(log: SqliteAuditLog, tmp_path: Path) -> None:
    runner = CliRunner()
    intact = runner.invoke(app, ["audit", "verify", "--edge-db", str(log.path)])
    assert intact.exit_code == 0, intact.output
    assert "intact (6 events)" in intact.stdout

    exported = tmp_path / "audit.jsonl"
    done = runner.invoke(app, ["audit", "export", "--edge-db", str(log.path), "-o", str(exported)])
    assert done.exit_code == 0, done.output
    assert len(exported.read_text(encoding="utf-8").splitlines()) == 6
    assert runner.invoke(app, ["audit", "verify", "--jsonl", str(exported)]).exit_code == 0

    _sql(log, "UPDATE audit_events SET actor = 'someone else' WHERE seq = 2")
    broken = runner.invoke(app, ["audit", "verify", "--edge-db", str(log.path)])
    assert broken.exit_code == 1
    assert "event 2 was changed after it was recorded" in broken.stdout


def test_an_edge_file_from_before_named_chains_is_upgraded_and_its_chain_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.db"
    with sqlite3.connect(path) as db:  # the layout every edge wrote before schema 0008
        db.execute(
            "CREATE TABLE audit_events (seq INTEGER PRIMARY KEY, at VARCHAR(40) NOT NULL,"
            " actor VARCHAR(200) NOT NULL, action VARCHAR(64) NOT NULL, hospital VARCHAR(64),"
            " task VARCHAR(64), algorithm VARCHAR(64), algorithm_version VARCHAR(64),"
            " agreement VARCHAR(200), correlation_id VARCHAR(64), detail TEXT NOT NULL,"
            " prev_hash VARCHAR(64) NOT NULL, hash VARCHAR(64) NOT NULL)"
        )
        db.execute("CREATE INDEX ix_audit_events_hospital_at ON audit_events (hospital, at)")
        db.execute("CREATE INDEX ix_audit_events_action_at ON audit_events (action, at)")
        db.execute("CREATE TABLE audit_head (id INTEGER PRIMARY KEY, seq INTEGER, hash TEXT)")
        prev = GENESIS
        for seq in (1, 2):
            at = f"2026-11-0{seq}T08:00:00+00:00"
            event = AuditEvent(seq, at, "edge", "study-stable", "St. Example", prev_hash=prev)
            digest = chain_hash(prev, event.body())
            db.execute(
                "INSERT INTO audit_events (seq, at, actor, action, hospital, detail, prev_hash,"
                " hash) VALUES (?, ?, 'edge', 'study-stable', 'St. Example', '{}', ?, ?)",
                (seq, event.at, prev, digest),
            )
            prev = digest
        db.execute("INSERT INTO audit_head VALUES (1, 2, ?)", (prev,))

    log = SqliteAuditLog(path)
    assert log.verify() == []
    assert log.append("task-submitted", actor="edge").seq == 3
    assert [(e.chain, e.seq) for e in log.events()] == [("main", 1), ("main", 2), ("main", 3)]
    assert log.verify() == []
    log.close()
    again = SqliteAuditLog(path)  # opening an upgraded file changes nothing
    assert again.count() == 3 and again.verify() == []
    again.close()
