"""Storage: the SQLAlchemy schema and session helpers; the single source of truth."""
