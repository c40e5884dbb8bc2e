"""An append-only, hash-chained audit log in a SQL database.

Appends are serialized twice: a lock inside the process (worker threads)
and, across processes, a compare-and-set on the head row inside the same
transaction as the insert; a writer that lost the race retries with the
new head. The chain therefore stays linear with any number of writers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import IO, Any

from sqlalchemy import Connection, Engine, Row, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from aifi.audit.chain import GENESIS, AuditEvent, Head, chain_hash, now_iso, verify_chain
from aifi.audit.tables import AuditTables
from aifi.errors import StorageError

__all__ = ["SqlAuditLog"]

logger = logging.getLogger(__name__)

_HEAD_ID = 1
_ATTEMPTS = 200


class _LostRaceError(Exception):
    """Another writer appended between our read of the head and our update."""


class SqlAuditLog:
    """The audit chain kept in ``tables`` of the database behind ``engine``.

    Instances that write the same chain from one process may share ``lock``
    (fewer retries); correctness does not depend on it.
    """

    def __init__(
        self, engine: Engine, tables: AuditTables, *, lock: threading.Lock | None = None
    ) -> None:
        self._engine = engine
        self._tables = tables
        self._lock = lock or threading.Lock()

    def append(
        self,
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
    ) -> AuditEvent:
        """Record one event at the end of the chain; returns it with its hashes."""
        fields: dict[str, Any] = {
            "actor": actor,
            "action": action,
            "hospital": hospital,
            "task": task,
            "algorithm": algorithm,
            "algorithm_version": algorithm_version,
            "agreement": agreement,
            "correlation_id": correlation_id,
            "detail": dict(detail or {}),
        }
        with self._lock:
            for attempt in range(_ATTEMPTS):
                try:
                    with self._engine.begin() as connection:
                        return self._append(connection, fields)
                except (_LostRaceError, IntegrityError, OperationalError) as exc:
                    if isinstance(exc, OperationalError) and "locked" not in str(exc):
                        raise StorageError(f"cannot append to the audit log: {exc}") from exc
                    time.sleep(min(0.001 * (attempt + 1), 0.05))
        raise StorageError(f"cannot append to the audit log: {_ATTEMPTS} attempts lost a race")

    def _append(self, connection: Connection, fields: dict[str, Any]) -> AuditEvent:
        events, head = self._tables.events, self._tables.head
        row = connection.execute(select(head.c.seq, head.c.hash).where(head.c.id == _HEAD_ID))
        current = row.first()
        if current is None:
            connection.execute(insert(head).values(id=_HEAD_ID, seq=0, hash=GENESIS))
            last = Head(0, GENESIS)
        else:
            last = Head(int(current.seq), str(current.hash))
        draft = AuditEvent(seq=last.seq + 1, at=now_iso(), prev_hash=last.hash, **fields)
        event = AuditEvent(**{**_fields_of(draft), "hash": chain_hash(last.hash, draft.body())})
        connection.execute(insert(events).values(**_row_values(event)))
        moved = connection.execute(
            update(head)
            .where(head.c.id == _HEAD_ID, head.c.seq == last.seq)
            .values(seq=event.seq, hash=event.hash)
        )
        if moved.rowcount != 1:
            raise _LostRaceError
        return event

    def head(self) -> Head | None:
        """The recorded last event (None before the first append)."""
        head = self._tables.head
        try:
            with self._engine.connect() as connection:
                row = connection.execute(
                    select(head.c.seq, head.c.hash).where(head.c.id == _HEAD_ID)
                ).first()
        except SQLAlchemyError as exc:
            raise StorageError(
                f"cannot read the audit log ({type(exc).__name__}); "
                "is this an aifi database with an audit trail?"
            ) from exc
        return None if row is None else Head(int(row.seq), str(row.hash))

    def events(
        self,
        *,
        hospital: str | None = None,
        action: str | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> Iterator[AuditEvent]:
        """Events in chain order, optionally only one hospital's or one action's."""
        events = self._tables.events
        query = select(events).where(events.c.seq > after_seq)
        if hospital is not None:
            query = query.where(events.c.hospital == hospital)
        if action is not None:
            query = query.where(events.c.action == action)
        query = query.order_by(events.c.seq)
        if limit is not None:
            query = query.limit(limit)
        with self._engine.connect() as connection:
            for row in connection.execute(query):
                yield _event_of(row)

    def verify(self) -> list[str]:
        """Problems in the stored chain (see :func:`aifi.audit.chain.verify_chain`)."""
        head = self.head()
        try:
            return verify_chain(self.events(), head or Head(0, GENESIS))
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot read the audit log: {exc}") from exc

    def export_jsonl(self, fp: IO[str], *, hospital: str | None = None) -> int:
        """Write the events as JSON lines (one event per line); how many were written."""
        count = 0
        for event in self.events(hospital=hospital):
            fp.write(json.dumps(event.as_json(), sort_keys=True, ensure_ascii=False) + "\n")
            count += 1
        return count


def _fields_of(event: AuditEvent) -> dict[str, Any]:
    return {**event.body(), "prev_hash": event.prev_hash, "hash": event.hash}


def _row_values(event: AuditEvent) -> dict[str, Any]:
    values = _fields_of(event)
    values["detail"] = json.dumps(values["detail"], sort_keys=True, ensure_ascii=False)
    return values


def _event_of(row: Row[Any]) -> AuditEvent:
    values = dict(row._mapping)
    try:
        values["detail"] = json.loads(values["detail"])
    except (TypeError, ValueError):
        values["detail"] = {"unreadable": str(values["detail"])}
    return AuditEvent(**values)
