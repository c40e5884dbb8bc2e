"""Alembic migration scripts of the hub's database (applied by :func:`aifi.hub.db.migrate`)."""
