"""Results stored into the hospital's other destinations (a VNA, a research archive).

The first destination (``[pacs]``, or the first ``[[destinations]]``) is the
primary: :mod:`aifi.edge.deliver` stores into it, announces urgent results
once it has them, and retries or parks the whole task. Every further
destination is advanced here, each on its own: its result kinds, its
transfer syntaxes, its attempts and back-off, its own dead letter. A
destination that refuses never holds up another; the task is delivered when
each of them has what it wants or has been given up on, with the reason kept.

A destination with ``commitment = true`` is asked for Storage Commitment
(PS3.4 Annex J, :mod:`aifi.edge.commitment`) once it has stored its objects:
it is ``committing`` until its N-EVENT-REPORT says every object is kept, then
``committed``; a failed or missing report is a failed attempt of that
destination alone. For such a destination, delivered means committed.

An operator's ``aifi edge retry --destination NAME`` puts a destination's
dead letter back to ``pending`` (:meth:`Destinations.retry`).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom import Dataset

from aifi.edge.commitment import Commitments
from aifi.edge.config import DeliverySettings, Destination
from aifi.edge.pacs import contact_of, store_to_pacs
from aifi.edge.state import DEAD_LETTER, EdgeState
from aifi.errors import AifiError
from aifi.protocol.schemas import ResultRef

__all__ = ["DestinationRow", "Destinations"]

logger = logging.getLogger(__name__)

STORED = "stored"
COMMITTING = "committing"  # stored; the storage commitment report has not come yet
COMMITTED = "committed"
#: States of a destination that has what it wants (or was given up on).
SETTLED = (STORED, COMMITTED, DEAD_LETTER)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS destination_states (
    task_id TEXT NOT NULL REFERENCES tasks(id),
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_failure_at REAL,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    reason TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (task_id, destination)
);
CREATE TABLE IF NOT EXISTS destination_deliveries (
    task_id TEXT NOT NULL REFERENCES tasks(id),
    destination TEXT NOT NULL,
    result_sop_instance_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (task_id, destination, result_sop_instance_uid)
);
"""

#: Fetches and re-identifies one result object; raises when it cannot.
Fetch = Callable[[ResultRef], Dataset]


@dataclass(frozen=True)
class DestinationRow:
    task_id: str
    destination: str
    state: str  # pending | committing | stored | committed | dead-letter
    attempts: int
    next_attempt_at: float
    reason: str | None


class Destinations:
    """The non-primary destinations of every task, with their state in the edge's database."""

    def __init__(
        self,
        state: EdgeState,
        destinations: Sequence[Destination],
        default_kinds: Sequence[str],
        settings: DeliverySettings,
        max_backoff_s: float = 60.0,
        commitments: Commitments | None = None,
    ) -> None:
        self.state = state
        self.commitments = commitments or Commitments(state)
        self.destinations = list(destinations)
        self.default_kinds = frozenset(default_kinds)
        self.settings = settings
        self.max_backoff_s = max_backoff_s
        with state._tx() as db:  # additive tables beside the edge's own schema
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def __bool__(self) -> bool:
        return bool(self.destinations)

    def kinds(self, destination: Destination) -> frozenset[str]:
        return frozenset(destination.result_kinds or self.default_kinds)

    # -- reading -----------------------------------------------------------
    def rows(self, task_id: str) -> dict[str, DestinationRow]:
        found = (
            self.state._conn()
            .execute(
                "SELECT task_id, destination, state, attempts, next_attempt_at, reason"
                " FROM destination_states WHERE task_id=?",
                (task_id,),
            )
            .fetchall()
        )
        return {r[1]: DestinationRow(r[0], r[1], r[2], int(r[3]), float(r[4]), r[5]) for r in found}

    def stored(self, task_id: str, destination: str) -> dict[str, str]:
        found = (
            self.state._conn()
            .execute(
                "SELECT result_sop_instance_uid, status FROM destination_deliveries"
                " WHERE task_id=? AND destination=?",
                (task_id, destination),
            )
            .fetchall()
        )
        return {r[0]: r[1] for r in found}

    def settled(self, task_id: str) -> bool:
        """Each destination has its results, or was given up on (dead letter)."""
        rows = self.rows(task_id)
        return all(d.name in rows and rows[d.name].state in SETTLED for d in self.destinations)

    def dead_letters(self, task_id: str) -> list[DestinationRow]:
        return [r for r in self.rows(task_id).values() if r.state == DEAD_LETTER]

    def retry(self, destination: str, task_ids: Sequence[str] | None, *, by: str) -> list[str]:
        """Put ``destination``'s dead letters (of ``task_ids``, or all) back to pending.

        A task that was delivered meanwhile (its other destinations had what
        they wanted) goes back to COMPLETED, so the running edge's next
        reconciliation with the hub stores into this destination again. Each
        retry is an event of its task (and so in the audit trail) naming who
        asked. Returns the ids of the tasks retried.
        """
        if destination not in {d.name for d in self.destinations}:
            known = ", ".join(d.name for d in self.destinations) or "none"
            raise ValueError(f"no further destination named {destination!r} (known: {known})")
        found = (
            self.state._conn()
            .execute(
                "SELECT task_id FROM destination_states WHERE destination=? AND state=?"
                " ORDER BY updated_at",
                (destination, DEAD_LETTER),
            )
            .fetchall()
        )
        chosen = [r[0] for r in found if task_ids is None or r[0] in task_ids]
        for task_id in chosen:
            self._set_state(
                task_id,
                destination,
                state="pending",
                attempts=0,
                first_failure_at=None,
                next_attempt_at=0,
                reason=f"retry requested by {by}",
            )
            if self.state.task(task_id).state == "delivered":
                self.state.update_task(task_id, state="COMPLETED", next_attempt_at=0)
            self.state.record_event(
                "destination-retry-requested",
                f"{destination}: dead letter retried by {by}",
                task_id=task_id,
            )
        return chosen

    # -- advancing ---------------------------------------------------------
    def advance(self, task_id: str, results: Sequence[ResultRef], fetch: Fetch) -> bool:
        """Store into each destination that is due; True when every one is settled."""
        rows = self.rows(task_id)
        now = time.time()
        for destination in self.destinations:
            row = rows.get(destination.name)
            if row is not None and (row.state in SETTLED or now < row.next_attempt_at):
                continue
            self._advance_one(task_id, destination, row, results, fetch)
        return self.settled(task_id)

    def _advance_one(
        self,
        task_id: str,
        destination: Destination,
        row: DestinationRow | None,
        results: Sequence[ResultRef],
        fetch: Fetch,
    ) -> None:
        kinds = self.kinds(destination)
        done = self.stored(task_id, destination.name)
        pending = [r for r in results if r.kind in kinds and done.get(r.sop_instance_uid) != STORED]
        failures: list[str] = []
        datasets: list[tuple[ResultRef, Dataset]] = []
        for ref in pending:
            try:
                datasets.append((ref, fetch(ref)))
            except (AifiError, ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
                why = f"result object not available ({type(exc).__name__}: {exc})"
                failures.append(f"{ref.kind} {ref.sop_instance_uid}: {why}")
        if datasets:
            outcomes = store_to_pacs(destination, [ds for _r, ds in datasets])
            self.state.record_contact(destination.name, *contact_of(outcomes))
            for (ref, _ds), outcome in zip(datasets, outcomes, strict=True):
                self._set_delivery(
                    task_id,
                    destination.name,
                    ref,
                    STORED if outcome.ok else "failed",
                    outcome.detail,
                )
                if not outcome.ok:
                    failures.append(f"{ref.kind} {outcome.sop_instance_uid}: {outcome.detail}")
        if failures:
            self._later(task_id, destination, row, "; ".join(failures))
            return
        if datasets or row is None or row.state != COMMITTING:
            detail = f"{destination.name}: {len(datasets)} result objects stored"
            self.state.record_event("destination-stored", detail, task_id=task_id)
            logger.info("task %s: %s", task_id, detail)
        if not destination.commitment:
            self._set_state(task_id, destination.name, state=STORED, reason=None, next_attempt_at=0)
            return
        self._commit(task_id, destination, row, results)

    def _commit(
        self,
        task_id: str,
        destination: Destination,
        row: DestinationRow | None,
        results: Sequence[ResultRef],
    ) -> None:
        """Storage commitment of what this destination stored (PS3.4 Annex J)."""
        done = self.stored(task_id, destination.name)
        refs = [
            (r.sop_class_uid, r.sop_instance_uid)
            for r in results
            if done.get(r.sop_instance_uid) == STORED
        ]
        step, detail = self.commitments.settle(destination, task_id, destination.name, refs)
        if step == "failed":
            self._later(task_id, destination, self.rows(task_id).get(destination.name), detail)
            return
        if step == "waiting":
            if row is None or row.state != COMMITTING:
                self._set_state(
                    task_id, destination.name, state=COMMITTING, reason=None, next_attempt_at=0
                )
            return
        self._set_state(task_id, destination.name, state=COMMITTED, reason=None, next_attempt_at=0)
        self.state.record_event(
            "destination-committed", f"{destination.name}: {detail}", task_id=task_id
        )
        logger.info("task %s: %s committed %s", task_id, destination.name, detail)

    def _later(
        self, task_id: str, destination: Destination, row: DestinationRow | None, reason: str
    ) -> None:
        """This destination again after a back-off, or its own dead letter; recorded."""
        now = time.time()
        attempts = (row.attempts if row is not None else 0) + 1
        first = self._first_failure(task_id, destination.name) or now
        limit = destination.max_attempts or self.settings.max_attempts
        name = destination.name
        if attempts >= limit or now - first >= self.settings.max_age_s:
            why = f"gave up after {attempts} attempts: {reason}"
            self._set_state(
                task_id,
                name,
                state=DEAD_LETTER,
                attempts=attempts,
                first_failure_at=first,
                reason=why,
            )
            self.state.record_event("destination-dead-letter", f"{name}: {why}", task_id=task_id)
            logger.error("task %s: destination %s is a dead letter: %s", task_id, name, why)
            return
        delay = min(self.max_backoff_s, 1.0 * 2 ** min(attempts - 1, 10))
        self._set_state(
            task_id,
            name,
            state="pending",
            attempts=attempts,
            first_failure_at=first,
            next_attempt_at=now + delay,
            reason=reason,
        )
        self.state.record_event("destination-failed", f"{name}: {reason}", task_id=task_id)
        logger.warning(
            "task %s: destination %s: %s (attempt %d, next in %.0f s)",
            task_id,
            name,
            reason,
            attempts,
            delay,
        )

    # -- writing -----------------------------------------------------------
    def _first_failure(self, task_id: str, destination: str) -> float | None:
        row = (
            self.state._conn()
            .execute(
                "SELECT first_failure_at FROM destination_states WHERE task_id=? AND destination=?",
                (task_id, destination),
            )
            .fetchone()
        )
        return float(row[0]) if row is not None and row[0] is not None else None

    def _set_state(self, task_id: str, destination: str, **fields: object) -> None:
        fields["updated_at"] = time.time()
        columns = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        updates = ", ".join(f"{c}=excluded.{c}" for c in fields)
        with self.state._tx() as db:
            db.execute(
                f"INSERT INTO destination_states (task_id, destination, {columns})"
                f" VALUES (?, ?, {marks}) ON CONFLICT(task_id, destination)"
                f" DO UPDATE SET {updates}",
                (task_id, destination, *fields.values()),
            )

    def _set_delivery(
        self, task_id: str, destination: str, ref: ResultRef, status: str, detail: str
    ) -> None:
        try:
            with self.state._tx() as db:
                db.execute(
                    "INSERT INTO destination_deliveries VALUES (?,?,?,?,?,?,?)"
                    " ON CONFLICT(task_id, destination, result_sop_instance_uid) DO UPDATE SET"
                    " status=excluded.status, detail=excluded.detail,"
                    " updated_at=excluded.updated_at",
                    (
                        task_id,
                        destination,
                        ref.sop_instance_uid,
                        ref.kind,
                        status,
                        detail,
                        time.time(),
                    ),
                )
        except sqlite3.Error:
            logger.exception("task %s: could not record a delivery to %s", task_id, destination)
            raise
