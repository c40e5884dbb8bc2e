"""feedback, input statistics and hospital contacts: what the console and /metrics watch

``feedback`` holds one radiologist verdict per task (IHE AIRAI), without
identity; ``input_statistics`` the acquisition figures of each received
instance (manufacturer, kVp, pixel spacing) for input drift;
``hospital_contacts`` when each edge last called and as which version.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
BIG_INTEGER = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "hospital_contacts",
        sa.Column("hospital_id", sa.String(length=32), nullable=False),
        sa.Column("last_seen_at", TIMESTAMP, nullable=False),
        sa.Column("user_agent", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["hospital_id"], ["hospitals.id"]),
        sa.PrimaryKeyConstraint("hospital_id"),
    )
    op.create_table(
        "feedback",
        sa.Column("task_id", sa.String(length=32), nullable=False),
        sa.Column("hospital_id", sa.String(length=32), nullable=False),
        sa.Column("algorithm_id", sa.String(length=64), nullable=False),
        sa.Column("algorithm_version", sa.String(length=64), nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("correction_code_value", sa.String(length=16), nullable=True),
        sa.Column("correction_coding_scheme", sa.String(length=16), nullable=True),
        sa.Column("correction_code_meaning", sa.String(length=64), nullable=True),
        sa.Column("recorded_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["hospital_id"], ["hospitals.id"]),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"]),
        sa.PrimaryKeyConstraint("task_id"),
    )
    op.create_index("ix_feedback_hospital_id", "feedback", ["hospital_id"])
    op.create_index(
        "ix_feedback_version", "feedback", ["algorithm_id", "algorithm_version", "recorded_at"]
    )
    op.create_table(
        "input_statistics",
        sa.Column("id", BIG_INTEGER, autoincrement=True, nullable=False),
        sa.Column("hospital_id", sa.String(length=32), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("manufacturer", sa.String(length=64), nullable=True),
        sa.Column("kvp", sa.Float(), nullable=True),
        sa.Column("pixel_spacing_mm", sa.Float(), nullable=True),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["hospital_id"], ["hospitals.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("hospital_id", "sop_instance_uid", name="uq_input_statistics_sop"),
    )
    op.create_index("ix_input_statistics_received", "input_statistics", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_input_statistics_received", table_name="input_statistics")
    op.drop_table("input_statistics")
    op.drop_index("ix_feedback_version", table_name="feedback")
    op.drop_index("ix_feedback_hospital_id", table_name="feedback")
    op.drop_table("feedback")
    op.drop_table("hospital_contacts")
