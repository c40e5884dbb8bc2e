"""catalog: each version's keep list, so edges pseudonymize for what will run

The edge asks the hub's catalog which attributes an algorithm needs kept
(data minimisation, PS3.15 E.3 options applied per algorithm). Rows that
exist get an empty list until the hub's next start refreshes them from the
installed manifests.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("algorithms") as batch_op:
        batch_op.add_column(
            sa.Column("keep_attributes", sa.JSON(), nullable=False, server_default="[]")
        )


def downgrade() -> None:
    with op.batch_alter_table("algorithms") as batch_op:
        batch_op.drop_column("keep_attributes")
