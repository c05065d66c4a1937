"""Engines and retries: transient errors are retried with backoff, others are not."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import psycopg.errors
import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError, OperationalError

from storage import Storage, is_transient, normalize_url
from storage.db import Database
from tests.storage.conftest import bit_config


def _transient_error(dialect: str) -> Exception:
    if dialect == "sqlite":
        return sqlite3.OperationalError("database is locked")
    return psycopg.errors.SerializationFailure("could not serialize access due to concurrent update")


def test_transient_error_is_retried(storage: Storage) -> None:
    storage.create_study("s", {"version": 1})
    storage.add_candidate("s", bit_config(0), "ilp")
    failures = []

    def once(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("UPDATE") and not failures:
            failures.append(statement)
            raise _transient_error(storage.db.dialect)

    event.listen(storage.db.engine, "before_cursor_execute", once)
    try:
        c = storage.claim("s", "w")
    finally:
        event.remove(storage.db.engine, "before_cursor_execute", once)
    assert len(failures) == 1
    assert c is not None and c.attempts == 1  # the failed try was rolled back, not counted


def test_retries_are_bounded_and_only_for_transient_errors(storage: Storage) -> None:
    db = Database(storage.url, retries=2)
    calls = []

    def locked(_session: Any) -> None:
        calls.append(1)
        raise OperationalError("UPDATE x", {}, _transient_error(db.dialect))

    with pytest.raises(OperationalError):
        db.run(locked)
    assert len(calls) == 3

    calls.clear()

    def broken(_session: Any) -> None:
        calls.append(1)
        raise IntegrityError("INSERT x", {}, Exception("UNIQUE constraint failed"))

    with pytest.raises(IntegrityError):
        db.run(broken)
    assert len(calls) == 1
    db.dispose()


def test_sqlite_writer_waits_for_a_held_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    st = Storage(url, busy_timeout_s=0.05)  # shorter than the lock: the retries must bridge it
    st.create_study("s", {"version": 1})
    st.add_candidate("s", bit_config(0), "ilp")
    other = sqlite3.connect(tmp_path / "b.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.3, other.rollback)
    timer.start()
    try:
        assert st.claim("s", "w") is not None
    finally:
        timer.join()
        other.close()
        st.close()


def test_is_transient() -> None:
    def wrap(orig: Exception) -> OperationalError:
        return OperationalError("SELECT 1", {}, orig)

    assert is_transient(wrap(sqlite3.OperationalError("database is locked")))
    assert is_transient(wrap(psycopg.errors.SerializationFailure("x")))
    assert is_transient(wrap(psycopg.errors.DeadlockDetected("x")))
    assert is_transient(wrap(psycopg.OperationalError("connection to server at 127.0.0.1 failed")))
    assert not is_transient(wrap(sqlite3.OperationalError("no such table: x")))
    assert not is_transient(wrap(psycopg.errors.UndefinedTable("x")))
    assert not is_transient(ValueError("database is locked"))


def test_normalize_url(tmp_path: Path) -> None:
    assert normalize_url(None).render_as_string() == "sqlite:///bitsearch.db"
    assert normalize_url(str(tmp_path / "x.db")).database == str(tmp_path / "x.db")
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
