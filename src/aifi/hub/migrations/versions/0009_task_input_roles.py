"""task inputs carry a role: the current study, or a prior of the same patient

``task_inputs.role`` is ``current`` for the study a task is for (every
existing row) and ``prior`` for the instances of an earlier study of the same
pseudonymous patient that the algorithm's manifest asked for (issue 14).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task_inputs") as batch_op:
        batch_op.add_column(
            sa.Column("role", sa.String(16), nullable=False, server_default="current")
        )


def downgrade() -> None:
    with op.batch_alter_table("task_inputs") as batch_op:
        batch_op.drop_column("role")
