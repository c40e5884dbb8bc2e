"""The hub's database: engine, sessions and schema migrations.

The database sits behind SQLAlchemy; only ``database_url`` says whether it
is the embedded SQLite file or PostgreSQL. The schema is owned by the
Alembic scripts shipped inside this package (:mod:`aifi.hub.migrations`)
and applied programmatically at start-up.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from aifi.errors import StorageError

__all__ = ["MIGRATIONS_DIR", "SessionFactory", "make_engine", "make_sessions", "migrate"]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

SessionFactory = sessionmaker[Session]


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL mode, a busy timeout and cross-thread use."""
    connect_args: dict[str, Any] = {}
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        connect_args = {"check_same_thread": False, "timeout": 30}
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args=connect_args, pool_pre_ping=not is_sqlite)
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_sessions(engine: Engine) -> SessionFactory:
    """Sessions whose objects stay readable after commit (rows are returned to clients)."""
    return sessionmaker(engine, expire_on_commit=False)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with the packaged Alembic scripts."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    is_sqlite = engine.dialect.name == "sqlite"
    try:
        with engine.connect() as connection:
            if is_sqlite:  # batch migrations copy tables; SQLite checks keys only outside them
                _foreign_keys(connection, enabled=False)
            try:
                with connection.begin():
                    config.attributes["connection"] = connection
                    command.upgrade(config, revision)
            finally:
                if is_sqlite:
                    _foreign_keys(connection, enabled=True)
    except SQLAlchemyError as exc:
        raise StorageError(
            f"could not migrate the hub database to {revision}: {exc}; "
            "check database_url and that the database is reachable"
        ) from exc
    logger.debug("hub database at revision %s", revision)


def _foreign_keys(connection: Connection, *, enabled: bool) -> None:
    """PRAGMA foreign_keys takes effect only outside a transaction (SQLite §pragma)."""
    connection.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if enabled else 'OFF'}")
    connection.commit()
