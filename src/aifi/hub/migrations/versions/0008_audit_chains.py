"""audit chains: one chain per hospital and one for the hub, each with its own head row

``audit_events`` gains ``chain`` and is keyed by (chain, seq); ``audit_head``
holds one row per chain, keyed by its name. Every event written before
this revision stays, unchanged and verifiable as it was, in the chain
``main`` (its head kept as that chain's head); new events go to
``hospital:<id>`` or ``hub`` (:mod:`aifi.hub.auditing`). The tables are
copied once (the same statements on SQLite and PostgreSQL); a downgrade is
possible only while no event was written to a new chain.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_COLUMNS = (
    "seq, at, actor, action, hospital, task, algorithm, algorithm_version, agreement, "
    "correlation_id, detail, prev_hash, hash"
)
_INDEXES = {
    "ix_audit_events_hospital_at": ["hospital", "at"],
    "ix_audit_events_action_at": ["action", "at"],
}


def _event_columns(*, chained: bool) -> list[sa.Column[object]]:
    columns: list[sa.Column[object]] = [sa.Column("seq", _SEQ, autoincrement=False, nullable=False)]
    if chained:
        columns.append(sa.Column("chain", sa.String(length=80), nullable=False))
    return [
        *columns,
        sa.Column("at", sa.String(length=40), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("hospital", sa.String(length=64), nullable=True),
        sa.Column("task", sa.String(length=64), nullable=True),
        sa.Column("algorithm", sa.String(length=64), nullable=True),
        sa.Column("algorithm_version", sa.String(length=64), nullable=True),
        sa.Column("agreement", sa.String(length=200), nullable=True),
        sa.Column("correlation_id", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
    ]


def _rename_primary_keys(pairs: list[tuple[str, str, str]]) -> None:
    """PostgreSQL names a table's key after the table it was created as."""
    if op.get_bind().dialect.name == "postgresql":
        for table, old, new in pairs:
            op.execute(f"ALTER TABLE {table} RENAME CONSTRAINT {old} TO {new}")


def upgrade() -> None:
    op.create_table(
        "audit_events_0008",
        *_event_columns(chained=True),
        sa.PrimaryKeyConstraint("chain", "seq", name="audit_events_0008_pkey"),
        sqlite_with_rowid=False,  # as aifi.audit.tables defines it: the key is the table
    )
    op.execute(
        f"INSERT INTO audit_events_0008 (chain, {_COLUMNS}) "
        f"SELECT 'main', {_COLUMNS} FROM audit_events"
    )
    op.create_table(
        "audit_head_0008",
        sa.Column("chain", sa.String(length=80), nullable=False),
        sa.Column("seq", _SEQ, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("chain", name="audit_head_0008_pkey"),
    )
    op.execute(
        "INSERT INTO audit_head_0008 (chain, seq, hash) "
        "SELECT 'main', seq, hash FROM audit_head WHERE id = 1"
    )
    for name in _INDEXES:
        op.drop_index(name, table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_table("audit_head")
    op.rename_table("audit_events_0008", "audit_events")
    op.rename_table("audit_head_0008", "audit_head")
    _rename_primary_keys(
        [
            ("audit_events", "audit_events_0008_pkey", "audit_events_pkey"),
            ("audit_head", "audit_head_0008_pkey", "audit_head_pkey"),
        ]
    )
    for name, columns in _INDEXES.items():
        op.create_index(name, "audit_events", columns)
    op.create_index("ix_audit_events_at", "audit_events", ["at"])


def downgrade() -> None:
    others = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM audit_head WHERE chain <> 'main'"))
        .scalar()
    )
    if others:
        raise RuntimeError(
            f"{others} audit chains besides 'main' exist; a schema before 0008 cannot hold "
            "them: export the trail ('aifi audit export') and keep this schema"
        )
    op.create_table(
        "audit_events_0007",
        *_event_columns(chained=False),
        sa.PrimaryKeyConstraint("seq", name="audit_events_0007_pkey"),
    )
    op.execute(
        f"INSERT INTO audit_events_0007 ({_COLUMNS}) "
        f"SELECT {_COLUMNS} FROM audit_events WHERE chain = 'main'"
    )
    op.create_table(
        "audit_head_0007",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", _SEQ, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="audit_head_0007_pkey"),
    )
    op.execute(
        "INSERT INTO audit_head_0007 (id, seq, hash) "
        "SELECT 1, seq, hash FROM audit_head WHERE chain = 'main'"
    )
    op.drop_index("ix_audit_events_at", table_name="audit_events")
    for name in _INDEXES:
        op.drop_index(name, table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_table("audit_head")
    op.rename_table("audit_events_0007", "audit_events")
    op.rename_table("audit_head_0007", "audit_head")
    _rename_primary_keys(
        [
            ("audit_events", "audit_events_0007_pkey", "audit_events_pkey"),
            ("audit_head", "audit_head_0007_pkey", "audit_head_pkey"),
        ]
    )
    for name, columns in _INDEXES.items():
        op.create_index(name, "audit_events", columns)
