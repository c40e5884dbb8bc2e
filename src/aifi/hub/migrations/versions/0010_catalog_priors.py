"""catalog: each version's priors request, so edges pull the priors it asks for

The edge asks the hub's catalog whether an algorithm wants earlier studies of
the same patient (years, same body part, at most how many), as it asks which
attributes to keep. Rows that exist get NULL (no priors) until the hub's next
start refreshes them from the installed manifests.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("algorithms") as batch_op:
        batch_op.add_column(sa.Column("priors", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("algorithms") as batch_op:
        batch_op.drop_column("priors")
