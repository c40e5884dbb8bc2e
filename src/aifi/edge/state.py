"""The edge's durable state: received instances, studies, tasks, deliveries.

One SQLite file in WAL mode under the data folder, one connection per
thread. Everything the edge must not lose (an instance answered with
success, a task not yet confirmed by the hub, a result not yet in PACS) is
a row here before it is acknowledged to anyone.

Edge task states extend the Unified Procedure Step states the hub reports:

    pending → ready → submitted → SCHEDULED / IN PROGRESS → COMPLETED → delivered
                                                          └→ CANCELED (reason)
    failed (reason)  — the edge itself could not send it (refused by the hub, ...)
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aifi.audit import SqliteAuditLog
from aifi.edge.sealed import ColumnSeal

__all__ = [
    "DEAD_LETTER",
    "FINAL_STATES",
    "OPEN_STATES",
    "EdgeState",
    "InstanceRow",
    "PeerContact",
    "TaskRow",
]

# One log line per recorded step, with the task id as correlation id.
_event_log = logging.getLogger("aifi.edge.events")
# Steps whose callers already log a line of their own (not logged twice).
_LOGGED_BY_CALLER = frozenset(
    {"task-delivered", "delivery-failed", "dead-letter", "urgent-notified", "release-held"}
)
# A successful contact with a peer is written at most this often (the hub is polled 4x/s).
_CONTACT_WRITE_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    calling_aet TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_instance_uid);
CREATE TABLE IF NOT EXISTS series (
    series_instance_uid TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    attrs TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS studies (
    study_instance_uid TEXT PRIMARY KEY,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    dispatched INTEGER NOT NULL DEFAULT 0,
    dispatched_at REAL
);
CREATE INDEX IF NOT EXISTS studies_pending ON studies(dispatched, last_received_at);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    algorithm_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    hub_task_id TEXT,
    pseudo_study_uid TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    verified INTEGER,
    verification TEXT,
    urgent INTEGER NOT NULL DEFAULT 0,
    last_instance_at REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state, next_attempt_at);
CREATE TABLE IF NOT EXISTS task_instances (
    task_id TEXT NOT NULL REFERENCES tasks(id),
    sop_instance_uid TEXT NOT NULL REFERENCES instances(sop_instance_uid),
    pseudo_sop_instance_uid TEXT,
    pixel_digest TEXT,
    PRIMARY KEY (task_id, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS task_instances_sop ON task_instances(sop_instance_uid);
CREATE TABLE IF NOT EXISTS deliveries (
    task_id TEXT NOT NULL REFERENCES tasks(id),
    result_sop_instance_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (task_id, result_sop_instance_uid)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    task_id TEXT,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS purged_instances (
    sop_instance_uid TEXT PRIMARY KEY REFERENCES instances(sop_instance_uid),
    purged_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS purged_tasks (
    task_id TEXT PRIMARY KEY REFERENCES tasks(id),
    purged_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_instance_uid TEXT NOT NULL,
    algorithm_id TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at REAL NOT NULL,
    priority TEXT NOT NULL DEFAULT 'MEDIUM',
    prior_study_uids TEXT NOT NULL DEFAULT '[]',
    task_id TEXT
);
CREATE INDEX IF NOT EXISTS requests_open ON requests(study_instance_uid, task_id);
CREATE TABLE IF NOT EXISTS workitems (
    uid TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    algorithm_id TEXT NOT NULL,
    priority TEXT NOT NULL,
    request_id INTEGER,
    task_id TEXT,
    state TEXT,
    transaction_uid TEXT,
    cancel_reason TEXT,
    dataset TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ups_subscribers (
    workitem_uid TEXT NOT NULL,
    aet TEXT NOT NULL,
    PRIMARY KEY (workitem_uid, aet)
);
CREATE TABLE IF NOT EXISTS peer_contacts (
    peer TEXT PRIMARY KEY,
    last_success_at REAL,
    last_success TEXT,
    last_error_at REAL,
    last_error TEXT,
    errors INTEGER NOT NULL DEFAULT 0
);
"""

# States in which the edge still has work to do for a task.
OPEN_STATES = ("pending", "ready", "submitted", "SCHEDULED", "IN PROGRESS", "COMPLETED")
FINAL_STATES = ("delivered", "CANCELED", "failed", "discarded")
# Delivery gave up after its attempt limit or age: waits for `aifi edge retry` or `discard`.
DEAD_LETTER = "dead-letter"

# Columns added after the first release: (table, column, declaration).
_ADDED_COLUMNS = (
    ("tasks", "notification", "TEXT"),
    ("tasks", "first_failure_at", "REAL"),
    # queue order: 0 HIGH (urgent, stat), 1 MEDIUM (routine), 2 LOW (aifi.protocol PRIORITY_RANK)
    ("tasks", "priority", "INTEGER NOT NULL DEFAULT 1"),
)


@dataclass(frozen=True)
class InstanceRow:
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    size: int


@dataclass(frozen=True)
class PeerContact:
    """The last success and the last error talking to one peer (hub, PACS, RIS, FHIR)."""

    peer: str
    last_success_at: float | None
    last_success: str | None
    last_error_at: float | None
    last_error: str | None
    errors: int

    @property
    def up(self) -> bool:
        """Whether the last contact succeeded."""
        return self.last_success_at is not None and (
            self.last_error_at is None or self.last_success_at >= self.last_error_at
        )


@dataclass(frozen=True)
class TaskRow:
    id: str
    study_instance_uid: str
    algorithm_id: str
    rule: str
    state: str
    reason: str | None
    hub_task_id: str | None
    pseudo_study_uid: str | None
    attempts: int
    next_attempt_at: float
    verified: bool | None
    verification: str | None
    urgent: bool
    last_instance_at: float
    created_at: float
    updated_at: float
    delivered_at: float | None
    notification: str | None = None
    first_failure_at: float | None = None
    priority: int = 1


class EdgeState:
    """Thread-safe access to the edge's SQLite state."""

    def __init__(
        self, path: Path, *, hospital: str | None = None, key: bytes | None = None
    ) -> None:
        """``key`` (the hospital's) seals the identity-bearing columns (:mod:`aifi.edge.sealed`)."""
        self.path = path
        self.hospital = hospital
        self._seal = ColumnSeal(key) if key is not None else None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._contact_written: dict[str, float] = {}
        self._conn().executescript(_SCHEMA)
        self._add_columns()
        # The hash-chained audit trail (issue 4) lives in its own file so its
        # writes never wait on the per-instance writes of the listener.
        self.audit = SqliteAuditLog(path.with_name("audit.db"))

    def _add_columns(self) -> None:
        """Bring a state file of an earlier release up to this schema (additive only)."""
        db = self._conn()
        for table, column, declaration in _ADDED_COLUMNS:
            have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def _sealed(self, value: str) -> str:
        """``value`` sealed when the state has a key (opened again by the row factory)."""
        return self._seal.seal(value) if self._seal is not None else value

    # -- connections -------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = self._seal.row_factory if self._seal else sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        self.audit.close()

    # -- receive -----------------------------------------------------------
    def has_instance(self, sop_instance_uid: str) -> bool:
        row = (
            self._conn()
            .execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid=? AND NOT EXISTS"
                " (SELECT 1 FROM purged_instances p WHERE p.sop_instance_uid=?)",
                (sop_instance_uid, sop_instance_uid),
            )
            .fetchone()
        )
        return row is not None

    def add_instance(
        self, row: InstanceRow, calling_aet: str, series_attrs: dict[str, Any]
    ) -> bool:
        """Record a stored instance; False when its SOP Instance UID was already known.

        Committed with ``synchronous=FULL`` (:meth:`_make_durable`): the
        listener answers success right after this returns.
        """
        now = time.time()
        self._make_durable()
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO instances VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    row.sop_instance_uid,
                    row.study_instance_uid,
                    row.series_instance_uid,
                    row.sop_class_uid,
                    row.transfer_syntax_uid,
                    str(row.path),
                    row.size,
                    calling_aet,
                    now,
                ),
            )
            if (
                cur.rowcount == 0
                and not _received_again(db, row, calling_aet, now)
                and not _resent_after_failure(db, row, calling_aet, now)
            ):
                return False
            db.execute(
                "INSERT OR IGNORE INTO series VALUES (?,?,?)",
                (
                    row.series_instance_uid,
                    row.study_instance_uid,
                    self._sealed(json.dumps(_reduced(series_attrs))),
                ),
            )
            db.execute(
                "INSERT INTO studies (study_instance_uid, first_received_at, last_received_at)"
                " VALUES (?,?,?) ON CONFLICT(study_instance_uid) DO UPDATE SET"
                " last_received_at=excluded.last_received_at, dispatched=0",
                (row.study_instance_uid, now, now),
            )
        return True

    def _make_durable(self) -> None:
        """This thread's commits are on disk when they return (``PRAGMA synchronous=FULL``).

        In WAL mode ``NORMAL`` syncs the log only at checkpoints, so a power
        cut can undo commits that already returned; the listener answers a
        C-STORE with success only for an instance it has stored (PS3.4
        B.2.3), so the commit of its row must survive one.
        """
        conn = self._conn()
        if getattr(self._local, "durable", None) is not conn:
            conn.execute("PRAGMA synchronous=FULL")
            self._local.durable = conn

    def receiving_paused(self) -> dict[str, Any] | None:
        """The listener's last ``receive-paused`` event, unless a ``receive-resumed`` followed."""
        row = (
            self._conn()
            .execute(
                "SELECT * FROM events WHERE kind IN ('receive-paused', 'receive-resumed')"
                " ORDER BY id DESC LIMIT 1"
            )
            .fetchone()
        )
        return dict(row) if row is not None and row["kind"] == "receive-paused" else None

    def record_event(self, kind: str, detail: str, task_id: str | None = None) -> None:
        """An explained outcome worth keeping (a refusal, a retry, a step done).

        Also appended to the audit chain, with the task's algorithm and the
        task id as correlation id (the same id the hub records for it).
        Details name pseudonymous or local identifiers, never the patient.
        """
        with self._tx() as db:
            db.execute(
                "INSERT INTO events (at, kind, task_id, detail) VALUES (?,?,?,?)",
                (time.time(), kind, task_id, detail),
            )
        if kind not in _LOGGED_BY_CALLER:
            where = f"task {task_id}: " if task_id else ""
            _event_log.info("%s%s: %s", where, kind, detail, extra={"task_id": task_id})
        algorithm = None
        if task_id is not None:
            row = (
                self._conn()
                .execute("SELECT algorithm_id FROM tasks WHERE id=?", (task_id,))
                .fetchone()
            )
            algorithm = row[0] if row else None
        self.audit.append(
            kind,
            actor="edge",
            hospital=self.hospital,
            task=task_id,
            algorithm=algorithm,
            correlation_id=task_id,
            detail={"detail": detail},
        )

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM events" + (" WHERE kind=?" if kind else "") + " ORDER BY id"
        rows = self._conn().execute(sql, (kind,) if kind else ()).fetchall()
        return [dict(r) for r in rows]

    # -- assemble ----------------------------------------------------------
    def stable_studies(self, quiet_period_s: float) -> list[str]:
        """Studies that received something and then nothing for the quiet period."""
        cutoff = time.time() - quiet_period_s
        rows = (
            self._conn()
            .execute(
                "SELECT study_instance_uid FROM studies WHERE dispatched=0 AND last_received_at<=?",
                (cutoff,),
            )
            .fetchall()
        )
        return [r[0] for r in rows]

    def undispatched_studies(self) -> list[str]:
        """Studies still receiving or waiting for their quiet period."""
        rows = (
            self._conn()
            .execute("SELECT study_instance_uid FROM studies WHERE dispatched=0")
            .fetchall()
        )
        return [r[0] for r in rows]

    def series_of(self, study_instance_uid: str) -> dict[str, dict[str, Any]]:
        rows = (
            self._conn()
            .execute(
                "SELECT series_instance_uid, attrs FROM series WHERE study_instance_uid=?",
                (study_instance_uid,),
            )
            .fetchall()
        )
        return {r[0]: json.loads(r[1]) for r in rows}

    def instances(
        self, study_instance_uid: str, series: Sequence[str] | None = None
    ) -> list[InstanceRow]:
        rows = (
            self._conn()
            .execute(
                "SELECT * FROM instances i WHERE study_instance_uid=? AND NOT EXISTS (SELECT 1"
                " FROM purged_instances p WHERE p.sop_instance_uid=i.sop_instance_uid)"
                " ORDER BY series_instance_uid, received_at",
                (study_instance_uid,),
            )
            .fetchall()
        )
        wanted = set(series) if series is not None else None
        return [_instance(r) for r in rows if wanted is None or r["series_instance_uid"] in wanted]

    def instance(self, sop_instance_uid: str) -> InstanceRow | None:
        r = (
            self._conn()
            .execute("SELECT * FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,))
            .fetchone()
        )
        return _instance(r) if r else None

    def series_with_instances_outside_tasks(
        self, study_instance_uid: str, algorithm_id: str
    ) -> set[str]:
        """Series holding instances that no task for this algorithm has taken yet.

        An instance held only by tasks that ended badly (failed, CANCELED,
        discarded) counts as not taken: the study sent again starts anew.
        """
        rows = (
            self._conn()
            .execute(
                "SELECT DISTINCT i.series_instance_uid FROM instances i"
                " WHERE i.study_instance_uid=? AND NOT EXISTS (SELECT 1 FROM task_instances ti"
                " JOIN tasks t ON t.id=ti.task_id"
                " WHERE ti.sop_instance_uid=i.sop_instance_uid AND t.algorithm_id=?"
                f" AND t.state NOT IN ({_ENDED_BADLY_SQL}))",
                (study_instance_uid, algorithm_id),
            )
            .fetchall()
        )
        return {r[0] for r in rows}

    def create_task(
        self,
        study_instance_uid: str,
        algorithm_id: str,
        rule: str,
        sop_instance_uids: Sequence[str],
        last_instance_at: float,
        *,
        priority: int = 1,
    ) -> str:
        """A pending task; ``priority`` orders the outbox (0 urgent/stat goes first)."""
        task_id = uuid.uuid4().hex
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO tasks (id, study_instance_uid, algorithm_id, rule, state,"
                " last_instance_at, created_at, updated_at, priority) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    task_id,
                    study_instance_uid,
                    algorithm_id,
                    rule,
                    "pending",
                    last_instance_at,
                    now,
                    now,
                    priority,
                ),
            )
            db.executemany(
                "INSERT INTO task_instances (task_id, sop_instance_uid) VALUES (?,?)",
                [(task_id, uid) for uid in sop_instance_uids],
            )
        return task_id

    # -- requests (pull on demand) -----------------------------------------
    def add_request(
        self,
        study_instance_uid: str,
        algorithm_id: str,
        requested_by: str,
        *,
        priority: str = "MEDIUM",
        prior_study_uids: Sequence[str] = (),
    ) -> int:
        """Ask for ``algorithm_id`` on a study whatever the routing rules say.

        Another process (``aifi edge request``) writes it; the running edge's
        assembler reads it when the study is stable. A study the edge already
        closed is re-opened so the assembler looks at it again.
        """
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO requests (study_instance_uid, algorithm_id, requested_by,"
                " requested_at, priority, prior_study_uids) VALUES (?,?,?,?,?,?)",
                (
                    study_instance_uid,
                    algorithm_id,
                    requested_by,
                    now,
                    priority,
                    json.dumps(list(prior_study_uids)),
                ),
            )
            db.execute(
                "UPDATE studies SET dispatched=0 WHERE study_instance_uid=?", (study_instance_uid,)
            )
        return int(cur.lastrowid or 0)

    def open_requests(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """The requests for a study that no task answers yet, oldest first."""
        rows = (
            self._conn()
            .execute(
                "SELECT * FROM requests WHERE study_instance_uid=? AND task_id IS NULL ORDER BY id",
                (study_instance_uid,),
            )
            .fetchall()
        )
        found = [dict(r) for r in rows]
        for r in found:
            r["prior_study_uids"] = json.loads(r["prior_study_uids"])
        return found

    def fulfil_request(self, request_id: int, task_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE requests SET task_id=? WHERE id=?", (task_id, request_id))
            # the request's priority (a workitem's HIGH) orders the outbox from now on
            db.execute(
                "UPDATE tasks SET priority=MIN(priority, (SELECT CASE priority WHEN 'HIGH' THEN 0"
                " WHEN 'LOW' THEN 2 ELSE 1 END FROM requests WHERE id=?)) WHERE id=?",
                (request_id, task_id),
            )

    def has_task(self, study_instance_uid: str, algorithm_id: str) -> bool:
        row = (
            self._conn()
            .execute(
                "SELECT 1 FROM tasks WHERE study_instance_uid=? AND algorithm_id=?"
                f" AND state NOT IN ({_ENDED_BADLY_SQL}) LIMIT 1",
                (study_instance_uid, algorithm_id),
            )
            .fetchone()
        )
        return row is not None

    def mark_dispatched(self, study_instance_uid: str, seen_last_received_at: float) -> None:
        """Close the study unless an instance arrived since it was judged stable."""
        with self._tx() as db:
            db.execute(
                "UPDATE studies SET dispatched=1, dispatched_at=? WHERE study_instance_uid=?"
                " AND last_received_at<=?",
                (time.time(), study_instance_uid, seen_last_received_at),
            )

    def restart_quiet_periods(self) -> int:
        """Start the quiet period again for every open study; return how many.

        Called when the edge starts: the time it was down is not quiet time
        (the sender may have been cut off mid-study), so a study interrupted by
        a crash waits a full quiet period of running time before it is stable.
        """
        with self._tx() as db:
            cur = db.execute(
                "UPDATE studies SET last_received_at=MAX(last_received_at, ?) WHERE dispatched=0",
                (time.time(),),
            )
        return cur.rowcount

    def last_received_at(self, study_instance_uid: str) -> float:
        row = (
            self._conn()
            .execute(
                "SELECT last_received_at FROM studies WHERE study_instance_uid=?",
                (study_instance_uid,),
            )
            .fetchone()
        )
        return float(row[0]) if row else 0.0

    # -- tasks -------------------------------------------------------------
    def task(self, task_id: str) -> TaskRow:
        r = self._conn().execute("SELECT * FROM tasks WHERE id=?", (task_id,)).fetchone()
        if r is None:
            raise KeyError(task_id)
        return _task(r)

    def tasks(self, states: Sequence[str] | None = None) -> list[TaskRow]:
        if states:
            marks = ",".join("?" * len(states))
            rows = (
                self._conn()
                .execute(
                    f"SELECT * FROM tasks WHERE state IN ({marks}) ORDER BY created_at",
                    tuple(states),
                )
                .fetchall()
            )
        else:
            rows = self._conn().execute("SELECT * FROM tasks ORDER BY created_at").fetchall()
        return [_task(r) for r in rows]

    def due_tasks(self, state: str) -> list[TaskRow]:
        rows = (
            self._conn()
            .execute(
                "SELECT * FROM tasks WHERE state=? AND next_attempt_at<=?"
                " ORDER BY priority, created_at",
                (state, time.time()),
            )
            .fetchall()
        )
        return [_task(r) for r in rows]

    def update_task(self, task_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        if fields.get("pseudo_study_uid"):
            fields["pseudo_study_uid"] = self._sealed(fields["pseudo_study_uid"])
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE tasks SET {cols} WHERE id=?", (*fields.values(), task_id))

    def task_events(self, task_id: str) -> list[dict[str, Any]]:
        """Every recorded event of one task, oldest first."""
        rows = (
            self._conn()
            .execute("SELECT * FROM events WHERE task_id=? ORDER BY id", (task_id,))
            .fetchall()
        )
        return [dict(r) for r in rows]

    def requeue_as_new_task(self, task_id: str) -> str:
        """A fresh task for the same study, algorithm and instances (after a failure)."""
        old = self.task(task_id)
        uids = [inst.sop_instance_uid for inst, _p, _d in self.task_instances(task_id)]
        return self.create_task(
            old.study_instance_uid, old.algorithm_id, old.rule, uids, old.last_instance_at
        )

    def task_instances(self, task_id: str) -> list[tuple[InstanceRow, str | None, str | None]]:
        rows = (
            self._conn()
            .execute(
                "SELECT i.*, ti.pseudo_sop_instance_uid, ti.pixel_digest FROM task_instances ti"
                " JOIN instances i ON i.sop_instance_uid=ti.sop_instance_uid WHERE ti.task_id=?"
                " ORDER BY i.series_instance_uid, i.received_at",
                (task_id,),
            )
            .fetchall()
        )
        return [(_instance(r), r["pseudo_sop_instance_uid"], r["pixel_digest"]) for r in rows]

    def set_task_instance(
        self, task_id: str, sop_instance_uid: str, pseudo_uid: str, digest: str | None
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE task_instances SET pseudo_sop_instance_uid=?, pixel_digest=?"
                " WHERE task_id=? AND sop_instance_uid=?",
                (self._sealed(pseudo_uid), digest, task_id, sop_instance_uid),
            )

    # -- retention ---------------------------------------------------------
    def expired_tasks(self, delivered_before: float, ended_before: float) -> list[TaskRow]:
        """Final tasks past their retention, not yet purged (delivered, or failed/canceled)."""
        ended = [s for s in FINAL_STATES if s != "delivered"]
        marks = ",".join("?" * len(ended))
        rows = (
            self._conn()
            .execute(
                "SELECT * FROM tasks t WHERE ((state='delivered' AND delivered_at<=?)"
                f" OR (state IN ({marks}) AND updated_at<=?)) AND NOT EXISTS"
                " (SELECT 1 FROM purged_tasks p WHERE p.task_id=t.id) ORDER BY created_at",
                (delivered_before, *ended, ended_before),
            )
            .fetchall()
        )
        return [_task(r) for r in rows]

    def purgeable_instances(
        self, delivered_before: float, ended_before: float, unrouted_before: float
    ) -> list[tuple[InstanceRow, str | None]]:
        """Received instances whose files may go, each with one expired task holding it.

        An instance goes when its study is not receiving (dispatched) and either
        every task holding it is past retention, or no task holds it and its
        study was dispatched before ``unrouted_before``. An instance still
        needed by an open task never goes.
        """
        ended = [s for s in FINAL_STATES if s != "delivered"]
        marks = ",".join("?" * len(ended))
        rows = (
            self._conn()
            .execute(
                "SELECT i.*, (SELECT MIN(ti.task_id) FROM task_instances ti"
                "  WHERE ti.sop_instance_uid=i.sop_instance_uid) AS task_id"
                " FROM instances i JOIN studies s ON s.study_instance_uid=i.study_instance_uid"
                " WHERE s.dispatched=1"
                " AND NOT EXISTS (SELECT 1 FROM purged_instances p"
                "  WHERE p.sop_instance_uid=i.sop_instance_uid)"
                " AND NOT EXISTS (SELECT 1 FROM task_instances ti JOIN tasks t ON t.id=ti.task_id"
                "  WHERE ti.sop_instance_uid=i.sop_instance_uid"
                "  AND NOT ((t.state='delivered' AND t.delivered_at<=?)"
                f"  OR (t.state IN ({marks}) AND t.updated_at<=?)))"
                " AND (task_id IS NOT NULL OR s.dispatched_at<=?)",
                (delivered_before, *ended, ended_before, unrouted_before),
            )
            .fetchall()
        )
        return [(_instance(r), r["task_id"]) for r in rows]

    def mark_purged(self, sop_instance_uids: Sequence[str], task_id: str | None = None) -> None:
        """Record that these instances' files (and the task's outbox copy) are gone."""
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO purged_instances VALUES (?,?)",
                [(uid, now) for uid in sop_instance_uids],
            )
            if task_id is not None:
                db.execute("INSERT OR IGNORE INTO purged_tasks VALUES (?,?)", (task_id, now))

    # -- deliveries --------------------------------------------------------
    def set_delivery(
        self,
        task_id: str,
        result_sop_instance_uid: str,
        kind: str,
        status: str,
        detail: str | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO deliveries VALUES (?,?,?,?,?,?) ON CONFLICT(task_id,"
                " result_sop_instance_uid) DO UPDATE SET status=excluded.status,"
                " detail=excluded.detail, updated_at=excluded.updated_at",
                (task_id, result_sop_instance_uid, kind, status, detail, time.time()),
            )

    def deliveries(self, task_id: str) -> dict[str, str]:
        rows = (
            self._conn()
            .execute(
                "SELECT result_sop_instance_uid, status FROM deliveries WHERE task_id=?", (task_id,)
            )
            .fetchall()
        )
        return {r[0]: r[1] for r in rows}

    # -- status: peers, counts (the status page, /metrics) ------------------
    def record_contact(self, peer: str, ok: bool, detail: str) -> None:
        """Remember the outcome of talking to ``peer``; an error is always written.

        A success is written when it follows an error or the last written one
        is older than a few seconds, so the hub's polling costs no write per
        request.
        """
        now = time.time()
        if ok:
            last = self._contact_written.get(peer)
            if last is not None and now - last < _CONTACT_WRITE_S:
                return
            self._contact_written[peer] = now
            sql = (
                "INSERT INTO peer_contacts (peer, last_success_at, last_success) VALUES (?,?,?)"
                " ON CONFLICT(peer) DO UPDATE SET last_success_at=excluded.last_success_at,"
                " last_success=excluded.last_success"
            )
        else:
            self._contact_written.pop(peer, None)
            sql = (
                "INSERT INTO peer_contacts (peer, last_error_at, last_error, errors)"
                " VALUES (?,?,?,1) ON CONFLICT(peer) DO UPDATE SET"
                " last_error_at=excluded.last_error_at, last_error=excluded.last_error,"
                " errors=errors+1"
            )
        with self._tx() as db:
            db.execute(sql, (peer, now, detail[:500]))

    def peer_contacts(self) -> list[PeerContact]:
        rows = self._conn().execute("SELECT * FROM peer_contacts ORDER BY peer").fetchall()
        return [
            PeerContact(
                peer=r["peer"],
                last_success_at=r["last_success_at"],
                last_success=r["last_success"],
                last_error_at=r["last_error_at"],
                last_error=r["last_error"],
                errors=int(r["errors"]),
            )
            for r in rows
        ]

    def state_counts(self) -> dict[str, int]:
        """Task state → how many tasks."""
        rows = self._conn().execute("SELECT state, COUNT(*) FROM tasks GROUP BY state")
        return {r[0]: int(r[1]) for r in rows.fetchall()}

    def open_tasks_by_priority(self) -> dict[str, int]:
        """HIGH / MEDIUM / LOW → how many tasks the edge still has work to do for."""
        marks = ",".join("?" * len(OPEN_STATES))
        rows = self._conn().execute(
            f"SELECT priority, COUNT(*) FROM tasks WHERE state IN ({marks}) GROUP BY priority",
            OPEN_STATES,
        )
        counts = {int(r[0]): int(r[1]) for r in rows.fetchall()}
        return {name: counts.get(rank, 0) for rank, name in enumerate(("HIGH", "MEDIUM", "LOW"))}

    def event_counts(self) -> dict[str, int]:
        """Event kind → how many were recorded."""
        rows = self._conn().execute("SELECT kind, COUNT(*) FROM events GROUP BY kind")
        return {r[0]: int(r[1]) for r in rows.fetchall()}

    def instance_count(self) -> int:
        """Instances ever received (a purged one counts; one sent again does not)."""
        return int(self._conn().execute("SELECT COUNT(*) FROM instances").fetchone()[0])

    def turnarounds(self) -> list[tuple[str, float]]:
        """(algorithm, seconds from the study's last instance to results in PACS) per delivery."""
        rows = self._conn().execute(
            "SELECT algorithm_id, delivered_at - last_instance_at FROM tasks"
            " WHERE state='delivered' AND delivered_at IS NOT NULL"
        )
        return [(r[0], float(r[1])) for r in rows.fetchall()]

    def deliveries_by_kind(self, task_id: str) -> dict[str, dict[str, int]]:
        """Result kind → delivery status → how many objects (``{"sr": {"stored": 1}}``)."""
        out: dict[str, dict[str, int]] = {}
        rows = self._conn().execute(
            "SELECT kind, status, COUNT(*) FROM deliveries WHERE task_id=? GROUP BY kind, status",
            (task_id,),
        )
        for kind, status, n in rows.fetchall():
            out.setdefault(kind, {})[status] = int(n)
        return out

    # -- UPS workitems (aifi.edge.ups): the Task Requester's view of tasks ----
    def add_workitem(
        self,
        uid: str,
        study_instance_uid: str,
        algorithm_id: str,
        priority: str,
        dataset: dict[str, Any],
        *,
        request_id: int | None = None,
        task_id: str | None = None,
    ) -> None:
        """Record a created workitem (PS3.4 CC.2.5); its dataset may name the patient: sealed."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO workitems (uid, study_instance_uid, algorithm_id, priority,"
                " request_id, task_id, dataset, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    uid,
                    self._sealed(study_instance_uid),
                    algorithm_id,
                    priority,
                    request_id,
                    task_id,
                    self._sealed(json.dumps(dataset)),
                    now,
                    now,
                ),
            )

    def workitem(self, uid: str) -> dict[str, Any] | None:
        """One workitem row (dataset parsed), or None."""
        row = self._conn().execute("SELECT * FROM workitems WHERE uid=?", (uid,)).fetchone()
        return _workitem(row) if row is not None else None

    def workitems(self) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT * FROM workitems ORDER BY created_at").fetchall()
        return [_workitem(r) for r in rows]

    def update_workitem(self, uid: str, **fields: Any) -> None:
        if "dataset" in fields:
            fields["dataset"] = self._sealed(json.dumps(fields["dataset"]))
        fields["updated_at"] = time.time()
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE workitems SET {cols} WHERE uid=?", (*fields.values(), uid))

    def request_task(self, request_id: int) -> str | None:
        """The task answering a request: its id, ``""`` when answered by an existing task."""
        row = (
            self._conn()
            .execute("SELECT task_id FROM requests WHERE id=?", (request_id,))
            .fetchone()
        )
        return None if row is None else row[0]

    def awaited_priors(self) -> set[str]:
        """Prior Study Instance UIDs a request pulled for a task not yet uploaded.

        The request's study not yet a task, or its task still pending or ready:
        the pseudonymize and upload stages will read them from disk.
        """
        rows = (
            self._conn()
            .execute(
                "SELECT r.prior_study_uids FROM requests r LEFT JOIN tasks t ON t.id=r.task_id"
                " WHERE r.prior_study_uids != '[]'"
                " AND (r.task_id IS NULL OR t.state IN ('pending', 'ready'))"
            )
            .fetchall()
        )
        return {uid for row in rows for uid in json.loads(row[0])}

    def pulled_as_prior(self, study_instance_uid: str) -> bool:
        """Whether any request pulled ``study_instance_uid`` as a prior of another study."""
        row = (
            self._conn()
            .execute(
                "SELECT 1 FROM requests WHERE prior_study_uids LIKE ? LIMIT 1",
                (f'%"{study_instance_uid}"%',),
            )
            .fetchone()
        )
        return row is not None

    def prior_studies(self, task_id: str) -> list[str]:
        """The prior Study Instance UIDs the requests answered by ``task_id`` pulled, in order."""
        rows = (
            self._conn()
            .execute(
                "SELECT prior_study_uids FROM requests WHERE task_id=? ORDER BY id", (task_id,)
            )
            .fetchall()
        )
        found: list[str] = []
        for row in rows:
            found.extend(uid for uid in json.loads(row[0]) if uid not in found)
        return found

    def latest_task(self, study_instance_uid: str, algorithm_id: str) -> str | None:
        row = (
            self._conn()
            .execute(
                "SELECT id FROM tasks WHERE study_instance_uid=? AND algorithm_id=?"
                " ORDER BY created_at DESC LIMIT 1",
                (study_instance_uid, algorithm_id),
            )
            .fetchone()
        )
        return None if row is None else str(row[0])

    def set_subscription(self, workitem_uid: str, aet: str, subscribed: bool) -> None:
        """Subscribe (or not) ``aet`` to a workitem's events; ``"*"``: every workitem."""
        with self._tx() as db:
            if subscribed:
                db.execute(
                    "INSERT OR IGNORE INTO ups_subscribers VALUES (?,?)", (workitem_uid, aet)
                )
            else:
                db.execute(
                    "DELETE FROM ups_subscribers WHERE workitem_uid=? AND aet=?",
                    (workitem_uid, aet),
                )

    def subscribed_workitems(self, aet: str) -> tuple[bool, set[str]]:
        """(subscribed globally, the workitems ``aet`` subscribed to one by one)."""
        rows = (
            self._conn()
            .execute("SELECT workitem_uid FROM ups_subscribers WHERE aet=?", (aet,))
            .fetchall()
        )
        uids = {r[0] for r in rows}
        return "*" in uids, uids - {"*"}

    def study_with_accession(self, accession_number: str) -> str | None:
        """The held study with this Accession Number, read from one instance header per study."""
        import pydicom

        rows = (
            self._conn()
            .execute(
                "SELECT study_instance_uid, MIN(path) FROM instances i WHERE NOT EXISTS"
                " (SELECT 1 FROM purged_instances p WHERE p.sop_instance_uid=i.sop_instance_uid)"
                " GROUP BY study_instance_uid"
            )
            .fetchall()
        )
        for study_uid, path in rows:
            try:
                ds = pydicom.dcmread(
                    path, stop_before_pixels=True, specific_tags=["AccessionNumber"]
                )
            except (OSError, ValueError):
                continue
            if str(ds.get("AccessionNumber", "")).strip() == accession_number:
                return str(study_uid)
        return None


# Task states after which a study sent again is processed again.
ENDED_BADLY = ("failed", "CANCELED", "discarded")
_ENDED_BADLY_SQL = ",".join(f"'{s}'" for s in ENDED_BADLY)


def _resent_after_failure(
    db: sqlite3.Connection, row: InstanceRow, calling_aet: str, now: float
) -> bool:
    """An instance sent again after every task holding it ended badly is received again.

    The PACS administrator's way to redo failed work is to send the study
    again; the study then re-opens and, once stable, becomes a new task.
    """
    held = db.execute(
        "SELECT t.state FROM task_instances ti JOIN tasks t ON t.id=ti.task_id"
        " WHERE ti.sop_instance_uid=?",
        (row.sop_instance_uid,),
    ).fetchall()
    if not held or any(r[0] not in ENDED_BADLY for r in held):
        return False
    db.execute(
        "UPDATE instances SET path=?, size=?, calling_aet=?, received_at=?"
        " WHERE sop_instance_uid=?",
        (str(row.path), row.size, calling_aet, now, row.sop_instance_uid),
    )
    return True


def _received_again(db: sqlite3.Connection, row: InstanceRow, calling_aet: str, now: float) -> bool:
    """A purged instance sent again is received again: its file is back on disk."""
    cur = db.execute(
        "DELETE FROM purged_instances WHERE sop_instance_uid=?", (row.sop_instance_uid,)
    )
    if cur.rowcount == 0:
        return False
    db.execute(
        "UPDATE instances SET path=?, size=?, calling_aet=?, received_at=?"
        " WHERE sop_instance_uid=?",
        (str(row.path), row.size, calling_aet, now, row.sop_instance_uid),
    )
    return True


def _reduced(attrs: dict[str, Any]) -> dict[str, Any]:
    """Routing attributes without the birth date: the age at the study is what rules need."""
    if "PatientBirthDate" not in attrs:
        return attrs
    from aifi.edge.rules import age_in_years

    reduced = {k: v for k, v in attrs.items() if k != "PatientBirthDate"}
    years = age_in_years(attrs)
    if years is not None and years >= 0 and not str(attrs.get("PatientAge") or "").strip():
        days = round(years * 365.25)
        if days <= 999:
            reduced["PatientAge"] = f"{days:03d}D"
        elif years * 12 <= 999:
            reduced["PatientAge"] = f"{int(years * 12):03d}M"
        else:
            reduced["PatientAge"] = f"{min(int(years), 999):03d}Y"
    return reduced


def _instance(r: sqlite3.Row) -> InstanceRow:
    return InstanceRow(
        sop_instance_uid=r["sop_instance_uid"],
        study_instance_uid=r["study_instance_uid"],
        series_instance_uid=r["series_instance_uid"],
        sop_class_uid=r["sop_class_uid"],
        transfer_syntax_uid=r["transfer_syntax_uid"],
        path=Path(r["path"]),
        size=int(r["size"]),
    )


def _task(r: sqlite3.Row) -> TaskRow:
    return TaskRow(
        id=r["id"],
        study_instance_uid=r["study_instance_uid"],
        algorithm_id=r["algorithm_id"],
        rule=r["rule"],
        state=r["state"],
        reason=r["reason"],
        hub_task_id=r["hub_task_id"],
        pseudo_study_uid=r["pseudo_study_uid"],
        attempts=int(r["attempts"]),
        next_attempt_at=float(r["next_attempt_at"]),
        verified=None if r["verified"] is None else bool(r["verified"]),
        verification=r["verification"],
        urgent=bool(r["urgent"]),
        last_instance_at=float(r["last_instance_at"]),
        created_at=float(r["created_at"]),
        updated_at=float(r["updated_at"]),
        delivered_at=r["delivered_at"],
        notification=r["notification"],
        first_failure_at=r["first_failure_at"],
        priority=int(r["priority"]),
    )


def _workitem(r: sqlite3.Row) -> dict[str, Any]:
    found = dict(zip(r.keys(), r, strict=True))
    found["dataset"] = json.loads(found["dataset"])
    return found
