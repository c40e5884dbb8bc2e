"""Leases: which worker runs a task, until when; the database is the source of truth.

A worker *claims* a task with one atomic statement, SCHEDULED → IN PROGRESS
with ``claimed_by`` (the worker's identity), ``lease_until`` and
``heartbeat_at`` set and ``attempts`` counted (PS3.4 CC.1.1: a Unified
Procedure Step is IN PROGRESS for exactly one performer). Whoever else tries
the same task — the same id delivered twice, a second worker, a second hub —
finds no row to update and does not run it. The claim starts the run: its
``run.started`` is recorded in the claim's transaction, so a claim that
commits is audited and one that does not leaves no event. While the
algorithm runs the worker :func:`renew`\\ s its lease; every later write of the worker is
*fenced* on still holding it (:func:`fence`), so a worker that lost its lease
(it stalled, the janitor re-queued the task) cannot commit results.

The janitor :func:`reap`\\ s: a task IN PROGRESS whose lease ran out — or
whose worker ran on this machine and is gone (its process id no longer
exists), or that has no lease at all (left by a hub older than leases) — goes
back to SCHEDULED for another worker, or is CANCELED once it used up
``max_attempts`` runs (a study that kills every worker must not kill them
all, forever).

On PostgreSQL the "next task" query takes the row ``FOR UPDATE SKIP LOCKED``,
so concurrent workers claim different tasks without waiting on each other;
on SQLite the single writer makes the same statement atomic.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.orm import Session

from aifi.hub.auditing import SYSTEM_ACTOR, record
from aifi.hub.models import INPUT_PRIOR, Instance, Task, TaskInput, utcnow
from aifi.protocol.schemas import TaskState

__all__ = [
    "ReapReport",
    "claim",
    "claim_next",
    "fence",
    "reap",
    "release",
    "renew",
    "worker_identity",
]

logger = logging.getLogger(__name__)

_SCHEDULED = TaskState.SCHEDULED.value
_IN_PROGRESS = TaskState.IN_PROGRESS.value


def worker_identity(kind: str = "worker") -> str:
    """``<host>:<pid>:<kind>-<random>``: unique per worker, and tells the janitor where it ran."""
    return f"{socket.gethostname()}:{os.getpid()}:{kind}-{uuid.uuid4().hex[:8]}"


def _lease_values(worker: str, lease_s: float, now: datetime) -> dict[str, object]:
    return {
        "state": _IN_PROGRESS,
        "claimed_by": worker,
        "lease_until": now + timedelta(seconds=lease_s),
        "heartbeat_at": now,
        "attempts": Task.attempts + 1,
        "updated_at": now,
    }


def claim(
    session: Session,
    task_id: str,
    worker: str,
    lease_s: float,
    *,
    record_start: bool = True,
    commit: bool = True,
) -> bool:
    """Claim task ``task_id`` for ``worker``; False when it is not SCHEDULED (someone has it).

    The claim starts the run: ``run.started`` is recorded in its transaction
    (:func:`_started`); ``record_start=False`` for a caller that records its
    own (an outside performer's claim, :func:`aifi.hub.workitems.change_state`).
    Commits, so the claim is visible to every other process at once;
    ``commit=False`` leaves the commit to a caller that writes more with it.
    """
    now = utcnow()
    claimed = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.state == _SCHEDULED)
        .values(**_lease_values(worker, lease_s, now))
        .returning(*_STARTED_COLUMNS)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if claimed is not None and record_start:
        _started(session, claimed, worker)
    if commit:
        session.commit()
    return claimed is not None


#: The order workers take SCHEDULED tasks in: most urgent (priority HIGH = 0), then
#: oldest. The console's queue page lists them in the same order.
QUEUE_ORDER = (Task.priority, Task.created_at, Task.id)


def claim_next(
    session: Session,
    worker: str,
    algorithm_ids: Collection[str] | None,
    lease_s: float,
    *,
    exclude: Collection[str] = (),
) -> str | None:
    """Claim the most urgent, then oldest, SCHEDULED task of ``algorithm_ids`` (None: any).

    Its id, or None. Urgent and stat work (priority HIGH) goes before routine work.
    Tasks of the ``exclude`` algorithms are left to outside performers
    (:func:`aifi.hub.workitems.change_state`).

    One statement: ``UPDATE tasks ... WHERE id = (SELECT id ... LIMIT 1 FOR
    UPDATE SKIP LOCKED) AND state = 'SCHEDULED' RETURNING id, ...``; the
    claimed task's ``run.started`` is recorded in its transaction. Commits.
    """
    if algorithm_ids is not None and not algorithm_ids:
        return None
    now = utcnow()
    waiting = select(Task.id).where(Task.state == _SCHEDULED)
    if algorithm_ids is not None:
        waiting = waiting.where(Task.algorithm_id.in_(sorted(algorithm_ids)))
    if exclude:
        waiting = waiting.where(Task.algorithm_id.not_in(sorted(exclude)))
    oldest = (
        waiting.order_by(*QUEUE_ORDER).limit(1).with_for_update(skip_locked=True).scalar_subquery()
    )
    claimed = session.execute(
        update(Task)
        .where(Task.id == oldest, Task.state == _SCHEDULED)
        .values(**_lease_values(worker, lease_s, now))
        .returning(*_STARTED_COLUMNS)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if claimed is None:
        session.commit()
        return None
    _started(session, claimed, worker)
    session.commit()
    return str(claimed.id)


_STARTED_COLUMNS = (
    Task.id,
    Task.hospital_id,
    Task.algorithm_id,
    Task.algorithm_version,
    Task.agreement_reference,
    Task.correlation_id,
    Task.attempts,
)


def _started(
    session: Session,
    claimed: Row[str, str, str, str | None, str | None, str | None, int],
    worker: str,
) -> None:
    """Record ``run.started`` for a task just claimed, in the claim's transaction.

    Its detail: the ``worker``, how many current ``inputs``, how many
    ``prior_studies`` (when the task has any) and which ``attempt`` this is.
    """
    counts = session.execute(
        select(
            TaskInput.role,
            func.count(),
            func.count(func.distinct(Instance.study_instance_uid)),
        )
        .join(Instance, TaskInput.instance_id == Instance.id)
        .where(TaskInput.task_id == claimed.id)
        .group_by(TaskInput.role)
    ).all()
    inputs = sum(int(n) for role, n, _studies in counts if role != INPUT_PRIOR)
    prior_studies = sum(int(studies) for role, _n, studies in counts if role == INPUT_PRIOR)
    detail: dict[str, Any] = {"inputs": inputs, "worker": worker}
    if prior_studies:
        detail["prior_studies"] = prior_studies
    detail["attempt"] = int(claimed.attempts)
    record(
        session,
        "run.started",
        actor=SYSTEM_ACTOR,
        hospital=claimed.hospital_id,
        task=claimed.id,
        algorithm=claimed.algorithm_id,
        algorithm_version=claimed.algorithm_version,
        agreement=claimed.agreement_reference,
        correlation_id=claimed.correlation_id,
        detail=detail,
    )


def renew(session: Session, task_id: str, worker: str, lease_s: float) -> bool:
    """The heartbeat: extend ``worker``'s lease on the task; False when it no longer holds it."""
    now = utcnow()
    renewed = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.state == _IN_PROGRESS, Task.claimed_by == worker)
        .values(lease_until=now + timedelta(seconds=lease_s), heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(getattr(renewed, "rowcount", 0))


def fence(session: Session, task_id: str, worker: str) -> bool:
    """Inside the caller's transaction: whether ``worker`` still holds the task, row locked.

    The first write of the transaction that ends a run: on PostgreSQL it
    locks the task's row until commit (the reaper waits, then finds the task
    ended), on SQLite it takes the database's write lock. Does not commit.
    """
    held = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.state == _IN_PROGRESS, Task.claimed_by == worker)
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(held, "rowcount", 0))


def release(session: Session, task_id: str, worker: str) -> bool:
    """Give a claimed task back to the queue (a worker stopping before it ran it). Commits."""
    released = session.execute(
        update(Task)
        .where(Task.id == task_id, Task.state == _IN_PROGRESS, Task.claimed_by == worker)
        .values(
            state=_SCHEDULED,
            claimed_by=None,
            lease_until=None,
            attempts=Task.attempts - 1,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(getattr(released, "rowcount", 0))


@dataclass
class ReapReport:
    """What one reap did: tasks put back in the queue, tasks canceled for too many attempts."""

    requeued: list[str] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)


def _gone_here(claimed_by: str | None) -> bool:
    """Whether ``claimed_by`` names a process on this machine that no longer exists."""
    if not claimed_by:
        return False
    host, _, rest = claimed_by.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a process of another user has that id now: not ours, alive
        return False
    return False


def reap(session: Session, *, max_attempts: int, now: datetime | None = None) -> ReapReport:
    """Re-queue (or cancel) every IN PROGRESS task whose worker lost its lease. Commits.

    A lease is lost when ``lease_until`` passed, when there is none, or when
    the claiming process ran on this machine and is gone. Each change is one
    UPDATE guarded on the lease it saw, so a worker renewing at the same
    moment keeps its task. Each task re-queued or canceled is audited
    (``run.requeued``, ``run.canceled``) in the same transaction as its change.
    """
    now = now or utcnow()
    report = ReapReport()
    running = session.execute(
        select(
            Task.id,
            Task.claimed_by,
            Task.lease_until,
            Task.attempts,
            Task.hospital_id,
            Task.algorithm_id,
            Task.algorithm_version,
            Task.agreement_reference,
            Task.correlation_id,
            Task.reason,
        ).where(Task.state == _IN_PROGRESS)
    ).all()
    for row in running:
        task_id, claimed_by, lease_until, attempts = row[:4]
        expired = lease_until is None or lease_until < now
        if not (expired or _gone_here(claimed_by)):
            continue
        same_lease = [
            Task.id == task_id,
            Task.state == _IN_PROGRESS,
            Task.claimed_by.is_(None) if claimed_by is None else Task.claimed_by == claimed_by,
            Task.lease_until.is_(None) if lease_until is None else Task.lease_until == lease_until,
        ]
        if attempts >= max_attempts:
            values: dict[str, object] = {
                "state": TaskState.CANCELED.value,
                "reason": f"the worker running it stopped before finishing {attempts} times "
                "(its lease ran out); the study may make the algorithm fail, ask the vendor",
                "claimed_by": None,
                "lease_until": None,
                "updated_at": now,
            }
            bucket, action = report.canceled, "run.canceled"
        else:
            values = {
                "state": _SCHEDULED,
                "claimed_by": None,
                "lease_until": None,
                "updated_at": now,
            }
            bucket, action = report.requeued, "run.requeued"
        changed = session.execute(
            update(Task)
            .where(*same_lease)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if getattr(changed, "rowcount", 0):
            bucket.append(task_id)
            record(
                session,
                action,
                actor=SYSTEM_ACTOR,
                hospital=row.hospital_id,
                task=task_id,
                algorithm=row.algorithm_id,
                algorithm_version=row.algorithm_version,
                agreement=row.agreement_reference,
                correlation_id=row.correlation_id,
                detail={
                    "reason": values.get("reason") or row.reason or "the worker's lease ran out",
                    "attempts": attempts,
                },
            )
    session.commit()
    if report.requeued or report.canceled:
        logger.warning(
            "lease reaper: %d tasks re-queued, %d canceled after %d attempts",
            len(report.requeued),
            len(report.canceled),
            max_attempts,
        )
    return report
