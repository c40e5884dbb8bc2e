"""Query plans at national scale: the purge and the task listings on a million instance rows.

Run::

    .venv/bin/python bench/db_plans.py [--instances 1000000] [--timeout-s 120]

A throwaway PostgreSQL cluster (Debian's binaries, the tests' harness in
``tests/peers/postgres.py``) gets the hub's schema (Alembic head) and is
filled server-side with ``generate_series`` (no rows travel from Python):
two hospitals, one task per four instances, spread over 30 days; tasks
older than a day acknowledged and their images purged, as retention
leaves them, the last day's still stored; one result per task.

Then the hub's own queries, captured as SQLAlchemy sends them
(``before_cursor_execute``), are planned and timed with ``EXPLAIN (ANALYZE,
BUFFERS)``:

* the retention purge's image query (:func:`aifi.hub.retention.images_to_purge`)
  and result query (:func:`aifi.hub.retention.results_to_purge`);
* the edge's poll (:func:`aifi.hub.tasks.list_tasks`, unacknowledged
  COMPLETED tasks of one hospital, 100 a page) and the plain listing (all
  tasks of one hospital, a keyset page from the middle).

each twice: with the schema of revision 0004, and "without" -- the same
database inside a transaction where 0004's indexes are dropped and the old
``ix_tasks_poll`` (hospital, acknowledged, state) is back, rolled back
afterwards. A query that runs past ``--timeout-s`` is reported as such.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, event, text

from _common import use_test_peers
from aifi.hub.db import make_engine, make_sessions, migrate
from aifi.hub.models import utcnow
from aifi.hub.retention import images_to_purge, results_to_purge
from aifi.hub.tasks import list_tasks
from aifi.protocol.schemas import TaskState

HOSPITALS = ("a" * 32, "b" * 32)

FILL = [
    "INSERT INTO hospitals (id, name, created_at) VALUES "
    "(:a, 'Hospital A', now()), (:b, 'Hospital B', now())",
    # one task per 4 instances, the oldest 30 days ago, one a few seconds apart
    """
    INSERT INTO tasks (id, hospital_id, client_task_id, algorithm_id, study_instance_uid,
                       state, urgent, acknowledged, acknowledged_at, created_at, updated_at)
    SELECT md5(i::text),
           CASE WHEN i % 2 = 0 THEN :a ELSE :b END,
           'c' || i, 'integrity-check', '2.25.' || i,
           CASE WHEN i > :tasks - 50 THEN 'SCHEDULED'
                WHEN i > :tasks - 60 THEN 'IN PROGRESS' ELSE 'COMPLETED' END,
           false,
           t < now() - interval '1 day',
           CASE WHEN t < now() - interval '1 day' THEN t + interval '1 hour' END,
           t, t
    FROM (SELECT i, now() - (:tasks - i) * (interval '30 days' / :tasks) AS t
          FROM generate_series(1, :tasks) AS i) AS s
    """,
    """
    INSERT INTO instances (id, hospital_id, study_instance_uid, series_instance_uid,
                           sop_instance_uid, sop_class_uid, object_key, size,
                           received_at, purged_at)
    SELECT n, t.hospital_id, t.study_instance_uid, t.study_instance_uid || '.1',
           '2.25.9' || n, '1.2.840.10008.5.1.4.1.1.1',
           'instances/' || t.hospital_id || '/' || n || '.dcm', 524288,
           t.created_at,
           CASE WHEN t.acknowledged THEN t.acknowledged_at END
    FROM generate_series(1, :instances) AS n
    JOIN tasks AS t ON t.id = md5(((n - 1) / 4 + 1)::text)
    """,
    "SELECT setval('instances_id_seq', :instances)",
    "INSERT INTO task_inputs (task_id, instance_id) "
    "SELECT md5(((n - 1) / 4 + 1)::text), n FROM generate_series(1, :instances) AS n",
    """
    INSERT INTO results (task_id, hospital_id, kind, study_instance_uid, series_instance_uid,
                         sop_instance_uid, sop_class_uid, object_key, size, created_at)
    SELECT id, hospital_id, 'sr', study_instance_uid, study_instance_uid || '.9',
           study_instance_uid || '.9.1', '1.2.840.10008.5.1.4.1.1.88.34',
           'results/' || id || '.dcm', 4096, created_at
    FROM tasks WHERE state = 'COMPLETED'
    """,
]

WITHOUT_0004 = [
    "DROP INDEX ix_task_inputs_instance",
    "DROP INDEX ix_instances_unpurged",
    "DROP INDEX ix_results_unpurged",
    "DROP INDEX ix_tasks_hospital_created",
    "DROP INDEX ix_tasks_poll",
    "CREATE INDEX ix_tasks_poll ON tasks (hospital_id, acknowledged, state)",
    "ANALYZE tasks",
]


def fill(engine: Engine, instances: int) -> float:
    tasks = instances // 4
    start = time.perf_counter()
    params = {"a": HOSPITALS[0], "b": HOSPITALS[1], "tasks": tasks, "instances": instances}
    with engine.begin() as connection:
        for statement in FILL:
            connection.execute(text(statement), params)
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    return time.perf_counter() - start


def captured_queries(engine: Engine) -> dict[str, tuple[str, Any]]:
    """The hub's queries as SQLAlchemy sends them to PostgreSQL (statement, parameters)."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    queries: dict[str, tuple[str, Any]] = {}
    now = utcnow()
    sessions = make_sessions(engine)
    event.listen(engine, "before_cursor_execute", capture)
    try:
        with sessions() as session:
            for name, run in (
                (
                    "purge: images",
                    lambda: session.scalars(images_to_purge(now - timedelta(hours=24))).first(),
                ),
                (
                    "purge: results",
                    lambda: session.scalars(results_to_purge(now - timedelta(days=30))).first(),
                ),
                (
                    "edge poll (unacknowledged COMPLETED)",
                    lambda: list_tasks(
                        session, HOSPITALS[0], state=TaskState.COMPLETED, acknowledged=False
                    ),
                ),
            ):
                seen.clear()
                run()
                queries[name] = _main_query(seen)
            middle = session.execute(
                text(
                    "SELECT id FROM tasks WHERE hospital_id = :h ORDER BY created_at, id "
                    "OFFSET (SELECT count(*) / 2 FROM tasks WHERE hospital_id = :h) LIMIT 1"
                ),
                {"h": HOSPITALS[0]},
            ).scalar_one()
            seen.clear()
            list_tasks(session, HOSPITALS[0], after=middle)
            queries["listing: a page from the middle"] = _main_query(seen)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return queries


def _main_query(seen: list[tuple[str, Any]]) -> tuple[str, Any]:
    """The query a call is about: not the look-up before it nor the related rows loaded after."""
    for statement, parameters in seen:
        if "FROM tasks" in statement and "ORDER BY tasks.created_at" in statement:
            return statement, parameters
    for statement, parameters in seen:
        if "FROM instances" in statement or "FROM results" in statement:
            return statement, parameters
    raise AssertionError(f"no main query among {len(seen)} statements")


def explain(engine: Engine, statement: str, parameters: Any, timeout_s: float) -> tuple[str, float]:
    """The plan and execution milliseconds (inf past the timeout)."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(f"SET statement_timeout = {int(timeout_s * 1000)}")
        try:
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters)
        except Exception as exc:  # the timeout, reported as a value
            raw.rollback()
            return f"(no plan: {type(exc).__name__}: {str(exc).strip()})", float("inf")
        lines = [row[0] for row in cursor.fetchall()]
        raw.rollback()
    finally:
        raw.close()
    ms = next(float(line.split()[2]) for line in lines if line.startswith("Execution Time"))
    return "\n".join(lines), ms


def explain_without_0004(
    engine: Engine, statement: str, parameters: Any, timeout_s: float
) -> tuple[str, float]:
    """As :func:`explain`, inside a transaction where 0004's indexes are gone (rolled back)."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for ddl in WITHOUT_0004:
            cursor.execute(ddl)
        cursor.execute(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}")
        try:
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters)
            lines = [row[0] for row in cursor.fetchall()]
        except Exception as exc:
            return f"(no plan: {type(exc).__name__}: {str(exc).strip()})", float("inf")
        finally:
            raw.rollback()
    finally:
        raw.close()
    ms = next(float(line.split()[2]) for line in lines if line.startswith("Execution Time"))
    return "\n".join(lines), ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--quiet", action="store_true", help="timings only, no plans")
    args = parser.parse_args(argv)
    use_test_peers()
    from peers.postgres import postgres_bin, start_postgres

    if postgres_bin() is None:
        print("skipped: PostgreSQL server binaries not found (Debian package 'postgresql')")
        return 0
    with start_postgres() as cluster:
        with cluster.connect() as connection:
            connection.execute("CREATE DATABASE plans")
        engine = make_engine(cluster.url("plans"))
        try:
            migrate(engine)
            seconds = fill(engine, args.instances)
            print(f"filled {args.instances:,} instance rows in {seconds:.1f} s")
            rows = []
            for name, (statement, parameters) in captured_queries(engine).items():
                with_plan, with_ms = explain(engine, statement, parameters, args.timeout_s)
                without_plan, without_ms = explain_without_0004(
                    engine, statement, parameters, args.timeout_s
                )
                rows.append((name, with_ms, without_ms))
                if not args.quiet:
                    print(f"\n=== {name}\n{statement}\n--- with 0004's indexes\n{with_plan}")
                    print(f"--- without\n{without_plan}")
        finally:
            engine.dispose()
    print(f"\n{'query':<40} {'with indexes':>14} {'without':>14}")
    for name, with_ms, without_ms in rows:
        print(f"{name:<40} {_ms(with_ms):>14} {_ms(without_ms, args.timeout_s):>14}")
    return 0


def _ms(value: float, timeout_s: float | None = None) -> str:
    if value == float("inf"):
        return f"> {timeout_s:.0f} s" if timeout_s else "timeout"
    return f"{value:,.2f} ms"


if __name__ == "__main__":
    sys.exit(main())
