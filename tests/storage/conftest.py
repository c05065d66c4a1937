"""Storage fixtures: `db_url` runs a test on a fresh SQLite file and, marked `postgres`, on a fresh
schema of a temporary PostgreSQL database (`pg_url`, tests/conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from storage import Storage


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/bitsearch.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def storage(db_url: str) -> Iterator[Storage]:
    st = Storage(db_url)
    yield st
    st.close()


def bit_config(i: int) -> dict[str, object]:
    """A distinct, valid BitConfig dict per i (what BitConfig.to_dict() produces)."""
    from quant.config import BitConfig, TimestepGroups

    rules = {"_default": "W8A8", f"re:blocks\\.{i}\\..*": "W4A8"}
    return BitConfig(TimestepGroups.uniform(20, 1), rules).to_dict()
