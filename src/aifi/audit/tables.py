"""The two tables audit chains live in, for any SQL database (SQLAlchemy Core).

``audit_events`` holds the events, one row per chain and sequence number;
``audit_pending`` (optional) the events committed but not yet sealed;
``audit_head`` holds one row per chain: its last sequence number and hash,
updated in the same transaction as each append to that chain (it
serializes the appends of one chain, and only of that chain, and detects a
cut-off tail). The hub adds them to its own metadata (and migrations,
0008 gave them the ``chain`` column); the edge's
:class:`aifi.audit.SqliteAuditLog` creates them in its own file and
upgrades a file written before chains had names.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

__all__ = ["CHAIN_NAME_LENGTH", "AuditTables", "define_audit_tables"]

_SEQ = BigInteger().with_variant(Integer(), "sqlite")  # 64-bit; SQLite's INTEGER already is

CHAIN_NAME_LENGTH = 80
"""Room for ``hospital:`` and a hospital id of 64 characters."""


class AuditTables:
    """The events and head tables of a store's chains, and its pending events if it has them."""

    def __init__(self, events: Table, head: Table, pending: Table | None = None) -> None:
        self.events = events
        self.head = head
        self.pending = pending


def _event_columns() -> list[Column[Any]]:
    """What an event says, sealed or pending (new Column objects: a column has one table)."""
    return [
        Column("chain", String(CHAIN_NAME_LENGTH), nullable=False),
        Column("at", String(40), nullable=False),
        Column("actor", String(200), nullable=False),
        Column("action", String(64), nullable=False),
        Column("hospital", String(64)),
        Column("task", String(64)),
        Column("algorithm", String(64)),
        Column("algorithm_version", String(64)),
        Column("agreement", String(200)),
        Column("correlation_id", String(64)),
        Column("detail", Text, nullable=False),
    ]


def define_audit_tables(metadata: MetaData, *, pending: bool = False) -> AuditTables:
    """Add ``audit_events`` and ``audit_head`` to ``metadata``; ``audit_pending`` too if asked.

    ``audit_pending`` (the hub's, schema 0012) holds events written in the
    transaction of the change they record, not yet sealed into their chain:
    no hash, no sequence number, so writing one touches no shared row.
    """
    events = Table(
        "audit_events",
        metadata,
        Column("seq", _SEQ, nullable=False, autoincrement=False),
        *_event_columns(),
        Column("prev_hash", String(64), nullable=False),
        Column("hash", String(64), nullable=False),
        PrimaryKeyConstraint("chain", "seq", name="audit_events_pkey"),
        Index("ix_audit_events_hospital_at", "hospital", "at"),
        Index("ix_audit_events_action_at", "action", "at"),
        Index("ix_audit_events_at", "at"),
        sqlite_with_rowid=False,  # the key is the table: one B-tree written per append, not two
    )
    head = Table(
        "audit_head",
        metadata,
        Column("chain", String(CHAIN_NAME_LENGTH), nullable=False),
        Column("seq", _SEQ, nullable=False),
        Column("hash", String(64), nullable=False),
        PrimaryKeyConstraint("chain", name="audit_head_pkey"),
    )
    if not pending:
        return AuditTables(events, head)
    outbox = Table(
        "audit_pending",
        metadata,
        Column("id", _SEQ, primary_key=True, autoincrement=True),
        *_event_columns(),
    )
    return AuditTables(events, head, outbox)
