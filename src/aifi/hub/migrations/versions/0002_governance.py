"""governance: principals and tokens, catalog, subscriptions, audit chain, usage, retention

Existing hospitals keep working: each gets a principal of role ``hospital``
holding its old token, and a connection-test subscription to
``integrity-check`` (agreement reference ``connection-test``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 23:45:00
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "algorithms",
        sa.Column("algorithm_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("vendor", sa.String(length=200), nullable=False),
        sa.Column("intended_use", sa.Text(), nullable=False),
        sa.Column("regulatory_status", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("registered_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("algorithm_id", "version"),
    )
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
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
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_audit_events_action_at", "audit_events", ["action", "at"])
    op.create_index("ix_audit_events_hospital_at", "audit_events", ["hospital", "at"])
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "principals",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("hospital_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["hospital_id"], ["hospitals.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("hospital_id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("hospital_id", sa.String(length=32), nullable=False),
        sa.Column("algorithm_id", sa.String(length=64), nullable=False),
        sa.Column("algorithm_version", sa.String(length=64), nullable=True),
        sa.Column("valid_from", TIMESTAMP, nullable=False),
        sa.Column("valid_until", TIMESTAMP, nullable=True),
        sa.Column("agreement_reference", sa.String(length=200), nullable=False),
        sa.Column("controller", sa.String(length=200), nullable=False),
        sa.Column("processor", sa.String(length=200), nullable=False),
        sa.Column("sub_processor", sa.String(length=200), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["hospital_id"], ["hospitals.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_subscriptions_hospital_algorithm", "subscriptions", ["hospital_id", "algorithm_id"]
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("principal_id", sa.String(length=32), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(["principal_id"], ["principals.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_sha256"),
    )
    op.create_index("ix_tokens_principal_id", "tokens", ["principal_id"])
    _move_hospital_tokens()
    with op.batch_alter_table("hospitals") as batch_op:
        batch_op.drop_column("token_sha256")
    with op.batch_alter_table("instances") as batch_op:
        batch_op.add_column(sa.Column("purged_at", TIMESTAMP, nullable=True))
    with op.batch_alter_table("results") as batch_op:
        batch_op.add_column(
            sa.Column("size", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch_op.add_column(sa.Column("purged_at", TIMESTAMP, nullable=True))
    with op.batch_alter_table("results") as batch_op:
        batch_op.alter_column("size", server_default=None)
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.add_column(sa.Column("subscription_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("agreement_reference", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("compute_seconds", sa.Float(), nullable=True))
        batch_op.create_foreign_key(
            "fk_tasks_subscription_id", "subscriptions", ["subscription_id"], ["id"]
        )


def _move_hospital_tokens() -> None:
    """Each existing hospital: a principal with its old token, a connection-test subscription."""
    connection = op.get_bind()
    now = datetime.now(UTC)
    rows = connection.execute(sa.text("SELECT id, name, token_sha256 FROM hospitals")).all()
    for hospital_id, name, token_sha256 in rows:
        principal_id = uuid.uuid4().hex
        connection.execute(
            sa.text(
                "INSERT INTO principals (id, name, role, hospital_id, created_at) "
                "VALUES (:id, :name, 'hospital', :hospital_id, :now)"
            ),
            {"id": principal_id, "name": name, "hospital_id": hospital_id, "now": now},
        )
        connection.execute(
            sa.text(
                "INSERT INTO tokens (id, principal_id, token_sha256, created_at) "
                "VALUES (:id, :principal_id, :digest, :now)"
            ),
            {"id": uuid.uuid4().hex, "principal_id": principal_id, "digest": token_sha256,
             "now": now},
        )  # fmt: skip
        connection.execute(
            sa.text(
                "INSERT INTO subscriptions (id, hospital_id, algorithm_id, valid_from, "
                "agreement_reference, controller, processor, created_at) VALUES "
                "(:id, :hospital_id, 'integrity-check', :now, 'connection-test', :name, "
                "'aifi hub operator', :now)"
            ),
            {"id": uuid.uuid4().hex, "hospital_id": hospital_id, "name": name, "now": now},
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.drop_constraint("fk_tasks_subscription_id", type_="foreignkey")
        batch_op.drop_column("compute_seconds")
        batch_op.drop_column("agreement_reference")
        batch_op.drop_column("subscription_id")
    with op.batch_alter_table("results") as batch_op:
        batch_op.drop_column("purged_at")
        batch_op.drop_column("size")
    with op.batch_alter_table("instances") as batch_op:
        batch_op.drop_column("purged_at")
    with op.batch_alter_table("hospitals") as batch_op:
        batch_op.add_column(sa.Column("token_sha256", sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE hospitals SET token_sha256 = (SELECT t.token_sha256 FROM tokens t "
        "JOIN principals p ON p.id = t.principal_id WHERE p.hospital_id = hospitals.id "
        "AND t.revoked_at IS NULL ORDER BY t.created_at DESC LIMIT 1)"
    )
    op.execute("DELETE FROM hospitals WHERE token_sha256 IS NULL")  # no valid token: no access
    with op.batch_alter_table("hospitals") as batch_op:
        batch_op.alter_column("token_sha256", nullable=False)
        batch_op.create_unique_constraint("uq_hospitals_token_sha256", ["token_sha256"])
    op.drop_table("tokens")
    op.drop_table("subscriptions")
    op.drop_table("principals")
    op.drop_table("audit_head")
    op.drop_table("audit_events")
    op.drop_table("algorithms")
