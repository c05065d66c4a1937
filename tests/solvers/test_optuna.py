from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from quant.config import BitConfig, TimestepGroups
from quant.layers import Layer
from solvers import get_solver, ilp
from solvers.base import Measurement, drive
from solvers.optuna_search import OptunaSolver
from solvers.problem import Problem
from tests.solvers.conftest import BITS, make_scores

GROUPS3 = TimestepGroups.uniform(12, 3)


def synthetic(problem: Problem) -> Callable[[BitConfig], Measurement]:
    """A cheap deterministic 'measurement': the predicted objective plus a fixed per-config wobble."""
    def evaluate(config: BitConfig) -> Measurement:
        wobble = (hash(config.to_json()) % 1000) / 1e5
        return Measurement({"degradation": problem.predicted(config)["objective"] * (1 + wobble)}) \
            if config.groups == problem.groups else Measurement({"degradation": sum(1.0 for _ in config.rules)})
    return evaluate


@pytest.fixture
def problem(layers: list[Layer]) -> Problem:
    return Problem(layers, GROUPS3, make_scores(layers, groups=GROUPS3), "bops=0.3x", candidates=BITS)


@pytest.mark.parametrize("space", ["knobs", "direct"])
def test_first_trials_are_the_ilp_sweep(problem: Problem, space: str, tmp_path: Path) -> None:
    solver = OptunaSolver(n_trials=6, space=space, seed=0, seed_points=3,
                          threads=1, storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s")
    drive(solver, problem, synthetic(problem))
    study = solver.study
    assert study is not None
    front = ilp.sweep(problem, [0.3 * s for s in (0.5, 0.75, 1.0)], threads=1)
    seeded = [BitConfig.from_dict(t.user_attrs["config"]) for t in study.trials[:3]]
    assert [c.to_dict() for c in seeded] == [pt.config.to_dict() for pt in front]
    assert len(study.trials) == 6
    configs = [BitConfig.from_dict(t.user_attrs["config"]) for t in study.best_trials]
    assert configs and all(not problem.violations(c) for c in configs)


def test_knob_trials_stay_within_budget_and_failures_never_reach_the_front(problem: Problem) -> None:
    calls = []

    def evaluate(config: BitConfig) -> Measurement:
        calls.append(config)
        return Measurement({"degradation": math.nan if len(calls) == 2 else float(len(calls))})

    solver = get_solver("optuna", n_trials=5, seed=1, seed_points=2, threads=1, sampler="tpe")
    drive(solver, problem, evaluate)
    study = solver.study  # type: ignore[attr-defined]
    assert study.trials[1].state.name == "FAIL"
    assert all(t.number != 1 for t in study.best_trials)
    for c in calls:
        assert not problem.budget.violations(problem.costs(c), problem.reference)


def test_direct_space_is_for_small_models_only(problem: Problem) -> None:
    big = [Layer(f"l{i}", "linear", (8, 8), 64, 64) for i in range(65)]
    p = Problem(big, GROUPS3, make_scores(big, groups=GROUPS3), "wbits=6", candidates=BITS)
    with pytest.raises(ValueError, match="at most 64 layers"):
        drive(OptunaSolver(space="direct"), p, synthetic(p))
