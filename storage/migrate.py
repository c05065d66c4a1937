"""Alembic migrations, run from code: the scripts ship inside the package (storage/migrations/),
so no alembic.ini is needed at runtime, and the version table is bitsearch's own
(`bitsearch_alembic_version`; Optuna's RDBStorage keeps its `alembic_version` in the same database).

A fresh database is created at head on first open by a command that writes; a command that only reads
refuses a database without bitsearch's tables (another application's file, an empty one) instead of
creating them in it. A database behind head is never upgraded silently (users may share it with an older bitsearch on another machine): opening it raises an
error naming the command that upgrades it. Developers add a revision with
`alembic.command.revision(alembic_config(url), autogenerate=True, message=...)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, inspect, select
from sqlalchemy.exc import DBAPIError

from storage.db import Database, display_url, normalize_url
from storage.errors import DatabaseOpenError, SchemaVersionError, StorageError
from storage.models import VERSION_TABLE, Base

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import URL

SCRIPT_LOCATION = Path(__file__).with_name("migrations")
# Concurrent first opens (8 workers starting at once) must not all create the tables: PostgreSQL
# serializes them on this advisory lock, SQLite on BEGIN IMMEDIATE.
_PG_LOCK_KEY = 0x6269747365617263  # "bitsearc"


def upgrade_command(url: URL) -> str:
    return f"bitsearch db upgrade --db {display_url(url)}"


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.attributes["connection"] = connection
    return cfg


def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = _script().get_current_head()
    assert head is not None, "storage/migrations has no revisions"
    return head


def current_revisions(conn: Connection) -> tuple[str, ...]:
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return tuple(ctx.get_current_heads())


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(_PG_LOCK_KEY)))


def _has_our_tables(conn: Connection) -> bool:
    names = set(inspect(conn).get_table_names())
    return bool(names & set(Base.metadata.tables))


def _run_upgrade(conn: Connection, target: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(conn), target)


def check_schema(conn: Connection, url: URL, *, create: bool = True) -> None:
    """Pass a database at head; with `create`, make bitsearch's tables in one that has none; raise
    SchemaVersionError or DatabaseOpenError otherwise."""
    if create:
        _lock(conn)
    current = current_revisions(conn)
    head = head_revision()
    if not current:
        if _has_our_tables(conn):
            raise SchemaVersionError(
                f"database {display_url(url)} has bitsearch tables but no {VERSION_TABLE} table; it was "
                "not created by bitsearch's migrations. Point --db at a new database"
            )
        if not create:
            raise DatabaseOpenError(
                f"{display_url(url)} is not a bitsearch database (no {VERSION_TABLE} table); check --db, "
                "or create one with `bitsearch launch --db ...`"
            )
        _run_upgrade(conn)
        return
    if current == (head,):
        return
    script = _script()
    if not all(_known(script, rev) for rev in current):
        raise SchemaVersionError(
            f"database {display_url(url)} has schema revision {', '.join(current)}, which this bitsearch "
            f"does not know (its newest is {head}): it was written by a newer bitsearch; upgrade bitsearch"
        )
    raise SchemaVersionError(
        f"database {display_url(url)} has schema revision {', '.join(current)}; this bitsearch needs "
        f"{head}. Back it up, then run: {upgrade_command(url)}"
    )


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except Exception:  # alembic raises its own "Can't locate revision" errors
        return False


# What to check when the first connection fails, by the words of the driver's message.
_OPEN_HINTS = (
    ("file is not a database", "check --db"),
    ("unable to open database file", "check that the file's directory exists and is readable"),
    ("readonly database", "the file is read-only; check its permissions, or use another --db"),
    ("connection refused", "check the host and port, and that the PostgreSQL server is running"),
    ("timeout expired", "check the host and port, and that the PostgreSQL server is running"),
    ("authentication failed", "check the user name and password"),
    ("does not exist", "check the user and database names"),
)


def explain(exc: DBAPIError) -> str:
    """The driver's message in one line, with what to check (for errors a user's --db or files cause)."""
    text = str(exc.orig).strip()
    first = text.splitlines()[0] if text else type(exc.orig).__name__
    hint = next((h for words, h in _OPEN_HINTS if words in text.lower()), "check --db")
    return f"{first}; {hint}"


@contextmanager
def _opening(db: Database) -> Iterator[None]:
    """Turn the driver errors a --db can cause (no server, a non-database file, no permission) into
    one-line DatabaseOpenErrors naming the database and what to check."""
    try:
        yield
    except DBAPIError as e:
        raise DatabaseOpenError(f"cannot open database {display_url(db.url)}: {explain(e)}") from e


def open_schema(db: Database, *, create: bool) -> None:
    """The first use of a database: check its schema (with `create`, make it when there is none)."""
    with _opening(db):
        # without `create` nothing is written: a read transaction never takes SQLite's write lock
        db.run(lambda s: check_schema(s.connection(), db.url, create=create), readonly=not create)


def upgrade(url: str | URL | None = None, revision: str = "head") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Migrate the database at `url` to `revision` (what `bitsearch db upgrade` runs).
    Returns the revisions before and after."""
    db = Database(url)
    try:
        with _opening(db), db.engine.connect() as conn, _foreign_keys_off(conn), conn.begin():
            _lock(conn)
            before = current_revisions(conn)
            if not before and _has_our_tables(conn):
                check_schema(conn, db.url)  # raises the "not created by bitsearch" error
            _run_upgrade(conn, revision)
            _check_foreign_keys(conn)
            after = current_revisions(conn)
        return before, after
    finally:
        db.dispose()


@contextmanager
def _foreign_keys_off(conn: Connection) -> Iterator[None]:
    """SQLite without foreign key enforcement while migrations run. Batch mode copies a table and drops
    the original, and with enforcement on that DROP deletes the rows of every table that references it
    with ON DELETE CASCADE (altering `bitsearch_candidates` would empty `bitsearch_evaluations`). The
    pragma is a no-op inside a transaction, so it is set on the driver's connection before ours begins
    (the same way storage/db.py sets it on connect)."""
    if conn.dialect.name != "sqlite":
        yield
        return
    raw = conn.connection.dbapi_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys=ON")


def _check_foreign_keys(conn: Connection) -> None:
    """With enforcement off (above), what a migration left dangling is found here, before it commits."""
    if conn.dialect.name == "sqlite":
        dangling = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
        if dangling:
            raise StorageError(f"the migration left rows referencing missing rows ({dangling[:3]}); "
                               "nothing was changed")


def database_revision(url: str | URL | None = None) -> tuple[str, ...]:
    """The revisions the database at `url` is at (empty for a database bitsearch never touched)."""
    db = Database(normalize_url(url))
    try:
        return db.run(lambda s: current_revisions(s.connection()), readonly=True)
    finally:
        db.dispose()
