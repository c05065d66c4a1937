"""Fixtures shared by every test package: a temporary PostgreSQL database on the server that runs on
127.0.0.1:5432 (trust auth) on the development and CI machines, and a fresh schema per test. When
that server is unreachable, tests that need it are skipped with the reason (`-ra` prints it)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

# `test` is the database the development and CI machines provide; the role may be postgres or root
PG_URLS = (
    [os.environ["BITSEARCH_TEST_PG_URL"]] if os.environ.get("BITSEARCH_TEST_PG_URL") else
    ["postgresql+psycopg://postgres@127.0.0.1:5432/test", "postgresql+psycopg://root@127.0.0.1:5432/test"]
)


def _connectable(url: str) -> str | None:
    """None when `url` connects, else why not."""
    engine = create_engine(url, connect_args={"connect_timeout": 3}, poolclass=None)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    finally:
        engine.dispose()


def _quote(url: URL, name: str) -> str:
    return create_engine(url).dialect.identifier_preparer.quote(name)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[URL]:
    """A temporary database `bitsearch_test_<random>` dropped at the end, so old or parallel runs
    never interfere; where the role may not create databases, the base database (tests then
    isolate by schema anyway)."""
    errors = []
    base = None
    for candidate in PG_URLS:
        why = _connectable(candidate)
        if why is None:
            base = make_url(candidate)
            break
        errors.append(f"{make_url(candidate).render_as_string(hide_password=True)}: {why}")
    if base is None:
        pytest.skip("PostgreSQL not reachable, postgres tests skipped (" + "; ".join(errors) + ")")
    name = f"bitsearch_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {_quote(base, name)}"))
    except Exception:
        admin.dispose()
        yield base
        return
    try:
        yield base.set(database=name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {_quote(base, name)} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture
def pg_url(pg_database: URL) -> Iterator[str]:
    """A fresh schema per test, selected by search_path in the URL (so subprocesses get it too)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(pg_database, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {_quote(pg_database, schema)}"))
    try:
        yield pg_database.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with engine.connect() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {_quote(pg_database, schema)} CASCADE"))
        engine.dispose()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread for the test, then as it was: on 2 shared cores a second OpenMP thread next
    to a busy process ran 50x slower. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
