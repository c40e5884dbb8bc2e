"""The packaged Alembic migrations build exactly the schema the ORM models describe.

On the SQLite file and on PostgreSQL (a new, empty database per test), except
what only SQLite has (its journal mode).
"""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from aifi.hub.db import head_revision, make_engine, make_sessions, migrate
from aifi.hub.models import Base
from aifi.hub.principals import find_by_token, hash_token
from aifi.hub.subscriptions import list_subscriptions


def test_migrations_match_the_models(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    migrate(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_migrating_twice_is_harmless_and_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    """SQLite only: the journal mode is the SQLite file's (PostgreSQL: test_postgresql.py)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    migrate(engine)
    migrate(engine)
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert (
            connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
            == head_revision()
        )
    assert "ix_tasks_poll" in {i["name"] for i in inspect(engine).get_indexes("tasks")}
    engine.dispose()


def test_the_edge_poll_is_served_by_an_index(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    migrate(engine)
    poll = (
        "SELECT * FROM tasks WHERE hospital_id = 'h' "
        "AND acknowledged = {false} AND state = 'COMPLETED' ORDER BY created_at LIMIT 100"
    )
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            explain = "EXPLAIN QUERY PLAN " + poll.format(false="0")
        else:  # an empty table is read whole; ask which index the planner would take
            connection.execute(text("SET enable_seqscan = off"))
            explain = "EXPLAIN " + poll.format(false="false")
        plan = " ".join(str(row[-1]) for row in connection.execute(text(explain)))
    engine.dispose()
    if engine.dialect.name == "sqlite":
        assert "ix_tasks_poll" in plan
    else:  # without statistics either index on hospital_id may win (bench/db_plans.py: 1 M rows)
        assert "Seq Scan" not in plan
        assert "ix_tasks_poll" in plan or "ix_tasks_hospital_created" in plan


def test_hospitals_registered_before_governance_keep_their_token_and_connection_test(
    empty_database_url: str,
) -> None:
    engine = make_engine(empty_database_url)
    migrate(engine, "0001")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO hospitals (id, name, token_sha256, created_at) "
                "VALUES (:id, 'Old Hospital', :digest, '2026-11-01')"
            ),
            {"id": "a" * 30, "digest": hash_token("the-old-token")},
        )
    migrate(engine)
    with make_sessions(engine)() as session:
        principal = find_by_token(session, "the-old-token")
        assert principal is not None
        assert principal.role == "hospital"
        assert principal.hospital is not None and principal.hospital.name == "Old Hospital"
        (subscription,) = list_subscriptions(session, principal.hospital_id)
        assert subscription.algorithm_id == "integrity-check"
        assert subscription.agreement_reference == "connection-test"
        assert subscription.valid_until is None
    engine.dispose()
