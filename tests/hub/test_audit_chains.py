"""The hub's audit trail is one chain per hospital plus the hub's own, each verifiable alone.

Runs on SQLite and on PostgreSQL (the ``database_url`` fixture). What an
auditor checks: every chain intact, one hospital's export verifying on its
own, a deleted chain found, a trail written before schema 0008 still
verifying after it, and chains that stay linear with many writers.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from aifi.audit import GENESIS, AuditEvent, Head, chain_hash, verify_jsonl
from aifi.cli import app
from aifi.hub.auditing import audit_log
from aifi.hub.config import HubSettings
from aifi.hub.db import make_engine, make_sessions, migrate
from aifi.hub.hospitals import add_hospital
from peers.postgres import PostgresCluster

from .conftest import Hub, new_uid, pseudonymized


def _hospital(engine: Engine, name: str) -> str:
    with make_sessions(engine)() as session:
        return add_hospital(session, name)[0].id


def test_each_hospital_has_a_chain_of_its_own_and_its_export_verifies_alone(
    hub: Hub, token_a: str, token_b: str, auditor_token: str, dicom_dir: Path
) -> None:
    for token in (token_a, token_b):
        study = new_uid()
        files = [pseudonymized("CT_small.dcm", dicom_dir, study=study) for _ in range(2)]
        assert hub.stow(token, files).status_code == 200
    as_auditor = hub.auth(auditor_token)
    events = hub.client.get("/audit", headers=as_auditor).json()
    hospitals = sorted({e["hospital"] for e in events if e["hospital"]})
    assert len(hospitals) == 2
    assert all(e["chain"] == f"hospital:{e['hospital']}" for e in events if e["hospital"])
    assert all(e["chain"] == "hub" for e in events if not e["hospital"])

    verified = hub.client.get("/audit/verify", headers=as_auditor).json()
    assert verified["intact"] is True, verified["problems"]
    assert set(verified["chains"]) == {"hub", *(f"hospital:{h}" for h in hospitals)}
    assert verified["events"] == len(events)
    opened = [e["detail"]["chain"] for e in events if e["action"] == "audit.chain_opened"]
    assert sorted(opened) == [f"hospital:{h}" for h in hospitals]

    chain_a = f"hospital:{hospitals[0]}"
    exported = hub.client.get("/audit/export", params={"chain": chain_a}, headers=as_auditor)
    lines = exported.text.splitlines()
    assert len(lines) == verified["chains"][chain_a]["seq"]
    assert verify_jsonl(io.StringIO(exported.text)) == []
    assert hospitals[1] not in exported.text
    whole = hub.client.get("/audit/export", headers=as_auditor).text
    assert len(whole.splitlines()) == verified["events"]
    assert verify_jsonl(io.StringIO(whole)) == []

    page = hub.client.get("/audit", params={"chain": chain_a, "after_seq": 1}, headers=as_auditor)
    assert [e["seq"] for e in page.json()] == list(range(2, len(lines) + 1))
    unnamed = hub.client.get("/audit", params={"after_seq": 1}, headers=as_auditor)
    assert unnamed.status_code == 422
    assert "chain=" in unnamed.json()["detail"]


def test_a_hospital_chain_deleted_with_its_head_is_found_through_the_hub_chain(
    engine: Engine,
) -> None:
    first, second = _hospital(engine, "Hospital A"), _hospital(engine, "Hospital B")
    log = audit_log(engine)
    assert log.verify() == []
    with engine.begin() as connection:
        for table in ("audit_events", "audit_head"):
            connection.execute(
                text(f"DELETE FROM {table} WHERE chain = :chain"), {"chain": f"hospital:{first}"}
            )
    (problem,) = log.verify()
    assert problem.startswith(f"chain hospital:{first}, opened at event ")
    assert problem.endswith("of chain hub, is missing (deleted with its head)")
    assert f"hospital:{second}" in log.heads()


def test_an_edited_event_is_named_with_its_chain_by_aifi_audit_verify(
    engine: Engine, settings: HubSettings, tmp_path: Path
) -> None:
    hospital = _hospital(engine, "Hospital A")
    config = tmp_path / "hub.toml"
    config.write_text(f'[hub]\ndata_dir = "{settings.data_dir}"\n', encoding="utf-8")
    verify = ["audit", "verify", "--hub-config", str(config)]
    intact = CliRunner().invoke(app, verify)
    assert intact.exit_code == 0, intact.output
    count = audit_log(engine).count()
    assert f"intact ({count} events in 2 chains)" in intact.stdout
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE audit_events SET actor = 'x' WHERE chain = :chain AND seq = 2"),
            {"chain": f"hospital:{hospital}"},
        )
    broken = CliRunner().invoke(app, verify)
    assert broken.exit_code == 1
    assert f"chain hospital:{hospital}: event 2 was changed after it was recorded" in broken.stdout


def _old_chain(engine: Engine, count: int) -> list[AuditEvent]:
    """Events as the single-chain hub wrote them before 0008 (hashes without a chain name)."""
    events, prev = [], GENESIS
    for seq in range(1, count + 1):
        draft = AuditEvent(
            seq=seq, at=f"2026-11-0{seq}T10:00:00.000000+00:00", actor="hospital:h-old",
            action="task.created", hospital="h-old", task=f"t{seq}", detail={"instances": seq},
            prev_hash=prev,
        )  # fmt: skip
        event = AuditEvent(**{**draft.__dict__, "hash": chain_hash(prev, draft.body())})
        events.append(event)
        prev = event.hash
    with engine.begin() as connection:
        for e in events:
            connection.execute(
                text(
                    "INSERT INTO audit_events (seq, at, actor, action, hospital, task, algorithm,"
                    " algorithm_version, agreement, correlation_id, detail, prev_hash, hash)"
                    " VALUES (:seq, :at, :actor, :action, :hospital, :task, NULL, NULL, NULL,"
                    " NULL, :detail, :prev_hash, :hash)"
                ),
                {**e.__dict__, "detail": json.dumps(dict(e.detail))},
            )
        connection.execute(
            text("INSERT INTO audit_head (id, seq, hash) VALUES (1, :seq, :hash)"),
            {"seq": events[-1].seq, "hash": events[-1].hash},
        )
    return events


@pytest.fixture
def empty_url(
    database_url: str | None, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A database with no schema yet: a new SQLite file, or a new PostgreSQL database."""
    if database_url is None:
        yield f"sqlite:///{tmp_path / 'empty.sqlite'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    name = cluster.create_database()
    try:
        yield cluster.url(name)
    finally:
        cluster.drop_database(name)


def test_a_trail_written_before_0008_still_verifies_after_it_in_chain_main(
    empty_url: str,
) -> None:
    engine = make_engine(empty_url)
    try:
        migrate(engine, "0007")
        old = _old_chain(engine, 3)
        migrate(engine)
        log = audit_log(engine)
        assert log.verify() == []
        assert log.heads()["main"].hash == old[-1].hash
        assert [e.hash for e in log.events(chain="main")] == [e.hash for e in old]

        hospital = _hospital(engine, "Hospital A")
        assert log.verify() == []
        assert {"main", "hub", f"hospital:{hospital}"} == set(log.heads())
        assert all(e.chain == "main" for e in log.events(hospital="h-old"))

        with engine.begin() as connection:
            connection.execute(
                text("UPDATE audit_events SET task = 'other' WHERE chain = 'main' AND seq = 2")
            )
        assert log.verify() == ["event 2 was changed after it was recorded"]
    finally:
        engine.dispose()


def test_many_threads_of_two_processes_keep_every_hospital_chain_linear(engine: Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    other = make_engine(url)  # a second process's engine: its own pool and connections
    hospitals = [f"h{n}" for n in range(4)]

    def work(log_engine: Engine, n: int) -> None:
        log = audit_log(log_engine)
        for i in range(15):
            log.append("run.started", actor=f"worker-{n}", hospital=hospitals[(n + i) % 4])

    threads = [
        threading.Thread(target=work, args=(e, n))
        for n, e in enumerate([engine, other, engine, other, engine, other])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    other.dispose()

    log = audit_log(engine)
    assert log.verify() == []
    per_chain = Counter(e.chain for e in log.events() if e.action == "run.started")
    assert set(per_chain) == {f"hospital:{h}" for h in hospitals}
    assert sum(per_chain.values()) == 6 * 15
    for h in hospitals:
        seqs = [e.seq for e in log.events(chain=f"hospital:{h}")]
        assert seqs == list(range(1, len(seqs) + 1))


def test_verifying_while_others_append_finds_nothing_but_a_head_set_back_is_found(
    engine: Engine,
) -> None:
    log = audit_log(engine)
    stop = threading.Event()

    def append() -> None:
        n = 0
        while not stop.is_set():
            log.append("run.started", actor="worker", hospital=f"h{n % 3}")
            n += 1

    writers = [threading.Thread(target=append) for _ in range(2)]
    for writer in writers:
        writer.start()
    try:
        found = [log.verify() for _ in range(5)]
        deadline = time.monotonic() + 10  # h1's chain long enough to set its head back by 2
        while log.heads().get("hospital:h1", Head(0, GENESIS)).seq < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        stop.set()
        for writer in writers:
            writer.join()
    assert found == [[]] * 5
    assert log.count() > 0

    with engine.begin() as connection:
        connection.execute(text("UPDATE audit_head SET seq = seq - 2 WHERE chain = 'hospital:h1'"))
    problems = log.verify()
    assert any(
        p.startswith("chain hospital:h1: events ") and "are recorded after the chain's head" in p
        for p in problems
    ), problems
    assert all(p.startswith("chain hospital:h1: ") for p in problems)
