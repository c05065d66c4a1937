"""Schema revisions: fresh databases are created at head; old ones raise an error naming the
upgrade command; `storage.upgrade` brings them to head; the migrations match the models."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, update
from sqlalchemy.engine import make_url

import storage.migrate as migrate
from storage import SchemaVersionError, Storage, database_revision, head_revision, upgrade
from storage.models import VERSION_TABLE, Base

NEXT = '''"""test-only revision: one more index."""
from alembic import op

revision = "0099"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_test_candidate_origin", "bitsearch_candidates", ["origin"])


def downgrade() -> None:
    op.drop_index("ix_test_candidate_origin", table_name="bitsearch_candidates")
'''


def test_fresh_database_is_created_at_head(db_url: str) -> None:
    assert database_revision(db_url) == ()
    Storage(db_url).close()
    assert database_revision(db_url) == (head_revision(),)
    Storage(db_url).close()  # opening again at head is quiet


def test_database_behind_head_names_the_upgrade_command(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    st = Storage(db_url)
    st.create_study("kept", {"version": 1})
    st.close()
    shipped = head_revision()
    # a newer bitsearch: the shipped revisions plus one
    scripts = tmp_path / "migrations"
    shutil.copytree(migrate.SCRIPT_LOCATION, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "0099_next.py").write_text(NEXT.format(head=head_revision()))
    monkeypatch.setattr(migrate, "SCRIPT_LOCATION", scripts)
    shown = make_url(db_url).render_as_string(hide_password=True)
    with pytest.raises(SchemaVersionError) as err:
        Storage(db_url)
    assert f"run: bitsearch db upgrade --db {shown}" in str(err.value)
    assert "0099" in str(err.value)
    assert upgrade(db_url) == ((shipped,), ("0099",))
    st = Storage(db_url)
    assert st.get_study("kept").spec == {"version": 1}
    st.close()


def test_database_from_a_newer_bitsearch(db_url: str) -> None:
    st = Storage(db_url)
    st.close()
    engine = create_engine(db_url)
    version = Table(VERSION_TABLE, MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        conn.execute(update(version).values(version_num="ffff"))
    engine.dispose()
    with pytest.raises(SchemaVersionError, match="newer bitsearch; upgrade bitsearch"):
        Storage(db_url)


def test_shares_a_database_with_other_tables(db_url: str) -> None:
    # Optuna's RDBStorage keeps `studies`, `trials` and `alembic_version` in the same database
    engine = create_engine(db_url)
    md = MetaData()
    for name in ("studies", "alembic_version"):
        Table(name, md, Column("id", Integer, primary_key=True))
    md.create_all(engine)
    engine.dispose()
    st = Storage(db_url)
    st.create_study("s", {"version": 1})
    assert database_revision(db_url) == (head_revision(),)
    st.close()


def test_unversioned_bitsearch_tables_are_refused(db_url: str) -> None:
    engine = create_engine(db_url)
    Base.metadata.create_all(engine)  # tables made without the migrations
    engine.dispose()
    with pytest.raises(SchemaVersionError, match="not created by bitsearch's migrations"):
        Storage(db_url)


def test_migrations_match_the_models(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    Storage(db_url).close()
    engine = create_engine(db_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": False})
        diff = [d for d in compare_metadata(ctx, Base.metadata)]
    engine.dispose()
    assert diff == [], "the models changed without a migration: add one under storage/migrations/versions"


def test_0002_upgrades_a_0001_database_keeping_its_studies(db_url: str) -> None:
    """A database written before studies had a failure reason and a runner (revision 0001) is refused
    until upgraded; the upgrade keeps its studies, with no reason and no runner."""
    assert upgrade(db_url, "0001") == ((), ("0001",))
    engine = create_engine(db_url)
    studies = Table("bitsearch_studies", MetaData(), autoload_with=engine)
    assert "reason" not in studies.c
    with engine.begin() as conn:
        conn.execute(studies.insert().values(name="old", spec={"version": 1}, spec_version=1, state="FAILED",
                                             created_at=datetime.now(timezone.utc),
                                             updated_at=datetime.now(timezone.utc)))
    engine.dispose()
    with pytest.raises(SchemaVersionError, match="bitsearch db upgrade"):
        Storage(db_url)
    assert upgrade(db_url) == (("0001",), (head_revision(),))
    st = Storage(db_url)
    old = st.get_study("old")
    assert (old.state.value, old.reason, old.owner, old.heartbeat_at) == ("FAILED", None, None, None)
    st.set_study_state("old", "FAILED", reason="RuntimeError: boom")
    assert st.get_study("old").reason == "RuntimeError: boom"
    st.close()
