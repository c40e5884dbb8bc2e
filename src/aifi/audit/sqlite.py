"""The audit chain in a plain SQLite file, for the edge (or any single program)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, MetaData, create_engine, event

from aifi.audit.store import SqlAuditLog
from aifi.audit.tables import define_audit_tables

__all__ = ["SqliteAuditLog"]


class SqliteAuditLog(SqlAuditLog):
    """``append``, ``verify``, ``export_jsonl`` on the SQLite file ``path``.

    The file may be shared with other tables (the edge's state database):
    only ``audit_events`` and ``audit_head`` are created, when missing.
    """

    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        engine = _engine(path)
        metadata = MetaData()
        tables = define_audit_tables(metadata)
        metadata.create_all(engine, checkfirst=True)
        super().__init__(engine, tables)

    def close(self) -> None:
        """Release the file's connections."""
        self._engine.dispose()


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
