"""Engines, the one session scope, and bounded retries on transient errors.

SQLite (the default, a file next to the user) runs in WAL mode with a busy timeout and foreign keys
on. Write transactions start with `BEGIN IMMEDIATE`: a deferred transaction that reads and then
writes fails at once with "database is locked" when another writer got in between (the busy
handler is not called for lock upgrades), so taking the write lock first lets the busy timeout do
its job. Read-only scopes use a deferred BEGIN and never block writers (WAL).

PostgreSQL is reached through psycopg 3 (`postgresql+psycopg://`); plain `postgresql://` URLs are
mapped to it because psycopg2 is not a dependency.
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

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import OperationalError as SAOperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_URL = "sqlite:///bitsearch.db"
_BEGIN_OPTION = "bitsearch_sqlite_begin"

# SQLSTATEs worth retrying: serialization failure, deadlock, lock not available, admin shutdown,
# cannot connect now; and the whole connection-exception class 08xxx.
_PG_TRANSIENT = {"40001", "40P01", "55P03", "57P01", "57P03"}
_SQLITE_TRANSIENT = ("database is locked", "database is busy", "database table is locked")


def normalize_url(url: str | URL | None) -> URL:
    """A SQLAlchemy URL from what a user types: None -> ./bitsearch.db; a bare path -> SQLite file;
    `postgresql://` / `postgres://` -> the psycopg 3 driver."""
    if url is None:
        url = DEFAULT_URL
    if isinstance(url, str) and "://" not in url:
        url = "sqlite:///" + str(Path(url).expanduser())
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def display_url(url: URL) -> str:
    """The URL as the user should type it back, password hidden."""
    return url.render_as_string(hide_password=True)


def create_engine_for(url: str | URL | None, *, busy_timeout_s: float = 30.0, echo: bool = False) -> Engine:
    u = normalize_url(url)
    if u.get_backend_name() == "sqlite":
        return _sqlite_engine(u, busy_timeout_s, echo)
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "echo": echo}
    return create_engine(u, **kwargs)


def _sqlite_engine(u: URL, busy_timeout_s: float, echo: bool) -> Engine:
    memory = u.database in (None, "", ":memory:")
    kwargs: dict[str, Any] = {"echo": echo, "connect_args": {"timeout": busy_timeout_s}}
    if memory:
        # one shared connection, else every pooled connection sees its own empty database
        kwargs["poolclass"] = StaticPool
        kwargs["connect_args"]["check_same_thread"] = False
    elif u.database:
        Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(u, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # we emit BEGIN ourselves (below); pysqlite's own transaction handling would defer it
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
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
        echo: bool = False,
    ) -> None:
        self.url = normalize_url(url)
        self.retries = retries
        self.engine = create_engine_for(self.url, busy_timeout_s=busy_timeout_s, echo=echo)
        self._read_engine = self.engine.execution_options(**{_BEGIN_OPTION: "DEFERRED"})
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
        self._check_fork()
        session = Session(self._read_engine if readonly else self.engine, expire_on_commit=False)
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
