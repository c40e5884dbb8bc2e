"""An audit event is committed with the change it records, and sealed into its chain once.

Runs on SQLite and on PostgreSQL (a connection dropped mid-request on
PostgreSQL alone). What an auditor checks: a hub process killed (SIGKILL)
right after committing a task and before sealing its event loses nothing —
the janitor (``aifi hub janitor``) seals it, every committed task has
exactly one ``task.created`` in its hospital's chain and the trail
verifies; several sealers at once append each pending event once, the
janitor in pending-id order; a rolled-back change leaves no event.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy import event as sqlevent
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from aifi.algorithms.base import Algorithm, Manifest
from aifi.audit.store import ChainLocks, SqlAuditLog
from aifi.cli import app as cli
from aifi.hub.app import create_app
from aifi.hub.auditing import audit_log, chain_of, record, seal_pending
from aifi.hub.config import HubSettings
from aifi.hub.db import is_transient, make_engine, make_sessions
from aifi.hub.hospitals import add_hospital, principal_of
from aifi.hub.leases import claim, reap
from aifi.hub.models import AUDIT_TABLES, Task, Token, utcnow
from aifi.hub.principals import issue_token, revoke_token
from aifi.netutil import free_port
from aifi.protocol.schemas import TaskState

from .conftest import Hub, serving
from .test_leases import ELSEWHERE, _scheduled_tasks
from .test_retrying import DropConnection

#: A dropped connection (``pg_terminate_backend``) is PostgreSQL's: no SQLite variant.
ON_POSTGRESQL_ONLY = pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgresql)], indirect=True
)


@pytest.fixture
def live(
    settings: HubSettings,
    engine: Engine,
    resolver: Callable[[str], Algorithm],
    manifests: Callable[[], list[Manifest]],
) -> Iterator[tuple[Hub, Engine]]:
    """A served hub and the engine it writes with (whose connections a test drops)."""
    app = create_app(settings, algorithms=resolver, manifests=manifests, role="api")
    with serving(app, settings) as client:
        yield Hub(client, settings), app.state.hub.engine


def _wait_for_api(api: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert api.poll() is None, log.read_text()
        try:
            httpx.get(f"{url}/openapi.json")
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the API did not start in 60 s"
            time.sleep(0.2)


@pytest.mark.slow
def test_a_hub_api_killed_between_commit_and_sealing_loses_no_task_created_event(
    settings: HubSettings,
    resolver: Callable[[str], Algorithm],
    manifests: Callable[[], list[Manifest]],
    engine: Engine,
    token_a: str,
    auditor_token: str,
    study: tuple[str, list[Path]],
    tmp_path: Path,
) -> None:
    study_uid, files = study
    sops = [f.stem for f in files]
    port = free_port()
    config = tmp_path / "hub.toml"
    config.write_text(
        f'[hub]\ndata_dir = "{settings.data_dir}"\nport = {port}\njanitor_interval_s = 0.2\n',
        encoding="utf-8",
    )
    aifi = [sys.executable, "-m", "aifi", "hub"]
    log = tmp_path / "api.log"
    local = create_app(settings, algorithms=resolver, manifests=manifests, role="api")
    with serving(local, settings) as client:
        hub = Hub(client, settings)
        assert hub.stow(token_a, files).status_code == 200
        # a real API process that kills itself after committing its third task
        crash = {**os.environ, "AIFI_TEST_KILL_AFTER_COMMIT": "task.created:3"}
        with log.open("wb") as out:
            api = subprocess.Popen(
                [*aifi, "api", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT,
                env=crash,
            )  # fmt: skip
        try:
            _wait_for_api(api, f"http://127.0.0.1:{port}", log)
            client_ids = [uuid.uuid4().hex for _ in range(3)]
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                remote = Hub(http, settings)
                for client_id in client_ids[:2]:
                    answer = remote.create_task(token_a, study_uid, sops, client_task_id=client_id)
                    assert answer.status_code == 201, answer.text
                with pytest.raises(httpx.TransportError):
                    remote.create_task(token_a, study_uid, sops, client_task_id=client_ids[2])
            assert api.wait(timeout=30) == -signal.SIGKILL
        finally:
            if api.poll() is None:
                api.kill()
                api.wait(timeout=30)

        # the third task was committed, its event with it, but not sealed
        tasks = client.get("/tasks", headers=hub.auth(token_a)).json()
        assert len(tasks) == 3
        as_auditor = hub.auth(auditor_token)
        verified = client.get("/audit/verify", headers=as_auditor).json()
        assert verified["intact"] is True, verified["problems"]
        assert verified["pending"] == 1
        # the edge sends the lost request again: found, and no second event
        again = hub.create_task(token_a, study_uid, sops, client_task_id=client_ids[2])
        assert again.status_code == 200
        assert again.json()["id"] == tasks[2]["id"]

        janitor = subprocess.Popen(
            [*aifi, "janitor", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while audit_log(engine).pending():
                assert janitor.poll() is None, "the janitor stopped"
                assert time.monotonic() < deadline, "the janitor did not seal in 60 s"
                time.sleep(0.1)
        finally:
            janitor.send_signal(signal.SIGTERM)
            janitor.wait(timeout=60)

        events = client.get("/audit", headers=as_auditor).json()
        created = Counter(e["task"] for e in events if e["action"] == "task.created")
        assert created == {t["id"]: 1 for t in tasks}
        verified = client.get("/audit/verify", headers=as_auditor).json()
        assert verified["intact"] is True, verified["problems"]
        assert verified["pending"] == 0
    verify = CliRunner().invoke(cli, ["audit", "verify", "--hub-config", str(config)])
    assert verify.exit_code == 0, verify.output


def test_concurrent_sealers_append_each_pending_event_once_and_the_janitor_in_order(
    engine: Engine,
) -> None:
    url = engine.url.render_as_string(hide_password=False)
    hospitals = ["h0", "h1", "h2"]
    log = audit_log(engine)
    with engine.begin() as connection:  # committed by a process that died before sealing
        for n in range(150):
            log.record(connection, "task.created", actor="test", hospital=hospitals[n % 3],
                       detail={"n": n})  # fmt: skip
    assert log.pending() == 150

    sealed: list[int] = []

    def seal() -> None:  # a process of its own: its engine, its locks
        other = make_engine(url)
        try:
            store = SqlAuditLog(other, AUDIT_TABLES, chain_of=chain_of, root="hub",
                                locks=ChainLocks(), transient=is_transient)  # fmt: skip
            sealed.append(store.seal())
        finally:
            other.dispose()

    threads = [threading.Thread(target=seal) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(sealed) == 150
    assert log.pending() == 0
    assert log.verify() == []
    for h, hospital in enumerate(hospitals):  # each once (sealers at once may interleave)
        assert sorted(_numbers(log, hospital)) == list(range(h, 150, 3))

    with engine.begin() as connection:  # left pending again; the one janitor seals in order
        for n in range(150, 180):
            log.record(connection, "task.created", actor="test", hospital=hospitals[n % 3],
                       detail={"n": n})  # fmt: skip
    assert seal_pending(engine) == 30
    for h, hospital in enumerate(hospitals):
        assert _numbers(log, hospital)[-10:] == list(range(150 + h, 180, 3))
    assert log.verify() == []


def _numbers(log: SqlAuditLog, hospital: str) -> list[int]:
    events = log.events(chain=f"hospital:{hospital}", action="task.created")
    return [int(e.detail["n"]) for e in events]


def test_a_rolled_back_change_leaves_no_event_and_a_committed_one_is_sealed_at_once(
    engine: Engine,
) -> None:
    log = audit_log(engine)
    before = log.count()
    with make_sessions(engine)() as session:
        record(session, "task.created", actor="test", hospital="h9", task="t-rolled-back")
        session.rollback()
        record(session, "task.created", actor="test", hospital="h9", task="t-committed")
        session.commit()
    assert log.pending() == 0
    tasks = [e.task for e in log.events(chain="hospital:h9")]
    assert tasks == [None, "t-committed"] or tasks == ["t-committed"]
    assert log.count() == before + 2  # the event and the hub chain's note of the new chain
    with engine.connect() as connection:
        left = connection.execute(text("SELECT count(*) FROM audit_pending")).scalar()
    assert left == 0


@ON_POSTGRESQL_ONLY
@pytest.mark.parametrize("statement", ["INSERT INTO audit_pending", "INSERT INTO audit_events"])
def test_a_task_whose_connection_drops_at_its_event_is_created_once_with_one_event(
    live: tuple[Hub, Engine],
    engine: Engine,
    postgres_database: str,
    token_a: str,
    study: tuple[str, list[Path]],
    statement: str,
) -> None:
    hub, served = live
    study_uid, files = study
    assert hub.stow(token_a, files).status_code == 200
    drop = DropConnection(postgres_database, statement)
    sqlevent.listen(served, "before_cursor_execute", drop)
    try:
        created = hub.create_task(token_a, study_uid, [f.stem for f in files])
    finally:
        sqlevent.remove(served, "before_cursor_execute", drop)
    assert drop.dropped == 1
    assert created.status_code == 201, created.text
    log = audit_log(engine)
    assert [e.task for e in log.events(action="task.created")] == [created.json()["id"]]
    assert log.pending() == 0
    assert log.verify() == []


@ON_POSTGRESQL_ONLY
def test_a_token_revoked_while_the_connection_drops_is_revoked_once(
    live: tuple[Hub, Engine],
    engine: Engine,
    postgres_database: str,
    token_a: str,
    operator_token: str,
) -> None:
    hub, served = live
    as_operator = hub.auth(operator_token)
    principals = hub.client.get("/principals", headers=as_operator).json()
    hospital = next(p for p in principals if p["role"] == "hospital")
    token_id = hospital["tokens"][0]["id"]
    drop = DropConnection(postgres_database, "UPDATE tokens")
    sqlevent.listen(served, "before_cursor_execute", drop)
    try:
        revoked = hub.client.delete(f"/tokens/{token_id}", headers=as_operator)
    finally:
        sqlevent.remove(served, "before_cursor_execute", drop)
    assert drop.dropped == 1
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"]
    assert hub.client.get("/tasks", headers=hub.auth(token_a)).status_code == 401
    revocations = list(audit_log(engine).events(action="token.revoked"))
    assert [e.detail["token"] for e in revocations] == [token_id]


class _CommitFails(Exception):
    """The database refusing a commit (a lost connection, a crash) in these tests."""


def _fail_next_commit(session: Session) -> None:
    def refuse(_session: Session) -> None:
        raise _CommitFails("the commit did not happen")

    sqlevent.listen(session, "before_commit", refuse, once=True)


def test_a_token_issued_or_revoked_whose_commit_fails_leaves_no_event_and_a_committed_one_is_sealed(
    engine: Engine,
) -> None:
    log = audit_log(engine)
    sessions = make_sessions(engine)
    with sessions() as session:
        hospital, _secret = add_hospital(session, f"Outbox {uuid.uuid4().hex[:8]}", subscribe=())
        principal = principal_of(session, hospital.id)
        assert principal is not None
        (first,) = session.scalars(select(Token).where(Token.principal_id == principal.id))
        hospital_id, principal_id, first_id = hospital.id, principal.id, first.id
        _fail_next_commit(session)
        with pytest.raises(_CommitFails):
            issue_token(session, principal, actor="operator")
        session.rollback()
        _fail_next_commit(session)
        with pytest.raises(_CommitFails):
            revoke_token(session, first_id, actor="operator")
        session.rollback()
    with sessions() as session:
        kept = session.scalars(select(Token).where(Token.principal_id == principal_id)).all()
        assert [(t.id, t.revoked_at) for t in kept] == [(first_id, None)]
    actions = [e.action for e in log.events(hospital=hospital_id)]
    assert actions == ["hospital.added", "principal.added", "token.issued"]
    assert log.pending() == 0

    with sessions() as session:
        principal = principal_of(session, hospital_id)
        assert principal is not None
        second_id = issue_token(session, principal, actor="operator")[0].id
        revoke_token(session, first_id, actor="operator")
    assert log.pending() == 0  # sealed right after their commits, no janitor needed
    events = list(log.events(chain=chain_of(hospital_id)))
    assert [(e.action, e.detail.get("token")) for e in events] == [
        ("hospital.added", None),
        ("principal.added", None),
        ("token.issued", first_id),
        ("token.issued", second_id),
        ("token.revoked", first_id),
    ]
    assert log.verify() == []


def test_the_reapers_requeue_is_recorded_with_its_change(
    settings: HubSettings,
    engine: Engine,
    resolver: Callable[[str], Algorithm],
    token_a: str,
    study: tuple[str, list[Path]],
) -> None:
    (task_id,) = _scheduled_tasks(settings, resolver, token_a, study, 1)
    log = audit_log(engine)
    sessions = make_sessions(engine)
    later = utcnow() + timedelta(seconds=31)
    with sessions() as session:
        assert claim(session, task_id, ELSEWHERE, lease_s=30)
        _fail_next_commit(session)
        with pytest.raises(_CommitFails):
            reap(session, max_attempts=3, now=later)
        session.rollback()
    assert list(log.events(action="run.requeued")) == []  # no change, no event
    with sessions() as session:
        assert session.get(Task, task_id).state == TaskState.IN_PROGRESS.value  # type: ignore[union-attr]
        assert reap(session, max_attempts=3, now=later).requeued == [task_id]
    assert log.pending() == 0
    (requeued,) = log.events(action="run.requeued")
    assert (requeued.task, requeued.actor, requeued.detail["attempts"]) == (task_id, "hub", 1)
    assert requeued.detail["reason"] == "the worker's lease ran out"
    assert log.verify() == []


@ON_POSTGRESQL_ONLY
def test_a_request_and_its_sealing_need_one_pooled_connection_at_a_time(
    tmp_path: Path,
    postgres_database: str,
    token_a: str,
    study: tuple[str, list[Path]],
    resolver: Callable[[str], Algorithm],
    manifests: Callable[[], list[Manifest]],
) -> None:
    """Sealing waits until the committing session has given its connection back.

    An ``aifi hub api`` process with a pool of one connection: a STOW whose
    event was sealed while its session still held the connection waited for
    a second one until the pool's timeout (30 s, then 500); a burst of such
    requests emptied any pool (bench/national_load.py, embedded hub).
    """
    settings = HubSettings(
        data_dir=tmp_path / "hub-data",
        database_url=postgres_database,
        database_pool_size=1,
        database_max_overflow=0,
    )
    app = create_app(settings, algorithms=resolver, manifests=manifests, role="api")
    with serving(app, settings) as client:
        hub = Hub(client, settings)
        t0 = time.monotonic()
        stowed = hub.stow(token_a, study[1])
        took = time.monotonic() - t0
        engine = app.state.hub.engine
        assert stowed.status_code == 200, stowed.text
        assert took < 10, f"the STOW took {took:.1f} s: its sealing waited for a connection"
        assert [e.action for e in audit_log(engine).events(action="stow.received")]
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM audit_pending")).scalar() == 0
