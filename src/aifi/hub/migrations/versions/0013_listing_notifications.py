"""tasks: a notification when a hospital's listing changes (PostgreSQL)

Every insert, delete, or update of a task's state, acknowledgement or
``updated_at`` sends ``NOTIFY aifi_listings, '<hospital id>'`` when its
transaction commits (PostgreSQL folds equal notifications of one
transaction into one). The API processes listen, and a waiting long poll
(:mod:`aifi.hub.polling`) is checked when its hospital's tasks change
instead of every quarter second. A trigger, not the code that changes
tasks: workers, the janitor, the console and outside performers all change
tasks, in other processes. SQLite (one embedded process) has no
notifications; its long polls are checked on a timer.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 23:45:00
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION aifi_listing_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('aifi_listings', OLD.hospital_id);
            ELSE
                PERFORM pg_notify('aifi_listings', NEW.hospital_id);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER tasks_listing_changed"
        " AFTER INSERT OR DELETE OR UPDATE OF state, acknowledged, updated_at ON tasks"
        " FOR EACH ROW EXECUTE FUNCTION aifi_listing_changed()"
    )


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS tasks_listing_changed ON tasks")
    op.execute("DROP FUNCTION IF EXISTS aifi_listing_changed()")
