"""tasks carry a worker's lease: who claimed it, until when, last heartbeat, attempts

A task is claimed by one atomic UPDATE that sets ``claimed_by`` and
``lease_until`` (aifi.hub.leases); the worker renews the lease while the
algorithm runs, and the janitor puts a task whose lease ran out back to
SCHEDULED (or cancels it after ``max_attempts``). ``ix_tasks_queue`` serves
the workers' "oldest scheduled task of these algorithms" query and the
reaper's scan of running tasks.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(200), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_tasks_queue", "tasks", ["state", "algorithm_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_queue", table_name="tasks")
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.drop_column("attempts")
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("lease_until")
        batch_op.drop_column("claimed_by")
