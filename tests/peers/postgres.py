"""A real PostgreSQL for tests: Debian's ``postgresql`` server, a throwaway cluster.

How it is started:

* the binaries are Debian's, in ``/usr/lib/postgresql/<major>/bin`` (the
  newest major found); without them every PostgreSQL test is skipped with
  the reason;
* ``initdb`` into a fresh folder under the system temp folder (pytest's
  ``tmp_path`` is private to root, the server may not enter it); when the
  tests run as root the folder belongs to the ``postgres`` user and the
  server runs as that user (``setpriv``, which execs, so the PID we hold is
  the postmaster's): PostgreSQL refuses to run as root;
* trust authentication for the one role ``aifi``; TCP only on 127.0.0.1 on a
  free port, the unix socket inside the cluster's folder;
* durability off (``fsync``, ``synchronous_commit``, ``full_page_writes``):
  a test cluster is thrown away, speed is what counts.

One cluster serves the whole test session (:func:`postgres_cluster`), with
one database migrated to the newest schema. Each test that asks for
:func:`postgres_database` gets that database emptied (every table truncated,
sequences restarted, the schema revision kept): milliseconds, where a new
database per test costs most of a second. A test of migrations makes a
database of its own (:meth:`PostgresCluster.create_database`). The cluster
is stopped by its PID (SIGINT: fast shutdown) and its folder removed at the
end of the session.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from aifi.netutil import free_port

__all__ = [
    "PostgresCluster",
    "pg_dump",
    "postgres_bin",
    "postgres_cluster",
    "postgres_database",
    "start_postgres",
]

logger = logging.getLogger(__name__)

ROLE = "aifi"
SHARED = "aifi_test"
MISSING = (
    "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin; "
    "install the Debian package 'postgresql' (make system-deps)"
)


def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` that holds ``initdb`` and ``postgres``."""
    found = [
        folder
        for folder in Path("/usr/lib/postgresql").glob("*/bin")
        if (folder / "initdb").exists() and (folder / "postgres").exists()
    ]
    if not found:
        return None
    return max(found, key=lambda f: int(f.parent.name) if f.parent.name.isdigit() else 0)


@dataclass
class PostgresCluster:
    """A running throwaway cluster: where it listens and how to reach it."""

    bin: Path
    folder: Path
    port: int
    process: subprocess.Popen[bytes]
    as_postgres: bool

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` (psycopg 3 driver, TCP on loopback)."""
        return f"postgresql+psycopg://{ROLE}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """A plain psycopg connection in autocommit (CREATE/DROP DATABASE need it)."""
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=ROLE, dbname=database, autocommit=True
        )

    def create_database(self, template: str | None = None) -> str:
        """A new, empty database (or a copy of ``template``); its name."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        copy = f" TEMPLATE {template}" if template else ""
        with self.connect() as connection:
            connection.execute(f"CREATE DATABASE {name}{copy}")  # type: ignore[arg-type]
        return name

    def empty(self, database: str) -> None:
        """Delete every row of ``database`` except the schema's revision, sequences restarted."""
        with self.connect(database) as connection:
            connection.execute("SET lock_timeout = '10s'")
            tables = [
                row[0]
                for row in connection.execute(
                    "SELECT quote_ident(tablename) FROM pg_tables "
                    "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                )
            ]
            if tables:
                connection.execute(
                    f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"  # type: ignore[arg-type]
                )

    def drop_database(self, name: str) -> None:
        with self.connect() as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]

    def dump(self, database: str) -> bytes:
        """``pg_dump`` of ``database`` as plain SQL text: everything the database holds."""
        return subprocess.run(
            [
                str(self.bin / "pg_dump"),
                "--host=127.0.0.1",
                f"--port={self.port}",
                f"--username={ROLE}",
                "--no-password",
                database,
            ],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _as_postgres(command: list[str]) -> list[str]:
    user = pwd.getpwnam("postgres")
    return [
        "setpriv",
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--init-groups",
        "--",
        *command,
    ]


@contextlib.contextmanager
def start_postgres() -> Iterator[PostgresCluster]:
    """A fresh cluster on a free loopback port for the duration of the ``with``."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError(MISSING)
    as_postgres = os.geteuid() == 0
    folder = Path(tempfile.mkdtemp(prefix="aifi-pg-"))
    data = folder / "data"
    wrap = _as_postgres if as_postgres else (lambda command: command)
    if as_postgres:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    port = free_port()
    log = folder / "server.log"
    try:
        subprocess.run(
            wrap(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    ROLE,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            ),
            capture_output=True,
            check=True,
            timeout=120,
        )
        with log.open("wb") as out:
            process = subprocess.Popen(
                wrap(
                    [
                        str(bin_dir / "postgres"),
                        "-D",
                        str(data),
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(port),
                        "-k",
                        str(folder),
                        "-c",
                        "fsync=off",
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                        "-c",
                        "max_connections=300",
                        "-c",
                        "shared_buffers=128MB",
                    ]
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        cluster = PostgresCluster(bin_dir, folder, port, process, as_postgres)
        try:
            _wait_ready(cluster, log)
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ready(cluster: PostgresCluster, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if cluster.process.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited at start: {log.read_text()[-2000:]}")
        try:
            with cluster.connect():
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL not ready in {timeout:.0f} s") from None
            time.sleep(0.05)


def pg_dump(url: str) -> bytes:
    """``pg_dump`` of the database at SQLAlchemy ``url``, as plain SQL text."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError(MISSING)
    return subprocess.run(
        [str(bin_dir / "pg_dump"), "--no-password", url.replace("+psycopg", "", 1)],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway cluster for the session, with a database at the newest schema."""
    if postgres_bin() is None:
        pytest.skip(MISSING)
    from aifi.hub.db import make_engine, migrate

    with start_postgres() as cluster:
        with cluster.connect() as connection:
            connection.execute(f"CREATE DATABASE {SHARED}")  # type: ignore[arg-type]
        engine = make_engine(cluster.url(SHARED))
        try:
            migrate(engine)
        finally:
            engine.dispose()
        yield cluster


@pytest.fixture
def postgres_database(postgres_cluster: PostgresCluster) -> str:
    """The URL of the session's database, emptied for this test (schema kept, at head).

    Emptying (one ``TRUNCATE`` of every table but Alembic's) takes milliseconds
    where a new database per test takes most of a second.
    """
    postgres_cluster.empty(SHARED)
    return postgres_cluster.url(SHARED)
