"""The hub's database: engine, sessions, schema migrations, retries and exclusive duties.

The database sits behind SQLAlchemy; only ``database_url`` says whether it
is the embedded SQLite file or PostgreSQL (psycopg 3). The schema is owned
by the Alembic scripts shipped inside this package
(:mod:`aifi.hub.migrations`):

* :func:`migrate` applies them under a lock (a PostgreSQL advisory lock;
  SQLite's own write lock), so several processes migrating one empty
  database at once all succeed, one after the other;
* ``aifi hub migrate`` and the embedded ``aifi hub serve`` migrate; other
  commands call :func:`prepare_schema`, which migrates the embedded SQLite
  file in place but only *checks* a shared server database (a process that
  finds an old schema says to run ``aifi hub migrate``).

PostgreSQL's transient failures (serialization failure 40001, deadlock
40P01, a lost or refused connection: class 08, 57P01-57P03) are retried by
:func:`retrying` around a whole transaction. :func:`exclusive` tells the one
process that may do the shared start-up duties (recovering interrupted tasks,
the retention purge) from the others on the same database.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from aifi.errors import StorageError

if TYPE_CHECKING:
    from aifi.hub.config import HubSettings

__all__ = [
    "MIGRATIONS_DIR",
    "SessionFactory",
    "engine_for",
    "exclusive",
    "head_revision",
    "is_transient",
    "listen",
    "make_engine",
    "make_sessions",
    "migrate",
    "prepare_schema",
    "require_schema",
    "retrying",
    "schema_revision",
]

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MIGRATION_LOCK = "aifi-hub:migrate"

SessionFactory = sessionmaker[Session]
T = TypeVar("T")

# PostgreSQL error codes (Appendix A of its manual) after which the same
# transaction, run again, may well succeed
_RETRY_SQLSTATES = {"40001", "40P01", "57P01", "57P02", "57P03"}


def make_engine(url: str, *, pool_size: int = 5, max_overflow: int = 10) -> Engine:
    """An engine for ``url``; SQLite gets WAL mode, a busy timeout and cross-thread use.

    ``pool_size`` connections stay open, ``max_overflow`` more are opened
    under load (PostgreSQL; SQLite keeps SQLAlchemy's defaults).
    """
    connect_args: dict[str, Any] = {}
    pool: dict[str, Any] = {}
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        connect_args = {"check_same_thread": False, "timeout": 30}
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    else:
        pool = {"pool_size": pool_size, "max_overflow": max_overflow}
        if url.startswith("postgresql"):
            # short OLTP queries: JIT compiling one costs more than running it
            # (bench/db_plans.py: the purge's 0.4 s became 1.3 s with JIT)
            connect_args = {"options": "-c jit=off"}
    engine = create_engine(url, connect_args=connect_args, **pool)
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        event.listen(engine, "checkin", _checked_in)
        event.listen(engine, "checkout", _pinger(engine.dialect))
    return engine


PING_IDLE_S = 10.0
"""A pooled connection idle this long is pinged before use (one that came back just now is not)."""


def _checked_in(_dbapi_connection: Any, record: Any) -> None:
    record.info["idle_since"] = time.monotonic()


def _pinger(dialect: Any) -> Callable[[Any, Any, Any], None]:
    """SQLAlchemy's ``pool_pre_ping``, but only for a connection idle over :data:`PING_IDLE_S`.

    ``pool_pre_ping`` costs a round trip on every checkout, and a request
    checks out twice (authentication, then the route): about a tenth of the
    API's CPU per request (bench/national_load.py --per-call). A connection
    that went back to the pool a moment ago is alive unless the server went
    away in between; then the statement fails with a disconnect, SQLAlchemy
    drops the pool's connections, and :func:`retrying` runs the work again.
    Raising ``DisconnectionError`` here makes the pool open a fresh one.
    """

    def ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_IDLE_S:
            return
        try:
            alive = dialect.do_ping(dbapi_connection)  # the dialect's own: autocommit SELECT 1
        except Exception as exc:  # the server went away while the connection sat in the pool
            raise DisconnectionError(f"pooled connection lost: {exc}") from exc
        if not alive:
            raise DisconnectionError("pooled connection lost")

    return ping_if_idle


def engine_for(settings: HubSettings) -> Engine:
    """The engine ``settings`` describe: database URL and connection pool."""
    return make_engine(
        settings.effective_database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_sessions(engine: Engine) -> SessionFactory:
    """Sessions whose objects stay readable after commit (rows are returned to clients)."""
    return sessionmaker(engine, expire_on_commit=False)


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option(
        "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def head_revision() -> str:
    """The newest schema revision this aifi ships."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None, "the packaged migrations have no head"
    return head


def schema_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for an empty database."""
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise StorageError(
            f"cannot read the hub database's schema revision: {exc}; "
            "check database_url and that the database is reachable"
        ) from exc


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with the packaged Alembic scripts.

    On PostgreSQL the upgrade runs under a session advisory lock: a second
    process migrating at the same time waits, then finds the schema current.
    """
    config = _alembic_config(engine)
    dialect = engine.dialect.name
    try:
        with engine.connect() as connection:
            if dialect == "sqlite":  # batch migrations copy tables; keys checked outside them
                _foreign_keys(connection, enabled=False)
            elif dialect == "postgresql":
                _advisory(connection, "pg_advisory_lock", MIGRATION_LOCK)
            try:
                with connection.begin():
                    config.attributes["connection"] = connection
                    command.upgrade(config, revision)
            finally:
                if dialect == "sqlite":
                    _foreign_keys(connection, enabled=True)
                elif dialect == "postgresql":
                    _advisory(connection, "pg_advisory_unlock", MIGRATION_LOCK)
    except SQLAlchemyError as exc:
        raise StorageError(
            f"could not migrate the hub database to {revision}: {exc}; "
            "check database_url and that the database is reachable"
        ) from exc
    logger.debug("hub database at revision %s", revision)


def require_schema(engine: Engine) -> None:
    """Refuse a database whose schema is not the one this aifi ships (StorageError)."""
    current, head = schema_revision(engine), head_revision()
    if current != head:
        raise StorageError(
            f"the hub database is at schema revision {current or 'none (empty)'}, this aifi "
            f"needs {head}; run 'aifi hub migrate' once before starting the hub's processes"
        )


def prepare_schema(engine: Engine) -> None:
    """Migrate the embedded SQLite file in place; check (never change) a shared database."""
    if engine.dialect.name == "sqlite":
        migrate(engine)
    else:
        require_schema(engine)


def _foreign_keys(connection: Connection, *, enabled: bool) -> None:
    """PRAGMA foreign_keys takes effect only outside a transaction (SQLite §pragma)."""
    connection.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if enabled else 'OFF'}")
    connection.commit()


def _lock_key(name: str) -> int:
    """A stable 32-bit advisory lock key for ``name`` (PostgreSQL §9.27.10)."""
    return zlib.crc32(name.encode())


def _advisory(connection: Connection, function: str, name: str) -> bool:
    granted = connection.execute(text(f"SELECT {function}(:key)"), {"key": _lock_key(name)})
    value = granted.scalar()
    connection.commit()
    return value is not False


def is_transient(exc: BaseException) -> bool:
    """Whether running the same transaction again may succeed (PostgreSQL Appendix A codes)."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is None:  # psycopg without a server's answer: the connection is gone
        return isinstance(exc, OperationalError) and type(exc.orig).__module__.startswith("psycopg")
    return sqlstate in _RETRY_SQLSTATES or sqlstate.startswith("08")


def listen(
    engine: Engine,
    channel: str,
    notified: Callable[[str | None], None],
    stop: threading.Event,
    *,
    retry_s: float = 1.0,
    lost: Callable[[], None] | None = None,
) -> None:
    """``LISTEN channel`` on a connection of its own until ``stop`` is set (PostgreSQL).

    Runs on a thread of the caller's. ``notified(payload)`` for each
    notification, and ``notified(None)`` each time listening (re)starts:
    whatever was sent while not listening is unknown. The connection is
    taken out of the pool for good; after a failure ``lost()`` is called and
    the connection opened again ``retry_s`` later (the caller's poll covers
    the gap).
    """
    import psycopg

    while not stop.is_set():
        try:
            pooled = engine.raw_connection()
            connection = pooled.driver_connection
            pooled.detach()  # held for good: closed, not returned to the pool
            assert isinstance(connection, psycopg.Connection)
            try:
                connection.autocommit = True
                connection.execute(f"LISTEN {channel}")
                notified(None)
                while not stop.is_set():
                    for notification in connection.notifies(timeout=1.0):
                        notified(notification.payload)
            finally:
                pooled.close()
        except (SQLAlchemyError, psycopg.Error, OSError) as exc:
            if stop.is_set():
                return
            logger.warning("notifications on %s lost (%s); listening again", channel, exc)
            if lost is not None:
                lost()
            stop.wait(retry_s)


def retrying(
    sessions: SessionFactory,
    work: Callable[[Session], T],
    *,
    attempts: int = 5,
    backoff_s: float = 0.05,
) -> T:
    """Run ``work`` in a fresh session and commit; again after a transient failure.

    ``work`` must be safe to run again from the start (it sees a new session
    each time; anything it committed before failing stays committed). The
    wait doubles each time, with jitter, from ``backoff_s``. After
    ``attempts`` the last error is raised.
    """
    for attempt in range(1, attempts + 1):
        try:
            with sessions() as session:
                result = work(session)
                session.commit()
                return result
        except DBAPIError as exc:
            if not is_transient(exc) or attempt == attempts:
                raise
            delay = backoff_s * 2 ** (attempt - 1) * (1 + random.random())
            logger.warning(
                "transient database failure (%s); retrying in %.2f s (attempt %d of %d)",
                getattr(exc.orig, "sqlstate", None) or type(exc.orig).__name__,
                delay,
                attempt,
                attempts,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def exclusive(engine: Engine, name: str) -> Iterator[bool]:
    """Whether this process alone holds ``name`` on this database, for the ``with`` block.

    PostgreSQL: a session advisory lock on a connection kept for the block
    (one connection of the pool; the lock goes when the process dies).
    SQLite: an exclusive ``flock`` on a file beside the database. A process
    that gets False does not do the duty; one that gets True does it until
    the block ends.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            held = _advisory(connection, "pg_try_advisory_lock", name)
            try:
                yield held
            finally:
                if held:
                    with contextlib.suppress(SQLAlchemyError):
                        _advisory(connection, "pg_advisory_unlock", name)
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield True
        return
    lock_path = Path(f"{database}.{name.replace(':', '-')}.lock")
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
