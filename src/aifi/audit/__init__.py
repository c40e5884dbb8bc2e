"""The audit trail: append-only, hash-chained events, verifiable and exportable.

Every action at the hub and at the edge becomes an :class:`AuditEvent`
(actor, action, hospital, task, algorithm version, agreement reference,
correlation id, detail). Events are chained by SHA-256
(:mod:`aifi.audit.chain`), so ``aifi audit verify`` finds a changed,
deleted, reordered or cut-off event and names where. The hub keeps one
chain per hospital and one for itself in its own database
(:class:`SqlAuditLog`, :mod:`aifi.hub.auditing`), the edge its one chain
(:data:`MAIN`) in a SQLite file (:class:`SqliteAuditLog`). Hub events
carry no identity.
"""

from __future__ import annotations

from aifi.audit.chain import (
    GENESIS,
    MAIN,
    AuditEvent,
    Head,
    canonical,
    chain_hash,
    verify_chain,
)
from aifi.audit.jsonl import read_jsonl, verify_jsonl
from aifi.audit.sqlite import SqliteAuditLog
from aifi.audit.store import SqlAuditLog
from aifi.audit.tables import AuditTables, define_audit_tables

__all__ = [
    "GENESIS",
    "MAIN",
    "AuditEvent",
    "AuditTables",
    "Head",
    "SqlAuditLog",
    "SqliteAuditLog",
    "canonical",
    "chain_hash",
    "define_audit_tables",
    "read_jsonl",
    "verify_chain",
    "verify_jsonl",
]
