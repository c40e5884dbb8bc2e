"""64-bit keys and sizes; the indexes the purge and the task listings need

* Keys that grow with traffic (``instances.id``, ``results.id``,
  ``refusals.id``, ``task_inputs.instance_id`` that points at instances, the
  audit chain's sequence numbers) and object sizes become 64-bit on
  PostgreSQL, sequences included; SQLite's integers are 64-bit already.
* ``task_inputs(instance_id)``: the purge asks, per instance, which tasks use
  it; the primary key (task_id, instance_id) cannot answer that, so without
  this index the purge grows with the square of the instances held.
* Partial indexes on what is not yet purged (``instances``, ``results``):
  the purge reads only those rows, a small part of a table that keeps its
  purged rows for usage and audit.
* ``ix_tasks_poll`` gains the listing's order (created_at, id) and
  ``ix_tasks_hospital_created`` serves the listing without a state filter,
  so a page of tasks is read in order, not sorted.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BIG = (
    ("instances", "id", "instances_id_seq"),
    ("results", "id", "results_id_seq"),
    ("refusals", "id", "refusals_id_seq"),
    ("task_inputs", "instance_id", None),
    ("instances", "size", None),
    ("results", "size", None),
    ("audit_events", "seq", None),
    ("audit_head", "seq", None),
)


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for table, column, sequence in _BIG:
            op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer())
            if sequence is not None:
                op.execute(f"ALTER SEQUENCE {sequence} AS bigint")
    op.create_index("ix_task_inputs_instance", "task_inputs", ["instance_id"])
    op.create_index(
        "ix_instances_unpurged",
        "instances",
        ["received_at"],
        postgresql_where=sa.text("purged_at IS NULL"),
        sqlite_where=sa.text("purged_at IS NULL"),
    )
    op.create_index(
        "ix_results_unpurged",
        "results",
        ["created_at"],
        postgresql_where=sa.text("purged_at IS NULL"),
        sqlite_where=sa.text("purged_at IS NULL"),
    )
    op.drop_index("ix_tasks_poll", table_name="tasks")
    op.create_index(
        "ix_tasks_poll", "tasks", ["hospital_id", "acknowledged", "state", "created_at", "id"]
    )
    op.create_index("ix_tasks_hospital_created", "tasks", ["hospital_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_tasks_hospital_created", table_name="tasks")
    op.drop_index("ix_tasks_poll", table_name="tasks")
    op.create_index("ix_tasks_poll", "tasks", ["hospital_id", "acknowledged", "state"])
    op.drop_index("ix_results_unpurged", table_name="results")
    op.drop_index("ix_instances_unpurged", table_name="instances")
    op.drop_index("ix_task_inputs_instance", table_name="task_inputs")
    if op.get_context().dialect.name == "postgresql":
        for table, column, sequence in _BIG:
            if sequence is not None:
                op.execute(f"ALTER SEQUENCE {sequence} AS integer")
            op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger())
