"""The hub's audit chain, kept in the hub's own database.

Hub events carry the hub's identifiers (hospital id, task id, pseudonymous
study UIDs at most), never a patient's identity. Append an event only
after the change it records is committed: the chain is written on its own
connection, and an open write transaction on SQLite would make it wait.

Actions recorded: ``stow.received``, ``stow.refused``, ``task.created``,
``task.refused``, ``run.started``, ``run.completed``, ``run.canceled``,
``results.made``, ``task.acknowledged``, ``purge.images``,
``purge.results``, ``catalog.registered``, ``catalog.state``,
``hospital.added``, ``principal.added``, ``token.issued``,
``token.revoked``, ``subscription.added``, ``subscription.ended``.
"""

from __future__ import annotations

import threading

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from aifi.audit.store import SqlAuditLog
from aifi.hub.models import AUDIT_TABLES

__all__ = ["SYSTEM_ACTOR", "audit_log", "audit_log_of"]

SYSTEM_ACTOR = "hub"
"""The actor of what the hub does by itself (workers, retention)."""

_APPENDING = threading.Lock()  # the hub's threads append one at a time


def audit_log(engine: Engine) -> SqlAuditLog:
    """The audit log in ``engine``'s database."""
    return SqlAuditLog(engine, AUDIT_TABLES, lock=_APPENDING)


def audit_log_of(session: Session) -> SqlAuditLog:
    """The audit log of the database ``session`` is bound to."""
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    return audit_log(engine)
