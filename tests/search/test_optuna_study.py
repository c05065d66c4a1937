"""The `optuna` solver driving a real study on the built-in model (tiny settings): its Optuna study
lives in the same database, every trial is told the measured quality of its candidate, a coordinator
that dies mid-round resumes with no candidate evaluated twice, and `patience` stops a stalled search."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest

from quant.config import BitConfig
from quant.cost import costs
from search.executors import LocalExecutor
from search.spec import StudySpec
from search.study import Study
from solvers.optuna_search import CANDIDATE_ATTR, optuna_study_name
from storage import CandidateState

SPEC = StudySpec(budget=("wbits=4.5",), solver="optuna", timestep_groups=2, num_steps=8, trials=6, eval_samples=4,
                 calibration_samples=2, baselines=("W4A8",), full_samples=4, patience=0)


def _quiet(_m: str) -> None:
    pass


class DyingExecutor(LocalExecutor):
    """Evaluates normally for `rounds` rounds, then dies at the start of the next (a killed coordinator)."""

    def __init__(self, rounds: int) -> None:
        super().__init__(threads_per_worker=1)
        self.rounds = rounds

    def run(self, *args: Any, **kwargs: Any) -> int:
        if self.rounds == 0:
            raise KeyboardInterrupt("coordinator killed")
        self.rounds -= 1
        return super().run(*args, **kwargs)


def _trials(study: Study) -> list[optuna.trial.FrozenTrial]:
    url = study.storage.url.render_as_string(hide_password=False)
    return optuna.load_study(study_name=optuna_study_name(study.name), storage=url).get_trials()


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> Study:
    import torch

    torch.set_num_threads(1)
    db = str(tmp_path_factory.mktemp("db") / "o.db")
    study = Study.create("o", SPEC, db)
    with pytest.raises(KeyboardInterrupt):
        study.run(progress=_quiet, executor=DyingExecutor(rounds=3))
    interrupted = _trials(study)
    states = Counter(t.state.name for t in interrupted)
    assert states["COMPLETE"] >= 2 and states["RUNNING"] == 1, states  # died with a trial asked, not told
    again = Study.load("o", db)
    again.run(progress=_quiet)
    return again


def test_optuna_study_lives_in_the_same_database_and_is_told_measured_quality(resumed: Study) -> None:
    trials = _trials(resumed)
    assert len(trials) == SPEC.trials and all(t.state.name in ("COMPLETE", "FAIL") for t in trials)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) >= 4
    cheap = {e.candidate_id: e for e in resumed.storage.list_evaluations("o", fidelity="cheap")}
    layers = resumed.layers()
    for t in complete:
        cid = t.user_attrs[CANDIDATE_ATTR]
        cand = resumed.storage.get_candidate(cid)
        assert cand.meta.get("optuna_trial") is not None and cand.origin in ("ilp", "optuna")
        assert t.values[0] == pytest.approx(-cheap[cid].metrics["psnr_db"])  # the real measurement
        wbits = costs(BitConfig.from_dict(cand.config), layers).avg_weight_bits
        assert t.values[1] == pytest.approx(wbits) and wbits <= 4.5 + 1e-9  # within the budget
    seeds = [t for t in complete if "seed_config" in t.user_attrs]
    assert seeds and all(resumed.storage.get_candidate(t.user_attrs[CANDIDATE_ATTR]).origin == "ilp"
                         for t in seeds)


def test_resume_after_a_killed_coordinator_evaluates_each_candidate_once(resumed: Study) -> None:
    cands = resumed.storage.list_candidates("o")
    assert all(c.state == CandidateState.COMPLETE for c in cands)
    per = Counter((e.candidate_id, e.fidelity) for e in resumed.storage.list_evaluations("o"))
    assert set(per.values()) == {1}
    assert {c for c, f in per if f == "cheap"} == {c.id for c in cands}
    assert resumed.storage.get_study("o").state.value == "COMPLETE"
    assert resumed.pareto(("psnr_db", "wbits"))


def test_patience_stops_a_search_whose_front_stopped_improving(tmp_path: Path) -> None:
    from solvers.pareto import trailing_stale

    spec = dataclasses.replace(SPEC, trials=30, patience=2)
    study = Study.create("p", spec, str(tmp_path / "p.db"))
    messages: list[str] = []
    study.run(progress=messages.append)
    trials = _trials(study)
    done = [tuple(t.values) for t in trials if t.state.name == "COMPLETE"]
    assert len(trials) < 30 and any("did not improve in the last 2 trials" in m for m in messages)
    assert trailing_stale(done, (0.05, 0.0)) >= 2
    assert study.storage.get_study("p").state.value == "COMPLETE"


def test_optuna_dashboard_opens_the_study_from_the_database_url(resumed: Study) -> None:
    import io
    import json
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    app = wsgi(resumed.storage.url.render_as_string(hide_password=False))
    environ: dict[str, Any] = {"PATH_INFO": "/api/studies", "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, *a: status.append(s)))  # type: ignore[arg-type]
    assert status[0].startswith("200"), status
    studies = {s["study_name"]: s for s in json.loads(body)["study_summaries"]}
    assert studies[optuna_study_name("o")]["directions"] == ["minimize", "minimize"]


@pytest.mark.postgres
def test_optuna_study_on_postgresql_lives_in_the_same_schema(pg_url: str) -> None:
    spec = dataclasses.replace(SPEC, trials=3)
    study = Study.create("pg", spec, pg_url)
    study.run(progress=_quiet)
    trials = _trials(study)  # loaded from the study's own URL (its search_path schema)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    cheap = {e.candidate_id for e in study.storage.list_evaluations("pg", fidelity="cheap")}
    assert {t.user_attrs[CANDIDATE_ATTR] for t in trials} <= cheap
    assert study.storage.get_study("pg").state.value == "COMPLETE"
    study.storage.close()
