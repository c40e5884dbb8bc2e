"""audit: pending events, written in the transaction of the change they record

``audit_pending`` is the audit trail's outbox: an event committed together
with its change, no hash and no sequence number yet. The process that
committed it seals it into its chain right after the commit (and deletes
the row in that transaction); the janitor seals what a process that died
in between left behind. Empty whenever every process is well.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 21:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BIG_INTEGER = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_pending",
        sa.Column("id", BIG_INTEGER, primary_key=True, autoincrement=True),
        sa.Column("chain", sa.String(length=80), nullable=False),
        sa.Column("at", sa.String(length=40), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("hospital", sa.String(length=64)),
        sa.Column("task", sa.String(length=64)),
        sa.Column("algorithm", sa.String(length=64)),
        sa.Column("algorithm_version", sa.String(length=64)),
        sa.Column("agreement", sa.String(length=200)),
        sa.Column("correlation_id", sa.String(length=64)),
        sa.Column("detail", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_pending")
