"""The two tables an audit chain lives in, for any SQL database (SQLAlchemy Core).

``audit_events`` holds the events, one row per sequence number;
``audit_head`` holds one row: the last sequence number and hash, updated in
the same transaction as each append (it serializes appends and detects a
cut-off tail). The hub adds them to its own metadata (and migrations); the
edge's :class:`aifi.audit.SqliteAuditLog` creates them in its own file.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, Text

__all__ = ["AuditTables", "define_audit_tables"]

_SEQ = BigInteger().with_variant(Integer(), "sqlite")  # 64-bit; SQLite's INTEGER already is


class AuditTables:
    """The events and head tables of one chain."""

    def __init__(self, events: Table, head: Table) -> None:
        self.events = events
        self.head = head


def define_audit_tables(metadata: MetaData) -> AuditTables:
    """Add ``audit_events`` and ``audit_head`` to ``metadata``."""
    events = Table(
        "audit_events",
        metadata,
        Column("seq", _SEQ, primary_key=True, autoincrement=False),
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
        Column("prev_hash", String(64), nullable=False),
        Column("hash", String(64), nullable=False),
        Index("ix_audit_events_hospital_at", "hospital", "at"),
        Index("ix_audit_events_action_at", "action", "at"),
    )
    head = Table(
        "audit_head",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("seq", _SEQ, nullable=False),
        Column("hash", String(64), nullable=False),
    )
    return AuditTables(events, head)
