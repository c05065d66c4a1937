"""`bitsearch delete`: removes a dead study and everything of it (its Optuna study too), asks first,
and refuses a study whose runner is alive unless --force."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from search.cli import app
from search.spec import StudySpec
from storage import Storage
from storage.models import Base
from tests.storage.conftest import bit_config


def _study(st: Storage, name: str, **spec: object) -> None:
    st.create_study(name, StudySpec(**spec).to_dict())  # type: ignore[arg-type]
    st.add_layers(name, [{"fqn": "blocks.0.lin", "kind": "linear", "weight_shape": [4, 4], "params": 16, "macs": 16}])
    st.add_candidates(name, [bit_config(0), bit_config(1)], "ilp")
    done = st.claim(name, owner="old-worker")
    assert done is not None
    st.complete(done.id, "old-worker", metrics={"psnr_db": 30.0}, backend="int8", machine="m",
                run_labels={"int8-kernel": 1})
    st.put_artifact(name, "samples", "grid.png", data=b"png", candidate_id=done.id)
    st.set_study_state(name, "RUNNING")


def _rows(st: Storage) -> dict[str, int]:
    """Rows per bitsearch table (the version table aside)."""
    with st.db.session_scope(readonly=True) as s:
        return {t.name: int(s.scalar(select(func.count()).select_from(t)) or 0) for t in Base.metadata.sorted_tables}


def _delete(db: str, *args: str, answer: str = "") -> tuple[int, str]:
    result = CliRunner().invoke(app, ["delete", *args, "--db", db], input=answer)
    return result.exit_code, result.stderr


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/b.db"


def test_deletes_a_dead_study_and_nothing_else(db: str) -> None:
    st = Storage(db)
    _study(st, "keep")
    before = _rows(st)
    _study(st, "dead")  # RUNNING, but no heartbeat and no lease: its runner died
    code, err = _delete(db, "dead", "--yes")
    assert code == 0, err
    assert [s.name for s in st.list_studies()] == ["keep"]
    assert _rows(st) == before


def test_asks_first(db: str) -> None:
    st = Storage(db)
    _study(st, "s")
    code, err = _delete(db, "s", answer="n\n")
    assert code != 0 and err.startswith("error: nothing deleted")
    assert [s.name for s in st.list_studies()] == ["s"]
    code, err = _delete(db, "s", answer="y\n")
    assert code == 0, err
    assert st.list_studies() == []


def test_refuses_a_study_being_evaluated_unless_forced(db: str) -> None:
    st = Storage(db)
    _study(st, "busy")
    assert st.claim("busy", owner="worker-1") is not None  # a live lease: heartbeat now
    code, err = _delete(db, "busy", "--yes")
    assert code != 0 and "RUNNING and its runner is alive" in err and "--force" in err
    assert [s.name for s in st.list_studies()] == ["busy"]
    code, err = _delete(db, "busy", "--yes", "--force")
    assert code == 0, err
    assert st.list_studies() == []


def test_deletes_its_optuna_study(db: str) -> None:
    import optuna

    st = Storage(db)
    _study(st, "tuned", solver="optuna")
    _study(st, "other", solver="optuna")
    for name in ("bitsearch/tuned", "bitsearch/other"):
        optuna.create_study(storage=db, study_name=name)
    code, err = _delete(db, "tuned", "--yes")
    assert code == 0, err
    assert optuna.get_all_study_names(db) == ["bitsearch/other"]
    # an optuna study that never got its first round is no obstacle
    optuna.delete_study(study_name="bitsearch/other", storage=db)
    code, err = _delete(db, "other", "--yes")
    assert code == 0, err
    assert st.list_studies() == []
