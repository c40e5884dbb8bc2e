"""One user action, one transaction: adding a hospital; a claim and its ``run.started``.

Runs on SQLite and PostgreSQL (the ``settings`` fixture). What is checked is
what an operator or an auditor would look at: the hospital, its principal,
token and subscriptions, the task's state, and the hospital's audit chain
(every event sealed, the chain verifying).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy import event as sqlevent
from sqlalchemy.orm import Session

from aifi.algorithms.base import Algorithm
from aifi.errors import ConfigError
from aifi.hub.auditing import audit_log, chain_of
from aifi.hub.config import HubSettings
from aifi.hub.db import make_sessions
from aifi.hub.hospitals import add_hospital, principal_of
from aifi.hub.leases import claim, claim_next
from aifi.hub.models import Hospital, Principal, Subscription, Task, Token
from aifi.hub.tasks import TaskRefused
from aifi.hub.workitems import StateChanged, change_state
from aifi.protocol.schemas import TaskState

from .test_leases import _scheduled_tasks

WORKER = "other-host:4242:worker-test"


class _CommitFails(Exception):
    """The database refusing a commit (a lost connection, a crash) in these tests."""


def _fail_next_commit(session: Session) -> None:
    def refuse(_session: Session) -> None:
        raise _CommitFails("the commit did not happen")

    sqlevent.listen(session, "before_commit", refuse, once=True)


@contextmanager
def _failing(engine: Engine, statement: str) -> Iterator[None]:
    """Every statement starting with ``statement`` fails while the block runs."""

    def refuse(_conn: object, _cursor: object, sql: str, *_args: object) -> None:
        if sql.lstrip().startswith(statement):
            raise _CommitFails(f"{statement} did not happen")

    sqlevent.listen(engine, "before_cursor_execute", refuse)
    try:
        yield
    finally:
        sqlevent.remove(engine, "before_cursor_execute", refuse)


def _counts(engine: Engine) -> dict[str, int]:
    """Rows of everything adding a hospital writes, events committed or pending included."""
    with make_sessions(engine)() as session:
        counted = {
            model.__tablename__: int(session.scalar(select(func.count()).select_from(model)) or 0)
            for model in (Hospital, Principal, Token, Subscription)
        }
        for table in ("audit_events", "audit_pending"):
            counted[table] = int(session.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
    return counted


def test_adding_a_hospital_commits_once_with_every_event_sealed_in_its_chain(
    engine: Engine,
) -> None:
    commits: list[int] = []
    with make_sessions(engine)() as session:
        sqlevent.listen(session, "after_commit", lambda _s: commits.append(1))
        hospital, secret = add_hospital(
            session, f"One {uuid.uuid4().hex[:8]}", subscribe=("integrity-check", "echo")
        )
        hospital_id = hospital.id
        principal = principal_of(session, hospital_id)
        assert principal is not None
        tokens = session.scalars(select(Token).where(Token.principal_id == principal.id)).all()
        subscriptions = session.scalars(
            select(Subscription).where(Subscription.hospital_id == hospital_id)
        ).all()
        principal_id = principal.id
    assert commits == [1]  # the hospital, its principal, token and subscriptions: one commit
    assert secret and len(tokens) == 1
    assert sorted(s.algorithm_id for s in subscriptions) == ["echo", "integrity-check"]
    log = audit_log(engine)
    assert log.pending() == 0  # sealed right after that commit
    events = list(log.events(chain=chain_of(hospital_id)))
    assert [e.action for e in events] == [
        "hospital.added",
        "principal.added",
        "token.issued",
        "subscription.added",
        "subscription.added",
    ]
    assert events[1].detail["principal"] == principal_id
    assert events[2].detail["token"] == tokens[0].id
    assert {e.detail["subscription"] for e in events[3:]} == {s.id for s in subscriptions}
    assert log.verify() == []


@pytest.mark.parametrize("failure", ["the last subscription is refused", "the commit fails"])
def test_a_hospital_whose_last_step_fails_leaves_no_trace(engine: Engine, failure: str) -> None:
    before = _counts(engine)
    name = f"Half {uuid.uuid4().hex[:8]}"
    with make_sessions(engine)() as session:
        if failure == "the commit fails":
            _fail_next_commit(session)
            with pytest.raises(_CommitFails):
                add_hospital(session, name, subscribe=("integrity-check", "echo"))
        else:  # a blank algorithm id: refused after the first subscription was written
            with pytest.raises(ConfigError, match="non-empty algorithm_id"):
                add_hospital(session, name, subscribe=("integrity-check", " "))
    assert _counts(engine) == before  # no hospital, principal, token, subscription or event
    with make_sessions(engine)() as session:  # and the name is free: adding it again works
        hospital, _secret = add_hospital(session, name)
        hospital_id = hospital.id
    log = audit_log(engine)
    assert [e.action for e in log.events(chain=chain_of(hospital_id))] == [
        "hospital.added",
        "principal.added",
        "token.issued",
        "subscription.added",
    ]
    assert log.verify() == []


def _claim_by_id(session: Session, task_id: str) -> str | None:
    return task_id if claim(session, task_id, WORKER, lease_s=30) else None


def _claim_next(session: Session, _task_id: str) -> str | None:
    return claim_next(session, WORKER, None, lease_s=30)


@pytest.mark.parametrize("failure", ["the commit fails", "its event is not written"])
@pytest.mark.parametrize("claiming", [_claim_by_id, _claim_next], ids=["claim", "claim_next"])
def test_a_claim_commits_with_its_run_started_or_neither_is_there(
    settings: HubSettings,
    engine: Engine,
    resolver: Callable[[str], Algorithm],
    token_a: str,
    study: tuple[str, list[Path]],
    claiming: Callable[[Session, str], str | None],
    failure: str,
) -> None:
    (task_id,) = _scheduled_tasks(settings, resolver, token_a, study, 1)
    log = audit_log(engine)
    sessions = make_sessions(engine)
    with sessions() as session, pytest.raises(_CommitFails):
        if failure == "the commit fails":
            _fail_next_commit(session)
            claiming(session, task_id)
        else:
            with _failing(engine, "INSERT INTO audit_pending"):
                claiming(session, task_id)
    with sessions() as session:
        task = session.get(Task, task_id)
        assert task is not None
        assert (task.state, task.claimed_by, task.attempts) == (TaskState.SCHEDULED, None, 0)
        hospital_id = task.hospital_id
    assert list(log.events(action="run.started")) == []  # no claim, no event

    with sessions() as session:
        assert claiming(session, task_id) == task_id
    assert log.pending() == 0  # committed with the claim, sealed right after it
    (started,) = log.events(chain=chain_of(hospital_id), action="run.started")
    assert (started.task, started.actor) == (task_id, "hub")
    assert started.detail == {"inputs": len(study[1]), "worker": WORKER, "attempt": 1}
    assert log.verify() == []


@pytest.mark.parametrize("failure", ["the commit fails", "its event is not written"])
def test_an_outside_performers_claim_commits_with_its_own_run_started_or_neither(
    settings: HubSettings,
    engine: Engine,
    resolver: Callable[[str], Algorithm],
    token_a: str,
    study: tuple[str, list[Path]],
    failure: str,
) -> None:
    (task_id,) = _scheduled_tasks(settings, resolver, token_a, study, 1)
    log = audit_log(engine)
    sessions = make_sessions(engine)
    transaction_uid = f"2.25.{uuid.uuid4().int}"

    def to_in_progress(session: Session) -> StateChanged | TaskRefused:
        task = session.get(Task, task_id)
        assert task is not None
        return change_state(
            session,
            task,
            TaskState.IN_PROGRESS.value,
            transaction_uid,
            principal_id="p-outside",
            lease_s=30,
        )

    with sessions() as session, pytest.raises(_CommitFails):
        if failure == "the commit fails":
            _fail_next_commit(session)
            to_in_progress(session)
        else:
            with _failing(engine, "INSERT INTO audit_pending"):
                to_in_progress(session)
    with sessions() as session:
        task = session.get(Task, task_id)
        assert task is not None
        assert (task.state, task.claimed_by) == (TaskState.SCHEDULED, None)
    assert list(log.events(action="run.started")) == []

    with sessions() as session:
        changed = to_in_progress(session)
        assert isinstance(changed, StateChanged)
        assert changed.task.state == TaskState.IN_PROGRESS
    assert log.pending() == 0
    (started,) = log.events(action="run.started")  # the performer's, not also the hub's
    assert (started.task, started.actor) == (task_id, "performer:p-outside")
    assert started.detail == {"performer": "p-outside"}
    assert log.verify() == []
