"""Append-only, hash-chained audit logs in a SQL database: one chain or one per tenant.

A store keeps any number of independent chains in the same two tables
(:mod:`aifi.audit.tables`); ``chain_of`` says which chain an event goes to
from its hospital. The edge keeps one chain (:data:`aifi.audit.chain.MAIN`);
the hub keeps one per hospital and one for its own events
(:mod:`aifi.hub.auditing`), because a single chain is a single hot row:
every append of every process in the country waits for the one before it
to commit (measured before schema 0008: about 550 appends/s however many
processes, p99 up to 362 ms; ``bench/audit_appends.py``).

Chains per tenant and, for the hub, a transactional outbox too: an event
can be written with :meth:`SqlAuditLog.record` in the transaction of the
change it records, into the pending table (no hash, no head: nothing shared
is locked there), and enter its chain by :meth:`SqlAuditLog.seal` — right
after the commit by the same process, or later by the janitor when that
process died in between. Each pending event is claimed (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL; the delete first, under SQLite's one writer),
deleted and appended in one transaction, so it is sealed exactly once. The
order within a chain is the order of sealing; what a sealer takes itself,
it takes by pending id (no watermark against PostgreSQL's commit order is
needed: a chain's order is that of its hash links, each event keeps the
time of its change).

Appends to one chain are serialized twice: a lock per chain inside the
process (worker threads), and across processes the chain's head row,
locked ``FOR UPDATE`` on PostgreSQL and compare-and-set in the same
transaction as the insert everywhere; a writer that lost a race (SQLite's
busy database, two processes opening the same new chain) retries with the
new head. Each chain therefore stays linear with any number of writers.

A store with a ``root`` chain records, in that chain and in the same
transaction, every chain it opens (``audit.chain_opened``): deleting a
whole chain together with its head row is then still found by
:meth:`SqlAuditLog.verify`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, NamedTuple

from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Row,
    Select,
    Table,
    Update,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from aifi.audit.chain import GENESIS, MAIN, AuditEvent, Head, chain_hash, now_iso, verify_chain
from aifi.audit.tables import AuditTables
from aifi.errors import StorageError

__all__ = [
    "CHAIN_OPENED",
    "ChainLocks",
    "ChainOf",
    "Pending",
    "SqlAuditLog",
    "one_chain",
    "seal_of",
]

logger = logging.getLogger(__name__)

_ATTEMPTS = 200
_TRANSIENT_ATTEMPTS = 4  # a lost connection or serialization failure: again after 0.05..0.4 s

CHAIN_OPENED = "audit.chain_opened"
"""The action recorded in the root chain when a store opens another chain."""

ChainOf = Callable[[str | None], str]
"""Which chain an event of this hospital (None: no hospital) goes to."""


def one_chain(_hospital: str | None) -> str:
    """Every event in :data:`MAIN` (the edge, and any single program)."""
    return MAIN


class ChainLocks:
    """One lock per chain name, shared by the threads of a process that append."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def __call__(self, chain: str) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(chain)
            if lock is None:
                lock = self._locks[chain] = threading.Lock()
            return lock


class Pending(NamedTuple):
    """An event written but not yet sealed into its chain: its pending id and chain."""

    id: int
    chain: str


class _LostRaceError(Exception):
    """Another writer appended between our read of the head and our update."""


def _busy(exc: BaseException) -> bool:
    """SQLite's answer to a second writer (retry), whatever the database."""
    return "locked" in str(exc)


class SqlAuditLog:
    """The audit chains kept in ``tables`` of the database behind ``engine``.

    ``chain_of`` picks the chain of each append (default: one chain);
    ``root`` is the chain that records every other chain opened (None: not
    recorded). Instances that write from one process may share ``locks``
    (fewer retries); correctness does not depend on it. ``transient`` says
    which database errors are worth the append again (a dropped connection,
    a serialization failure); SQLite's busy database always is.
    """

    def __init__(
        self,
        engine: Engine,
        tables: AuditTables,
        *,
        chain_of: ChainOf = one_chain,
        root: str | None = None,
        locks: ChainLocks | None = None,
        transient: Callable[[BaseException], bool] | None = None,
    ) -> None:
        self._engine = engine
        self._tables = tables
        self._chain_of = chain_of
        self._root = root
        self._locks = locks or ChainLocks()
        self._transient = transient or _busy

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
        """Record one event at the end of its chain; returns it with its hashes."""
        fields = _event_fields(
            action, actor, hospital, task, algorithm, algorithm_version, agreement,
            correlation_id, detail,
        )  # fmt: skip
        chain = self._chain_of(hospital)
        failures = 0
        with self._locks(chain):
            for attempt in range(_ATTEMPTS):
                delay = min(0.001 * (attempt + 1), 0.05)
                try:
                    with self._engine.begin() as connection:
                        return self._append(connection, chain, fields)
                except (_LostRaceError, IntegrityError):
                    pass
                except DBAPIError as exc:
                    if not _busy(exc):
                        failures += 1
                        if not self._transient(exc) or failures > _TRANSIENT_ATTEMPTS:
                            raise StorageError(f"cannot append to the audit log: {exc}") from exc
                        delay = 0.05 * 2 ** (failures - 1)
                        logger.warning("audit append to chain %s retried: %s", chain, exc.orig)
                time.sleep(delay)
        raise StorageError(f"cannot append to the audit log: {_ATTEMPTS} attempts lost a race")

    def record(
        self,
        connection: Connection,
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
    ) -> Pending:
        """Write one event as pending in ``connection``'s transaction; its id and chain.

        The event commits or rolls back with the change it records (a
        transactional outbox); it enters its chain when :meth:`seal` takes
        it. Nothing shared is read or locked here: no head, no hash.
        """
        pending = self._pending_table()
        fields = _event_fields(
            action, actor, hospital, task, algorithm, algorithm_version, agreement,
            correlation_id, detail,
        )  # fmt: skip
        chain = self._chain_of(hospital)
        values = {**fields, "chain": chain, "at": now_iso(), "detail": _dumps(fields["detail"])}
        key = connection.execute(insert(pending).values(values)).inserted_primary_key
        assert key is not None
        return Pending(int(key[0]), chain)

    def pending(self) -> int:
        """How many committed events wait to be sealed into their chains."""
        pending = self._pending_table()
        with self._engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(pending)) or 0)

    def seal(self, ids: Iterable[Pending | int] | None = None, *, limit: int | None = None) -> int:
        """Append pending events to their chains, each exactly once; how many this call sealed.

        ``ids``: those events (the ones a process has just committed), in
        that order; None: every pending event in pending-id order (the
        janitor), at most ``limit``. Each event is claimed, deleted from the
        pending table and appended to its chain in one transaction: claimed
        ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (an event another sealer
        holds is skipped, and gone once it commits), under SQLite's one
        writer (the delete comes first and takes the write lock). An event
        already sealed by another process is skipped.
        """
        pending = self._pending_table()
        sealed = 0
        if ids is not None:
            for one in ids:
                sealed += self._seal_one(*(one if isinstance(one, Pending) else (one, None)))
            return sealed
        last = 0
        while limit is None or sealed < limit:
            batch = 500 if limit is None else min(500, limit - sealed)
            query = (
                select(pending.c.id, pending.c.chain)
                .where(pending.c.id > last)
                .order_by(pending.c.id)
                .limit(batch)
            )
            with self._engine.connect() as connection:
                found = [Pending(int(r.id), str(r.chain)) for r in connection.execute(query)]
            if not found:
                break
            for one in found:
                sealed += self._seal_one(*one)
            last = found[-1].id
        return sealed

    def _seal_one(self, pending_id: int, chain: str | None) -> int:
        """Seal one pending event; 1 if this call appended it, 0 if it was gone or taken."""
        if chain is None:
            pending = self._pending_table()
            with self._engine.connect() as connection:  # its chain, to lock before writing
                chain = connection.scalar(select(pending.c.chain).where(pending.c.id == pending_id))
            if chain is None:
                return 0
        with self._locks(str(chain)):
            return self._claim_and_append(pending_id)

    def _claim(self, connection: Connection, pending_id: int) -> Row[Any] | None:
        """Take the pending event off the table in this transaction; None: gone or taken.

        PostgreSQL: locked ``FOR UPDATE SKIP LOCKED`` (a row another sealer
        holds is skipped), then deleted. Elsewhere (SQLite) the ``DELETE ...
        RETURNING`` is the claim: it takes the one write lock before the head
        is read, and a sealer that lost finds the row gone.
        """
        pending = self._pending_table()
        one = pending.c.id == pending_id
        if connection.dialect.name != "postgresql":
            return connection.execute(delete(pending).where(one).returning(*pending.c)).first()
        row = connection.execute(select(pending).where(one).with_for_update(skip_locked=True))
        claimed = row.first()
        if claimed is None or connection.execute(delete(pending).where(one)).rowcount != 1:
            return None
        return claimed

    def _claim_and_append(self, pending_id: int) -> int:
        failures = 0
        for attempt in range(_ATTEMPTS):
            delay = min(0.001 * (attempt + 1), 0.05)
            try:
                with self._engine.begin() as connection:
                    row = self._claim(connection, pending_id)
                    if row is None:
                        return 0
                    fields = {k: v for k, v in row._mapping.items() if k not in ("id", "chain")}
                    fields["detail"] = _loads(fields["detail"])
                    self._append(connection, str(row.chain), fields)
                    return 1
            except (_LostRaceError, IntegrityError):
                pass
            except DBAPIError as exc:
                if not _busy(exc):
                    failures += 1
                    if not self._transient(exc) or failures > _TRANSIENT_ATTEMPTS:
                        raise StorageError(f"cannot seal audit events: {exc}") from exc
                    delay = 0.05 * 2 ** (failures - 1)
                    logger.warning("sealing audit event %d retried: %s", pending_id, exc.orig)
            time.sleep(delay)
        raise StorageError(f"cannot seal audit events: {_ATTEMPTS} attempts lost a race")

    def _pending_table(self) -> Table:
        if self._tables.pending is None:
            raise StorageError("this audit store keeps no pending events")
        return self._tables.pending

    def _append(self, connection: Connection, chain: str, fields: dict[str, Any]) -> AuditEvent:
        statements = _statements(self._tables)
        current = connection.execute(statements.lock_head, {"chain": chain}).first()
        if current is None:  # a new chain; a writer opening it too makes one of us retry
            connection.execute(statements.open_head, {"chain": chain, "seq": 0, "hash": GENESIS})
            if self._root is not None and chain != self._root:
                opening = {**fields, "action": CHAIN_OPENED, "hospital": None, "task": None}
                opening.pop("at", None)
                opening.update(algorithm=None, algorithm_version=None, agreement=None)
                self._append(connection, self._root, {**opening, "detail": {"chain": chain}})
            last = Head(0, GENESIS)
        else:
            last = Head(int(current.seq), str(current.hash))
        at = fields.pop("at", None) or now_iso()  # a pending event keeps the time of its change
        draft = AuditEvent(seq=last.seq + 1, at=at, chain=chain, prev_hash=last.hash, **fields)
        event = AuditEvent(**{**_fields_of(draft), "hash": chain_hash(last.hash, draft.body())})
        connection.execute(statements.insert_event, _row_values(event))
        moved = connection.execute(
            statements.move_head,
            {"b_chain": chain, "b_seq": last.seq, "b_new_seq": event.seq, "b_hash": event.hash},
        )
        if moved.rowcount != 1:
            raise _LostRaceError
        return event

    def heads(self) -> dict[str, Head]:
        """The recorded last event of every chain, by chain name."""
        head = self._tables.head
        try:
            with self._engine.connect() as connection:
                rows = list(connection.execute(select(head.c.chain, head.c.seq, head.c.hash)))
        except SQLAlchemyError as exc:
            raise StorageError(
                f"cannot read the audit log ({type(exc).__name__}); "
                "is this an aifi database with an audit trail?"
            ) from exc
        return {str(r.chain): Head(int(r.seq), str(r.hash)) for r in rows}

    def head(self) -> Head | None:
        """The trail's head (None before the first append).

        For one chain, its last event; for several, ``seq`` counts the events
        of all chains and ``hash`` is SHA-256 over every chain's name, last
        sequence number and hash: one value an auditor can note down and
        compare later (:func:`seal_of`).
        """
        heads = self.heads()
        if not heads:
            return None
        if set(heads) == {MAIN}:
            return heads[MAIN]
        return seal_of(heads)

    def events(
        self,
        *,
        chain: str | None = None,
        hospital: str | None = None,
        action: str | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> Iterator[AuditEvent]:
        """Events, optionally of one chain, one hospital or one action.

        One chain (or a store of one chain) in chain order; several in the
        order they were recorded (time, then chain and sequence number).
        ``after_seq`` pages on within a chain.
        """
        events = self._tables.events
        query = select(events).where(events.c.seq > after_seq)
        if chain is not None:
            query = query.where(events.c.chain == chain)
        if hospital is not None:
            query = query.where(events.c.hospital == hospital)
        if action is not None:
            query = query.where(events.c.action == action)
        if chain is not None or self._chain_of is one_chain:
            query = query.order_by(events.c.chain, events.c.seq)
        else:
            query = query.order_by(events.c.at, events.c.chain, events.c.seq)
        if limit is not None:
            query = query.limit(limit)
        with self._engine.connect() as connection:
            for row in connection.execution_options(yield_per=2000).execute(query):
                yield _event_of(row)

    def count(self) -> int:
        """How many events the chains' heads record."""
        return sum(h.seq for h in self.heads().values())

    def verify(self) -> list[str]:
        """Problems in every stored chain (see :func:`aifi.audit.chain.verify_chain`).

        Each chain is checked on its own against its head; with a ``root``
        chain, every chain must be recorded as opened there and every chain
        recorded there must still exist. Safe while others append: the heads
        are read first and each chain is checked up to its head; events past
        it, or a chain without a head, are problems only if the heads read
        again at the end still do not cover them.
        """
        events = self._tables.events
        try:
            heads = self.heads()
            problems: list[str] = []
            seen: set[str] = set()
            beyond: dict[str, int] = {}  # chain: its last event past the head first read
            opened: dict[str, int] = {}
            query = select(events).order_by(events.c.chain, events.c.seq)
            with self._engine.connect() as connection:
                rows = connection.execution_options(yield_per=2000).execute(query)
                for chain, group in itertools.groupby(rows, key=lambda r: str(r.chain)):
                    seen.add(chain)
                    head = heads.get(chain, Head(0, GENESIS))
                    chained = _up_to(head.seq, (_event_of(r) for r in group), chain, beyond)
                    if chain == self._root:
                        chained = _noting_opened(chained, opened)
                    if chain in heads:
                        problems += verify_chain(chained, head, chain=chain)
                    else:
                        _drain(chained)
            again = self.heads() if beyond else heads
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot read the audit log: {exc}") from exc
        for chain in sorted(set(heads) - seen):  # every event of the chain deleted
            problems += verify_chain([], heads[chain], chain=chain)
        for chain, last in sorted(beyond.items()):
            recorded = again.get(chain, Head(0, GENESIS)).seq
            if chain not in heads and chain not in again:
                problems.append(f"chain {chain} has events 1..{last} but no recorded head")
            elif last > recorded:
                first = heads[chain].seq + 1 if chain in heads else 1
                problems.append(
                    _named(chain, f"events {max(first, recorded + 1)}..{last} are recorded "
                           f"after the chain's head (event {recorded}); the head was altered")
                )  # fmt: skip
        if self._root is not None:
            for chain, seq in sorted(opened.items()):
                if chain not in heads:
                    problems.append(
                        f"chain {chain}, opened at event {seq} of chain {self._root}, is missing "
                        "(deleted with its head)"
                    )
            for chain in sorted(set(heads) - set(opened) - {self._root, MAIN}):
                problems.append(f"chain {chain} is not recorded as opened in chain {self._root}")
        return problems

    def export_jsonl(
        self, fp: IO[str], *, hospital: str | None = None, chain: str | None = None
    ) -> int:
        """Write the events as JSON lines, chain after chain; how many were written."""
        count = 0
        events = self._tables.events
        query = select(events).order_by(events.c.chain, events.c.seq)
        if hospital is not None:
            query = query.where(events.c.hospital == hospital)
        if chain is not None:
            query = query.where(events.c.chain == chain)
        with self._engine.connect() as connection:
            for row in connection.execution_options(yield_per=2000).execute(query):
                event = _event_of(row)
                fp.write(json.dumps(event.as_json(), sort_keys=True, ensure_ascii=False) + "\n")
                count += 1
        return count


@dataclass(frozen=True)
class _Statements:
    """An append's four statements, built once per set of tables (values bound per call)."""

    lock_head: Select[Any]
    open_head: Insert
    insert_event: Insert
    move_head: Update


@functools.cache
def _statements(tables: AuditTables) -> _Statements:
    head = tables.head
    return _Statements(
        lock_head=select(head.c.seq, head.c.hash)
        .where(head.c.chain == bindparam("chain"))
        .with_for_update(),
        open_head=insert(head),
        insert_event=insert(tables.events),
        move_head=update(head)
        .where(head.c.chain == bindparam("b_chain"), head.c.seq == bindparam("b_seq"))
        .values(seq=bindparam("b_new_seq"), hash=bindparam("b_hash")),
    )


def seal_of(heads: Mapping[str, Head]) -> Head:
    """The heads of several chains as one: events counted, SHA-256 over every chain's head."""
    lines = "".join(f"{name}\t{h.seq}\t{h.hash}\n" for name, h in sorted(heads.items()))
    return Head(
        sum(h.seq for h in heads.values()), hashlib.sha256(lines.encode("utf-8")).hexdigest()
    )


def _up_to(
    last: int, events: Iterator[AuditEvent], chain: str, beyond: dict[str, int]
) -> Iterator[AuditEvent]:
    """The events up to sequence number ``last``; the last one past it noted in ``beyond``."""
    for event in events:
        if event.seq > last:
            beyond[chain] = event.seq
        else:
            yield event


def _drain(events: Iterator[AuditEvent]) -> None:
    for _event in events:
        pass


def _named(chain: str, problem: str) -> str:
    return problem if chain == MAIN else f"chain {chain}: {problem}"


def _noting_opened(events: Iterator[AuditEvent], opened: dict[str, int]) -> Iterator[AuditEvent]:
    for event in events:
        if event.action == CHAIN_OPENED and isinstance(event.detail.get("chain"), str):
            opened[event.detail["chain"]] = event.seq
        yield event


def _event_fields(
    action: str,
    actor: str,
    hospital: str | None,
    task: str | None,
    algorithm: str | None,
    algorithm_version: str | None,
    agreement: str | None,
    correlation_id: str | None,
    detail: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What the caller of :meth:`SqlAuditLog.append` or ``record`` says of one event.

    The same fields whether the event is appended at once or written as
    pending; ``detail`` is copied into a plain dict.
    """
    return {
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


def _dumps(detail: Mapping[str, Any]) -> str:
    """``detail`` as its column holds it: JSON text, keys sorted."""
    return json.dumps(detail, sort_keys=True, ensure_ascii=False)


def _loads(stored: Any) -> dict[str, Any]:
    """A stored ``detail`` read back; text that is not JSON is kept as ``unreadable``."""
    try:
        detail: dict[str, Any] = json.loads(stored)
    except (TypeError, ValueError):
        return {"unreadable": str(stored)}
    return detail


def _fields_of(event: AuditEvent) -> dict[str, Any]:
    return {**event.body(), "chain": event.chain, "prev_hash": event.prev_hash, "hash": event.hash}


def _row_values(event: AuditEvent) -> dict[str, Any]:
    values = _fields_of(event)
    values["detail"] = _dumps(values["detail"])
    return values


def _event_of(row: Row[Any]) -> AuditEvent:
    values = dict(row._mapping)
    values["detail"] = _loads(values["detail"])
    return AuditEvent(**values)
