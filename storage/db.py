"""Engines, the one session scope, and bounded retries on transient errors.

SQLite (the default, a file next to the user) runs in WAL mode with a busy timeout and foreign keys
on. Write transactions start with `BEGIN IMMEDIATE`: a deferred transaction that reads and then
writes fails at once with "database is locked" when another writer got in between (the busy
handler is not called for lock upgrades), so taking the write lock first lets the busy timeout do
its job. Read-only scopes use a deferred BEGIN and never block writers (WAL).

PostgreSQL is reached through psycopg 3 (`postgresql+psycopg://`); plain `postgresql://` URLs are
mapped to it because psycopg2 is not a dependency.

Opening modes: `create=True` (commands that write: launch, import, db upgrade) makes a missing SQLite
file, its directories and WAL mode. `create=False` opens only what exists (a missing file is an error,
not an empty new database) and leaves the journal mode alone: WAL is a persistent property of the file,
set when bitsearch created it, and switching someone else's file to WAL would outlive this process.
`readonly=True` (commands that only read) also makes the connection itself unable to write
(SQLite `query_only`, PostgreSQL read-only transactions), so a bug cannot alter a database either.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import OperationalError as SAOperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from storage.errors import DatabaseOpenError, StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_URL = "sqlite:///bitsearch.db"
_BEGIN_OPTION = "bitsearch_sqlite_begin"

# SQLSTATEs worth retrying: serialization failure, deadlock, lock not available, admin shutdown,
# cannot connect now; and the whole connection-exception class 08xxx.
_PG_TRANSIENT = {"40001", "40P01", "55P03", "57P01", "57P03"}
_SQLITE_TRANSIENT = ("database is locked", "database is busy", "database table is locked")


_URL_HELP = "write a SQLite file (runs.db, sqlite:///runs.db) or postgresql://user@host/db"


def normalize_url(url: str | URL | None) -> URL:
    """A SQLAlchemy URL from what a user types: None -> ./bitsearch.db; a bare path -> SQLite file;
    `postgresql://` / `postgres://` -> the psycopg 3 driver. Anything else raises StorageError."""
    if url is None:
        url = DEFAULT_URL
    if isinstance(url, str) and "://" not in url:
        if not url.strip() or "\0" in url:
            raise StorageError(f"database {url!r} is not a usable file name; {_URL_HELP}")
        url = "sqlite:///" + str(Path(url).expanduser())
    try:
        u = make_url(url)
    except (ValueError, TypeError) as e:  # ArgumentError is a ValueError; a bad port raises int()'s
        raise StorageError(f"cannot parse database URL {str(url)!r} ({e}); {_URL_HELP}") from None
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() not in ("sqlite", "postgresql"):
        raise StorageError(f"database URL {display_url(u)}: {u.get_backend_name()!r} is not supported; {_URL_HELP}")
    return u


def display_url(url: URL) -> str:
    """The URL as the user should type it back, password hidden."""
    return url.render_as_string(hide_password=True)


def create_engine_for(
    url: str | URL | None, *, busy_timeout_s: float = 30.0, echo: bool = False, create: bool = True,
    readonly: bool = False,
) -> Engine:
    """The engine for `url`; `create` and `readonly` as in the module docstring."""
    u = normalize_url(url)
    if u.get_backend_name() == "sqlite":
        return _sqlite_engine(u, busy_timeout_s, echo, create=create and not readonly, readonly=readonly)
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "echo": echo}
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in u.query:
        # a host that drops packets would otherwise hang each of run()'s retries for minutes
        connect_args["connect_timeout"] = 10
    if readonly:
        # every transaction read-only; kept apart from a user's own `options` (e.g. search_path)
        options = u.query.get("options", "")
        u = u.update_query_dict({"options": f"{options} -cdefault_transaction_read_only=on".strip()})
    return create_engine(u, connect_args=connect_args, **kwargs)


def _sqlite_file(u: URL) -> Path | None:
    """The file a SQLite URL names; None for an in-memory database or a URI the user wrote themselves."""
    if u.database in (None, "", ":memory:") or u.query.get("uri") == "true":
        return None
    return Path(u.database).expanduser()


def _sqlite_engine(u: URL, busy_timeout_s: float, echo: bool, *, create: bool, readonly: bool) -> Engine:
    memory = u.database in (None, "", ":memory:")
    path = _sqlite_file(u)
    kwargs: dict[str, Any] = {"echo": echo, "connect_args": {"timeout": busy_timeout_s}}
    if memory:
        # one shared connection, else every pooled connection sees its own empty database
        kwargs["poolclass"] = StaticPool
        kwargs["connect_args"]["check_same_thread"] = False
    elif path is not None and create:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif path is not None:
        if not path.is_file():
            raise DatabaseOpenError(
                f"no bitsearch database at {path}"
                + ("" if path.parent.is_dir() else f" (directory {path.parent} does not exist)")
                + "; check --db, or create one with `bitsearch launch --db ...`"
            )
        # mode=rw: SQLite never creates the file, even if it vanishes between the check and the connect
        u = u.set(database=f"file:{quote(str(path.resolve()))}").update_query_dict({"mode": "rw", "uri": "true"})
    engine = create_engine(u, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # we emit BEGIN ourselves (below); pysqlite's own transaction handling would defer it
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not memory:
            if create:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
        if readonly:
            cur.execute("PRAGMA query_only=ON")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "IMMEDIATE")
        conn.exec_driver_sql("BEGIN DEFERRED" if mode == "DEFERRED" else "BEGIN IMMEDIATE")

    return engine


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the whole transaction may succeed."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    msg = str(orig).lower()
    if any(m in msg for m in _SQLITE_TRANSIENT):
        return True
    sqlstate = getattr(orig, "sqlstate", None)  # psycopg 3
    if sqlstate is not None:
        return sqlstate in _PG_TRANSIENT or sqlstate.startswith("08")
    # psycopg raises OperationalError without a SQLSTATE when the server cannot be reached
    return isinstance(exc, SAOperationalError) and type(orig).__module__.startswith("psycopg") and (
        "connection" in msg or "server closed" in msg
    )


def backoff_s(attempt: int, base_s: float = 0.02, cap_s: float = 2.0) -> float:
    """Exponential backoff with full jitter: workers that collided do not collide again in step."""
    return random.uniform(0.5, 1.5) * min(cap_s, base_s * 2**attempt)


class Database:
    """An engine plus the one way to use it: `session_scope()` (commit or roll back) and `run(fn)`
    (the same, retried on transient errors). Safe to use after fork: a child process gets fresh
    connections instead of sharing its parent's sockets."""

    def __init__(
        self, url: str | URL | None = None, *, busy_timeout_s: float = 30.0, retries: int = 8,
        echo: bool = False, create: bool = True, readonly: bool = False,
    ) -> None:
        self.url = normalize_url(url)
        self.retries = retries
        self.readonly = readonly
        self.engine = create_engine_for(self.url, busy_timeout_s=busy_timeout_s, echo=echo, create=create,
                                        readonly=readonly)
        self._read_engine = self.engine.execution_options(**{_BEGIN_OPTION: "DEFERRED"})
        # BEGIN IMMEDIATE takes SQLite's write lock: a read-only database must never hold up a running study
        self._write_engine = self._read_engine if readonly else self.engine
        self._pid = os.getpid()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:
            # close=False: the parent still owns those connections; just forget them here
            self.engine.dispose(close=False)
            self._pid = os.getpid()

    @contextmanager
    def session_scope(self, *, readonly: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed when the block ends, rolled back on any error."""
        if self.readonly and not readonly:
            # the connection would refuse the first write anyway; this names why
            raise StorageError(f"cannot write to {display_url(self.url)}: this command opened it read-only")
        self._check_fork()
        session = Session(self._read_engine if readonly else self._write_engine, expire_on_commit=False)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def run(self, fn: Callable[[Session], T], *, readonly: bool = False) -> T:
        """`fn(session)` in a session scope, re-run from the start (bounded, jittered) on transient
        errors. `fn` must not have effects outside the database: it may run more than once.

        A connection lost during COMMIT leaves it unknown whether the commit happened; the retry
        then may repeat the work (e.g. claim a second candidate). The first one stays RUNNING
        without heartbeats and goes back to WAITING when its lease expires: delayed, never lost."""
        for attempt in range(self.retries + 1):
            try:
                with self.session_scope(readonly=readonly) as session:
                    return fn(session)
            except DBAPIError as exc:
                if attempt >= self.retries or not is_transient(exc):
                    raise
                delay = backoff_s(attempt)
                log.debug("transient database error (%s); retry %d in %.3fs", exc.orig, attempt + 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()
