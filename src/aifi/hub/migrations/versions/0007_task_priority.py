"""task priority: Scheduled Procedure Step Priority (0074,1200) as a queue rank

``tasks.priority`` is 0 for HIGH (urgent, stat), 1 for MEDIUM (routine, the
default for every existing task), 2 for LOW; workers claim by priority, then
age (``ix_tasks_priority_queue``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="1"))
    op.create_index("ix_tasks_priority_queue", "tasks", ["state", "priority", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_priority_queue", table_name="tasks")
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.drop_column("priority")
