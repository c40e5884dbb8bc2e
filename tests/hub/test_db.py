"""The packaged Alembic migrations build exactly the schema the ORM models describe."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from aifi.hub.db import head_revision, make_engine, make_sessions, migrate
from aifi.hub.models import Base
from aifi.hub.principals import find_by_token, hash_token
from aifi.hub.subscriptions import list_subscriptions


def test_migrations_match_the_models(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    migrate(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_migrating_twice_is_harmless_and_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
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


def test_the_edge_poll_is_served_by_an_index(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    migrate(engine)
    poll = (
        "EXPLAIN QUERY PLAN SELECT * FROM tasks WHERE hospital_id = 'h' "
        "AND acknowledged = 0 AND state = 'COMPLETED' ORDER BY created_at LIMIT 100"
    )
    with engine.connect() as connection:
        plan = " ".join(str(row[-1]) for row in connection.execute(text(poll)))
    assert "ix_tasks_poll" in plan
    engine.dispose()


def test_hospitals_registered_before_governance_keep_their_token_and_connection_test(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    migrate(engine, "0001")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO hospitals (id, name, token_sha256, created_at) "
                "VALUES ('a' || hex(randomblob(15)), 'Old Hospital', :digest, '2026-11-01')"
            ),
            {"digest": hash_token("the-old-token")},
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
