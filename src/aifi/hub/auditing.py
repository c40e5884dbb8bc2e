"""The hub's audit trail: one hash chain per hospital and one for the hub, in its database.

Hub events carry the hub's identifiers (hospital id, task id, pseudonymous
study UIDs at most), never a patient's identity. An event goes to the chain
of the hospital it concerns (``hospital:<id>``), or to the hub's own chain
(``hub``: the catalog, operators and auditors, and every chain opened);
events from before schema 0008 stay in chain ``main``. Hospitals therefore
never wait for one another to append, and each hospital's trail verifies on
its own (the design is argued in :mod:`aifi.audit.store` and
``docs/audit.md``). Append an event only after the change it records is
committed: the chain is written on its own connection, and an open write
transaction on SQLite would make it wait. PostgreSQL's transient failures
(:func:`aifi.hub.db.is_transient`) make the append run again.

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

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from aifi.audit.store import ChainLocks, SqlAuditLog
from aifi.hub.db import is_transient
from aifi.hub.models import AUDIT_TABLES

__all__ = ["HUB_CHAIN", "SYSTEM_ACTOR", "audit_log", "audit_log_of", "chain_of"]

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
