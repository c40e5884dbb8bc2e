"""UPS-RS subscriptions and events: who listens to which workitem, and cancel requests

``ups_subscriptions`` holds each principal's Subscribe (PS3.18 §11.10) by AE
title, to one workitem (its task id) or to all (``*``, the global
subscription); ``ups_events`` the events a task row does not show (a cancel
request for a workitem an outside performer holds, PS3.4 CC.2.4), read by
every hub process's WebSocket.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 21:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
BIG_INTEGER = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ups_subscriptions",
        sa.Column("id", BIG_INTEGER, autoincrement=True, nullable=False),
        sa.Column("principal_id", sa.String(length=32), nullable=False),
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("workitem", sa.String(length=32), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["principal_id"], ["principals.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("principal_id", "ae_title", "workitem", name="uq_ups_subscriptions"),
    )
    op.create_index("ix_ups_subscriptions_principal_id", "ups_subscriptions", ["principal_id"])
    op.create_table(
        "ups_events",
        sa.Column("id", BIG_INTEGER, autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(length=32), nullable=False),
        sa.Column("hospital_id", sa.String(length=32), nullable=False),
        sa.Column("event_type", sa.Integer(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["hospital_id"], ["hospitals.id"]),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_ups_events_task_id", "ups_events", ["task_id"])


def downgrade() -> None:
    op.drop_index("ix_ups_events_task_id", table_name="ups_events")
    op.drop_table("ups_events")
    op.drop_index("ix_ups_subscriptions_principal_id", table_name="ups_subscriptions")
    op.drop_table("ups_subscriptions")
