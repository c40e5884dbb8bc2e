"""The packaged Alembic migrations build exactly the schema the ORM models describe."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from aifi.hub.db import make_engine, migrate
from aifi.hub.models import Base


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
            connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"
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
