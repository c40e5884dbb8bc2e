"""The hub on PostgreSQL: its schema, 64-bit keys, concurrent migrations and retried failures.

A throwaway cluster on loopback (``peers.postgres``); each test that needs an
empty database makes its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from aifi.hub.db import (
    head_revision,
    is_transient,
    make_engine,
    make_sessions,
    migrate,
    require_schema,
    retrying,
    schema_revision,
)
from aifi.hub.hospitals import add_hospital
from aifi.hub.models import Base, Instance, utcnow
from peers.postgres import PostgresCluster

pytestmark = pytest.mark.postgresql


@pytest.fixture
def empty(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """The URL of a new, empty database (no schema), dropped after the test."""
    name = postgres_cluster.create_database()
    try:
        yield postgres_cluster.url(name)
    finally:
        postgres_cluster.drop_database(name)


@pytest.fixture
def engine(postgres_database: str) -> Iterator[Engine]:
    engine = make_engine(postgres_database, pool_size=2, max_overflow=2)
    yield engine
    engine.dispose()


def test_migrations_match_the_models_on_postgresql(empty: str) -> None:
    engine = make_engine(empty)
    try:
        with pytest.raises(Exception, match="run 'aifi hub migrate'"):
            require_schema(engine)
        migrate(engine)
        require_schema(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_growing_keys_sequences_and_sizes_are_64_bit(engine: Engine) -> None:
    with engine.connect() as connection:
        columns = dict(
            connection.execute(
                text(
                    "SELECT table_name || '.' || column_name, data_type "
                    "FROM information_schema.columns WHERE table_schema = 'public'"
                )
            ).all()
        )
        sequences = dict(
            connection.execute(
                text("SELECT sequence_name, data_type FROM information_schema.sequences")
            ).all()
        )
        connection.execute(text("SELECT setval('instances_id_seq', 3000000000)"))
        connection.commit()
    for column in (
        "instances.id", "results.id", "refusals.id", "task_inputs.instance_id",
        "instances.size", "results.size", "audit_events.seq", "audit_head.seq",
    ):  # fmt: skip
        assert columns[column] == "bigint", column
    for sequence in ("instances_id_seq", "results_id_seq", "refusals_id_seq"):
        assert sequences[sequence] == "bigint", sequence

    with make_sessions(engine)() as session:
        hospital = add_hospital(session, "Hospital A")[0]
        instance = Instance(
            hospital_id=hospital.id, study_instance_uid="2.25.1", series_instance_uid="2.25.2",
            sop_instance_uid="2.25.3", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            object_key="instances/x.dcm", size=5 * 1024**3, received_at=utcnow(),
        )  # fmt: skip
        session.add(instance)
        session.commit()
        assert instance.id > 2**31
        assert session.get(Instance, instance.id).size == 5 * 1024**3  # type: ignore[union-attr]


def test_three_migrate_commands_at_once_on_an_empty_database_all_succeed(empty: str) -> None:
    env = {**os.environ, "AIFI_HUB_DATABASE_URL": empty, "PYTHONWARNINGS": "error"}
    commands = [
        subprocess.Popen(
            [sys.executable, "-m", "aifi", "hub", "migrate"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        for _ in range(3)
    ]
    outputs = [c.communicate(timeout=120)[0].decode() for c in commands]

    assert [c.returncode for c in commands] == [0, 0, 0], outputs
    assert all(f"schema revision {head_revision()}" in o for o in outputs), outputs
    engine = make_engine(empty)
    try:
        assert schema_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_a_command_on_an_old_schema_says_to_migrate(empty: str) -> None:
    engine = make_engine(empty)
    try:
        migrate(engine, "0003")
    finally:
        engine.dispose()
    env = {**os.environ, "AIFI_HUB_DATABASE_URL": empty}
    listed = subprocess.run(
        [sys.executable, "-m", "aifi", "hub", "hospital", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert listed.returncode == 1
    assert "schema revision 0003" in listed.stderr
    assert "run 'aifi hub migrate'" in listed.stderr


def test_a_lost_connection_is_retried(engine: Engine) -> None:
    attempts: list[int] = []

    def work(session: Session) -> int:
        attempts.append(1)
        if len(attempts) == 1:  # the server ends this session, as a failover would
            session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        return int(session.execute(text("SELECT 42")).scalar_one())

    assert retrying(make_sessions(engine), work, backoff_s=0.01) == 42
    assert len(attempts) == 2


def test_a_serialization_failure_is_retried_and_other_errors_are_not(
    engine: Engine, postgres_cluster: PostgresCluster, postgres_database: str
) -> None:
    with make_sessions(engine)() as session:
        hospital_id = add_hospital(session, "Hospital A")[0].id
    database = postgres_database.rsplit("/", 1)[1]
    attempts: list[int] = []

    def rename(session: Session) -> None:
        attempts.append(1)
        session.execute(text("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"))
        session.execute(text("SELECT name FROM hospitals WHERE id = :id"), {"id": hospital_id})
        if len(attempts) == 1:  # another process changes the row meanwhile
            with postgres_cluster.connect(database) as other:
                other.execute("UPDATE hospitals SET name = 'Other' WHERE id = %s", (hospital_id,))
        session.execute(
            text("UPDATE hospitals SET name = 'Renamed' WHERE id = :id"), {"id": hospital_id}
        )

    retrying(make_sessions(engine), rename, backoff_s=0.01)
    assert len(attempts) == 2
    with engine.connect() as connection:
        name = connection.execute(
            text("SELECT name FROM hospitals WHERE id = :id"), {"id": hospital_id}
        ).scalar()
    assert name == "Renamed"

    def broken(session: Session) -> None:
        attempts.append(1)
        session.execute(text("SELECT * FROM no_such_table"))

    attempts.clear()
    with pytest.raises(Exception, match="no_such_table"):
        retrying(make_sessions(engine), broken, backoff_s=0.01)
    assert len(attempts) == 1


def test_a_deadlock_is_transient(engine: Engine, postgres_database: str) -> None:
    with make_sessions(engine)() as session:
        a = add_hospital(session, "Hospital A")[0].id
        b = add_hospital(session, "Hospital B")[0].id
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def lock(first: str, second: str) -> None:
        try:
            with engine.begin() as connection:
                update = text("UPDATE hospitals SET name = name || '.' WHERE id = :id")
                connection.execute(update, {"id": first})
                barrier.wait(timeout=10)
                connection.execute(update, {"id": second})
        except OperationalError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=lock, args=pair) for pair in ((a, b), (b, a))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    (error,) = errors
    assert getattr(error.orig, "sqlstate", None) == "40P01"
    assert is_transient(error)


def test_a_refused_connection_is_transient() -> None:
    engine = make_engine("postgresql+psycopg://aifi@127.0.0.1:1/none")
    try:
        with pytest.raises(OperationalError) as caught:
            engine.connect()
        assert is_transient(caught.value)
        assert isinstance(caught.value.orig, psycopg.OperationalError)
    finally:
        engine.dispose()
