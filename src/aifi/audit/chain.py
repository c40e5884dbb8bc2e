"""The audit trail as a hash chain: what an event is and how the chain is checked.

Each event is hashed over its canonical JSON (sorted keys, no whitespace)
together with the hash of the event before it::

    hash(n) = SHA-256(hash(n-1) + canonical(event n))      hash(0) = GENESIS

Changing an event changes its hash; deleting or reordering events breaks
the link ``prev_hash(n) == hash(n-1)`` or the run of sequence numbers; and
cutting events off the end leaves the chain shorter than its recorded
*head* (the last sequence number and hash, kept apart from the events).
The store is not this module's concern: :mod:`aifi.audit.store` keeps the
chain in any SQL database.

A store may keep several independent chains, each named (the hub keeps one
per hospital and one for itself, see :mod:`aifi.audit.store`). The name of
a chain other than :data:`MAIN` is part of every hashed body, so an event
cannot be moved from one chain to another unseen; :data:`MAIN` — the one
chain of the edge, and the hub's single chain before schema 0008 — hashes
exactly as it always did, so chains written before chains had names still
verify.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "GENESIS",
    "MAIN",
    "AuditEvent",
    "Head",
    "canonical",
    "chain_hash",
    "now_iso",
    "verify_chain",
]

GENESIS = "0" * 64
"""The ``prev_hash`` of the first event."""

MAIN = "main"
"""The name of a store's one chain (the edge's; the hub's before per-tenant chains)."""


def now_iso() -> str:
    """The current UTC time as ISO 8601 with microseconds (how events record ``at``)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class AuditEvent:
    """One thing that happened: who did what, for which hospital, task and agreement.

    ``hospital`` and ``task`` are the hub's identifiers (never a patient's
    name or ID); ``detail`` holds counts, reasons and other plain values.
    """

    seq: int
    at: str
    actor: str
    action: str
    hospital: str | None = None
    task: str | None = None
    algorithm: str | None = None
    algorithm_version: str | None = None
    agreement: str | None = None
    correlation_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    chain: str = MAIN
    prev_hash: str = GENESIS
    hash: str = ""

    def body(self) -> dict[str, Any]:
        """The hashed fields (everything except the two hashes; the chain unless :data:`MAIN`)."""
        named = {} if self.chain == MAIN else {"chain": self.chain}
        return {
            **named,
            "seq": self.seq,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "hospital": self.hospital,
            "task": self.task,
            "algorithm": self.algorithm,
            "algorithm_version": self.algorithm_version,
            "agreement": self.agreement,
            "correlation_id": self.correlation_id,
            "detail": dict(self.detail),
        }

    def as_json(self) -> dict[str, Any]:
        """The event with its hashes, as one JSON lines record (``chain`` unless :data:`MAIN`)."""
        return {**self.body(), "prev_hash": self.prev_hash, "hash": self.hash}


@dataclass(frozen=True)
class Head:
    """The last event of a chain as recorded apart from the events (detects truncation)."""

    seq: int
    hash: str


def canonical(body: Mapping[str, Any]) -> str:
    """Canonical JSON: sorted keys, no insignificant whitespace, UTF-8 kept as is."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``prev_hash`` followed by the canonical JSON of ``body``."""
    return hashlib.sha256((prev_hash + canonical(body)).encode("utf-8")).hexdigest()


def verify_chain(
    events: Iterable[AuditEvent], head: Head | None, *, chain: str = MAIN
) -> list[str]:
    """Every problem found in one chain read in ``seq`` order; empty when it is intact.

    Each problem names the sequence number where the chain stops being
    trustworthy: a changed event, a gap (deleted events), an event out of
    place (reordered or a predecessor deleted), or events missing after the
    last one (truncation, seen against ``head``). Problems of a chain other
    than :data:`MAIN` start with ``chain NAME:``; an event of another chain
    among ``events`` is a problem too.
    """
    problems = _verify_one(events, head, chain)
    if chain == MAIN:
        return problems
    return [f"chain {chain}: {p}" for p in problems]


def _verify_one(events: Iterable[AuditEvent], head: Head | None, chain: str) -> list[str]:
    problems: list[str] = []
    expected_seq = 1
    prev_hash = GENESIS
    last = Head(0, GENESIS)
    for event in events:
        if event.chain != chain:
            problems.append(f"event {event.seq} is recorded in chain {event.chain}")
        if event.seq != expected_seq:
            if event.seq > expected_seq:
                problems.append(
                    f"events {expected_seq}..{event.seq - 1} are missing before event "
                    f"{event.seq} (deleted)"
                )
            else:
                problems.append(f"event {event.seq} appears after event {expected_seq - 1}")
        if event.prev_hash != prev_hash:
            problems.append(
                f"event {event.seq} does not follow the event before it "
                "(reordered, or an earlier event was deleted or changed)"
            )
        if chain_hash(event.prev_hash, event.body()) != event.hash:
            problems.append(f"event {event.seq} was changed after it was recorded")
        expected_seq = event.seq + 1
        prev_hash = event.hash
        last = Head(event.seq, event.hash)
    if head is not None and (head.seq, head.hash) != (last.seq, last.hash):
        if head.seq > last.seq:
            problems.append(f"events {last.seq + 1}..{head.seq} are missing at the end (truncated)")
        else:
            problems.append(
                f"the recorded head (event {head.seq}) does not match the last event "
                f"{last.seq}; the chain or its head was altered"
            )
    return problems
