"""Alembic migration scripts (run by storage.migrate; no alembic.ini)."""
