"""Opening without creating: `Storage(url, create=False)` and `Storage(url, readonly=True)` never make a
file, a directory, a table or a WAL switch; a missing or foreign database is refused in one line."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

import storage.migrate as migrate
from storage import SchemaVersionError, Storage, StorageError, normalize_url
from storage.errors import DatabaseOpenError


def _journal_mode(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        mode: str = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    return mode


@pytest.mark.parametrize("readonly", [False, True])
def test_missing_sqlite_file_is_not_created(tmp_path: Path, readonly: bool) -> None:
    for path in (tmp_path / "x.db", tmp_path / "missing" / "dir" / "x.db"):
        with pytest.raises(DatabaseOpenError, match=f"no bitsearch database at {path}.*bitsearch launch"):
            Storage(f"sqlite:///{path}", create=False, readonly=readonly)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("readonly", [False, True])
def test_foreign_sqlite_file_is_refused_untouched(tmp_path: Path, readonly: bool) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    conn.close()
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    with pytest.raises(DatabaseOpenError, match="is not a bitsearch database"):
        Storage(str(path), create=False, readonly=readonly)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert _journal_mode(path) == "delete"  # not switched to WAL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_foreign_database_is_refused_without_creating_tables(db_url: str) -> None:
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (id INTEGER)"))
    with pytest.raises(DatabaseOpenError, match="is not a bitsearch database"):
        Storage(db_url, readonly=True)
    assert inspect(engine).get_table_names() == ["users"]
    engine.dispose()


def test_readonly_storage_reads_and_cannot_write(db_url: str) -> None:
    Storage(db_url).create_study("s", {"version": 1})
    st = Storage(db_url, readonly=True)
    assert [s.name for s in st.list_studies()] == ["s"]
    with pytest.raises(StorageError, match="opened it read-only"):
        st.create_study("t", {"version": 1})
    # the connection itself refuses writes too (SQLite query_only, PostgreSQL read-only transactions)
    with pytest.raises(Exception, match="(?i)read-?only"), st.db.session_scope(readonly=True) as s:
        s.execute(text("DELETE FROM bitsearch_studies"))
    assert [s.name for s in Storage(db_url, readonly=True).list_studies()] == ["s"]
    st.close()


def test_readonly_open_of_an_older_schema_names_the_upgrade(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    Storage(db_url).close()
    current = migrate.head_revision()
    monkeypatch.setattr(migrate, "head_revision", lambda: current + "-next")  # this bitsearch is newer
    with pytest.raises(SchemaVersionError, match="bitsearch db upgrade"):
        Storage(db_url, readonly=True)


def test_readonly_sqlite_leaves_a_bitsearch_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    Storage(str(path)).close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    st = Storage(str(path), readonly=True)
    st.list_studies()
    st.close()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("url, words", [
    ("postgresql://h:port/db", "cannot parse database URL"), ("mysql://u@h/db", "'mysql' is not supported"),
    ("", "not a usable file name"), ("a\0b.db", "not a usable file name"),
])
def test_unusable_urls(url: str, words: str) -> None:
    with pytest.raises(StorageError, match=words):
        normalize_url(url)


def test_not_a_database_file(tmp_path: Path) -> None:
    (tmp_path / "x.db").write_text("hello " * 100)
    for kwargs in ({}, {"readonly": True}):
        with pytest.raises(DatabaseOpenError, match="file is not a database"):
            Storage(str(tmp_path / "x.db"), **kwargs)


def test_unreachable_postgres() -> None:
    with pytest.raises(DatabaseOpenError, match="cannot open database postgresql.*127.0.0.1.*port 1"):
        Storage("postgresql://nobody@127.0.0.1:1/none", retries=0)
