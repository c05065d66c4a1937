"""Schema revisions: fresh databases are created at head; old ones raise an error naming the
upgrade command; `storage.upgrade` brings them to head; the migrations match the models."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, inspect, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

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


def _insert_0002_rows(db_url: str) -> None:
    """A study with a candidate of each 0001 origin, one evaluated, written at revision 0002."""
    engine = create_engine(db_url)
    md = MetaData()
    studies, candidates, evaluations = (Table(f"bitsearch_{t}", md, autoload_with=engine)
                                        for t in ("studies", "candidates", "evaluations"))
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        sid = conn.execute(studies.insert().values(name="old", spec={"version": 1}, spec_version=1, state="RUNNING",
                                                   created_at=now, updated_at=now)).inserted_primary_key[0]  # type: ignore[index]
        for i, origin in enumerate(("ilp", "optuna", "greedy", "import", "uniform")):
            conn.execute(candidates.insert().values(
                study_id=sid, config={"version": 1, "i": i}, config_hash=f"{i:064d}", origin=origin,
                state="COMPLETE" if i == 0 else "WAITING", priority=i, fidelity="full", meta={}, attempts=0,
                created_at=now, updated_at=now))
        cid = conn.execute(select(candidates.c.id).where(candidates.c.origin == "ilp")).scalar_one()
        conn.execute(evaluations.insert().values(
            candidate_id=cid, study_id=sid, fidelity="full", metrics={"psnr_db": 30.0}, run_labels={"int8-kernel": 3},
            layers_real=3, layers_simulated=0, backend="int8", machine="m", measured=True, created_at=now))
    # the CHECK of 0001 is there: an origin it did not list is refused
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(candidates.insert().values(
            study_id=sid, config={"version": 1}, config_hash="f" * 64, origin="toy", state="WAITING", priority=0,
            fidelity="full", meta={}, attempts=0, created_at=now, updated_at=now))
    engine.dispose()


def test_0003_frees_the_origin_of_a_0002_database_keeping_its_candidates(db_url: str) -> None:
    """A database whose origins were frozen by a CHECK (revision 0002, with data) is upgraded: its candidates,
    evaluations and the other constraints stay; an origin no migration listed is accepted; the downgrade
    puts the CHECK back."""
    from alembic import command

    assert upgrade(db_url, "0002") == ((), ("0002",))
    _insert_0002_rows(db_url)
    with pytest.raises(SchemaVersionError, match="bitsearch db upgrade"):
        Storage(db_url)
    assert upgrade(db_url) == (("0002",), (head_revision(),))
    st = Storage(db_url)
    cands = st.list_candidates("old")
    assert [c.origin for c in cands] == ["ilp", "optuna", "greedy", "import", "uniform"]
    assert [c.config["i"] for c in cands] == [0, 1, 2, 3, 4]
    [ev] = st.list_evaluations("old")
    assert (ev.origin, ev.metrics, ev.measured, ev.candidate_id) == ("ilp", {"psnr_db": 30.0}, True, cands[0].id)
    new, created = st.add_candidate("old", {"version": 1, "i": 5}, "a-solver-registered-" + "x" * 40)
    assert created and st.get_candidate(new).origin.endswith("x" * 40)  # wider than the 16 characters of 0001
    claimed = st.claim("old", "w")  # the claim index survived the table copy (SQLite)
    assert claimed is not None and claimed.id == cands[4].id  # highest priority first
    st.close()
    engine = create_engine(db_url)
    names = {ix["name"] for ix in inspect(engine).get_indexes("bitsearch_candidates")}
    assert "ix_candidate_claim" in names
    checks = {ck["name"] for ck in inspect(engine).get_check_constraints("bitsearch_candidates")}
    assert "ck_candidate_state" in checks and "ck_candidate_origin" not in checks
    with pytest.raises(IntegrityError), engine.begin() as conn:  # the state CHECK is still enforced
        conn.execute(update(Table("bitsearch_candidates", MetaData(), autoload_with=conn)).values(state="BOGUS"))
    # downgrade: only 0001's origins may remain, then the CHECK is back
    with engine.begin() as conn:
        candidates = Table("bitsearch_candidates", MetaData(), autoload_with=conn)
        conn.execute(candidates.delete().where(candidates.c.id == new))
        command.downgrade(migrate.alembic_config(conn), "0002")
    assert "ck_candidate_origin" in {ck["name"] for ck in inspect(engine).get_check_constraints("bitsearch_candidates")}
    engine.dispose()
