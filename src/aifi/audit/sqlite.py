"""The audit chain in a plain SQLite file, for the edge (or any single program)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, MetaData, create_engine, event, inspect

from aifi.audit.chain import MAIN
from aifi.audit.store import SqlAuditLog
from aifi.audit.tables import define_audit_tables

__all__ = ["SqliteAuditLog"]

_COLUMNS = (
    "seq, at, actor, action, hospital, task, algorithm, algorithm_version, agreement, "
    "correlation_id, detail, prev_hash, hash"
)


class SqliteAuditLog(SqlAuditLog):
    """``append``, ``verify``, ``export_jsonl`` on the SQLite file ``path``, one chain.

    The file may be shared with other tables (the edge's state database):
    only ``audit_events`` and ``audit_head`` are created, when missing. A
    file written before chains had names is upgraded in place, its events
    kept as they are in the chain :data:`aifi.audit.chain.MAIN`.
    """

    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        engine = _engine(path)
        _name_the_one_chain(engine)
        metadata = MetaData()
        tables = define_audit_tables(metadata)
        metadata.create_all(engine, checkfirst=True)
        super().__init__(engine, tables)

    def close(self) -> None:
        """Release the file's connections."""
        self._engine.dispose()


def _name_the_one_chain(engine: Engine) -> None:
    """Move a file's unnamed chain into the current tables, as chain ``main``, in one go."""
    inspector = inspect(engine)
    if not inspector.has_table("audit_events"):
        return
    if "chain" in {c["name"] for c in inspector.get_columns("audit_events")}:
        return
    with engine.begin() as connection:
        run = connection.exec_driver_sql
        run("DROP INDEX IF EXISTS ix_audit_events_hospital_at")
        run("DROP INDEX IF EXISTS ix_audit_events_action_at")
        run("ALTER TABLE audit_events RENAME TO audit_events_unnamed")
        run("ALTER TABLE audit_head RENAME TO audit_head_unnamed")
        metadata = MetaData()
        define_audit_tables(metadata)
        metadata.create_all(connection)
        run(
            f"INSERT INTO audit_events (chain, {_COLUMNS}) "
            f"SELECT '{MAIN}', {_COLUMNS} FROM audit_events_unnamed ORDER BY seq"
        )
        run(
            f"INSERT INTO audit_head (chain, seq, hash) "
            f"SELECT '{MAIN}', seq, hash FROM audit_head_unnamed WHERE id = 1"
        )
        run("DROP TABLE audit_events_unnamed")
        run("DROP TABLE audit_head_unnamed")


def _engine(path: Path) -> Engine:
    engine = create_engine(
        f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 30}
    )

    def _pragmas(dbapi_connection: object, _record: object) -> None:
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    event.listen(engine, "connect", _pragmas)
    return engine
