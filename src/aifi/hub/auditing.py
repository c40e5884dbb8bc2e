"""The hub's audit trail: one hash chain per hospital and one for the hub, in its database.

Hub events carry the hub's identifiers (hospital id, task id, pseudonymous
study UIDs at most), never a patient's identity. An event goes to the chain
of the hospital it concerns (``hospital:<id>``), or to the hub's own chain
(``hub``: the catalog, operators and auditors, and every chain opened);
events from before schema 0008 stay in chain ``main``. Hospitals therefore
never wait for one another to append, and each hospital's trail verifies on
its own (the design is argued in :mod:`aifi.audit.store` and
``docs/audit.md``).

An event that records a change is written with :func:`record` in the
change's own transaction, as a pending row (``audit_pending``: no hash, no
head, nothing shared locked), so it is committed exactly when the change is.
Right after that commit the same process seals it into its chain (a
session ``after_commit`` hook: ``/audit`` stays current within
milliseconds); an event left pending by a process that died in between is
sealed by the janitor (:func:`seal_pending`), each exactly once. Events
with no change of their own (a refusal) may still be appended directly
(:meth:`SqlAuditLog.append`), after any commit: the chain is written on its
own connection, and an open write transaction on SQLite would make it wait.
PostgreSQL's transient failures (:func:`aifi.hub.db.is_transient`) make a
seal or an append run again.

``AIFI_TEST_KILL_AFTER_COMMIT=ACTION:N`` (tests only) makes the process
kill itself (SIGKILL) right after committing its N-th transaction holding a
pending ``ACTION`` event, before sealing it: the crash the outbox is for.

Actions recorded: ``stow.received``, ``stow.refused``, ``task.created``,
``task.refused``, ``run.started``, ``run.completed``, ``run.canceled``,
``results.made``, ``findings.handed_in`` (an outside performer's),
``task.acknowledged``, ``purge.images``,
``purge.results``, ``catalog.registered``, ``catalog.state``,
``hospital.added``, ``principal.added``, ``token.issued``,
``token.revoked``, ``subscription.added``, ``subscription.ended``,
``audit.chain_opened``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, SessionTransaction

from aifi.audit.store import ChainLocks, Pending, SqlAuditLog
from aifi.hub.db import is_transient
from aifi.hub.models import AUDIT_TABLES

if TYPE_CHECKING:
    from aifi.hub.models import Task

__all__ = [
    "HUB_CHAIN",
    "SYSTEM_ACTOR",
    "audit_log",
    "audit_log_of",
    "chain_of",
    "record",
    "record_on_task",
    "seal_pending",
]

logger = logging.getLogger(__name__)

_PENDING = "aifi.audit.pending"  # session.info: (pending id, action) written in this transaction
_COMMITTED = "aifi.audit.committed"  # session.info: those committed, sealed once it is given back
_FAULT = "AIFI_TEST_KILL_AFTER_COMMIT"
_fault_count = 0
_fault_guard = threading.Lock()

SYSTEM_ACTOR = "hub"
"""The actor of what the hub does by itself (workers, retention)."""

HUB_CHAIN = "hub"
"""The chain of events that concern no hospital; it records every chain opened."""

_LOCKS = ChainLocks()  # the hub's threads append to one chain one at a time


def chain_of(hospital: str | None) -> str:
    """The chain of a hospital's events (``hospital:<id>``); :data:`HUB_CHAIN` for none."""
    return HUB_CHAIN if hospital is None else f"hospital:{hospital}"


def audit_log(engine: Engine) -> SqlAuditLog:
    """The audit trail in ``engine``'s database."""
    return SqlAuditLog(
        engine,
        AUDIT_TABLES,
        chain_of=chain_of,
        root=HUB_CHAIN,
        locks=_LOCKS,
        transient=is_transient,
    )


def audit_log_of(session: Session) -> SqlAuditLog:
    """The audit trail of the database ``session`` is bound to."""
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    return audit_log(engine)


def record(
    session: Session,
    action: str,
    *,
    actor: str,
    hospital: str | None = None,
    task: str | None = None,
    algorithm: str | None = None,
    algorithm_version: str | None = None,
    agreement: str | None = None,
    correlation_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Write an audit event in ``session``'s transaction; sealed into its chain after commit.

    Call it before the commit of the change the event records: both are
    committed, or neither. A rollback drops the event with the change.
    """
    pending = audit_log_of(session).record(
        session.connection(),
        action,
        actor=actor,
        hospital=hospital,
        task=task,
        algorithm=algorithm,
        algorithm_version=algorithm_version,
        agreement=agreement,
        correlation_id=correlation_id,
        detail=detail,
    )
    session.info.setdefault(_PENDING, []).append((pending, action))


def record_on_task(
    session: Session,
    action: str,
    task: Task,
    *,
    actor: str,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """:func:`record` an event about ``task``: its hospital, algorithm, agreement, correlation."""
    record(
        session,
        action,
        actor=actor,
        hospital=task.hospital_id,
        task=task.id,
        algorithm=task.algorithm_id,
        algorithm_version=task.algorithm_version,
        agreement=task.agreement_reference,
        correlation_id=task.correlation_id,
        detail=detail,
    )


def seal_pending(engine: Engine, *, limit: int | None = None) -> int:
    """Seal every event left pending (the janitor's duty), in pending-id order; how many."""
    sealed = audit_log(engine).seal(limit=limit)
    if sealed:
        logger.info("audit: sealed %d events left pending by a process that stopped", sealed)
    return sealed


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    """The transaction's events are durable: seal them once its connection is given back.

    ``after_commit`` runs while the session still holds its connection;
    sealing takes one of its own, so sealing here held two connections per
    committing request, and a burst of them (a STOW per hospital) emptied
    the pool, every one waiting for another's connection until the pool's
    timeout (30 s, then 500s; bench/national_load.py on the embedded hub).
    """
    written = session.info.pop(_PENDING, None)
    if written:
        session.info.setdefault(_COMMITTED, []).extend(written)


@event.listens_for(Session, "after_transaction_end")
def _seal_committed(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:  # a savepoint or subtransaction: not the commit
        return
    written: list[tuple[Pending, str]] = session.info.pop(_COMMITTED, [])
    if not written:
        return
    _fault_hook(written)
    try:
        audit_log_of(session).seal(pending for pending, _action in written)
    except Exception:  # committed and durable: the janitor seals what is left
        logger.exception("audit events %s left pending for the janitor", [p.id for p, _ in written])


@event.listens_for(Session, "after_rollback")
def _drop_rolled_back(session: Session) -> None:
    session.info.pop(_PENDING, None)


def _fault_hook(written: list[tuple[Pending, str]]) -> None:
    global _fault_count
    fault = os.environ.get(_FAULT)
    if not fault:
        return
    action, _, nth = fault.partition(":")
    if not any(a == action for _i, a in written):
        return
    with _fault_guard:
        _fault_count += 1
        if _fault_count >= int(nth or 1):
            logger.warning("%s: killing this process before sealing", _FAULT)
            os.kill(os.getpid(), signal.SIGKILL)
