"""A solver written outside the packages, as a plugin author would: it registers by name, proposes,
is told what was measured, and runs through a whole study with no change to search/."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from quant.config import BitConfig, Bits
from quant.layers import Layer
from solvers.base import Measurement, Proposal, SearchSettings, Solver, drive, register
from solvers.problem import Problem
from tests.solvers.conftest import BITS, GROUPS, make_scores


@register("toy")
class ToySolver(Solver):
    """Random uniform bits within the budget, `k` proposals in all; remembers what it was told."""

    def __init__(self, k: int = 3, seed: int = 0) -> None:
        self.k, self.rng = k, random.Random(seed)
        self.asked = 0
        self.told: list[tuple[Proposal, Measurement]] = []

    @classmethod
    def for_search(cls, settings: SearchSettings) -> ToySolver:
        return cls(k=settings.trials, seed=settings.seed)

    def ask(self, problem: Problem, n: int) -> list[Proposal]:
        uniform = [BitConfig.uniform(problem.groups, b) for b in self._common_bits(problem)]
        feasible = [c for c in uniform if not problem.violations(c)]
        if not feasible:  # the contract: never empty, or InfeasibleBudget saying why
            raise problem.diagnose()
        out = []
        for _ in range(min(n, self.k - self.asked)):
            self.asked += 1
            out.append(Proposal(problem.check(self.rng.choice(feasible)), self.name, {"toy": self.asked}))
        return out

    def tell(self, proposal: Proposal, measurement: Measurement) -> None:
        self.told.append((proposal, measurement))

    @property
    def done(self) -> bool:
        return self.asked >= self.k and len(self.told) >= self.asked

    @staticmethod
    def _common_bits(problem: Problem) -> list[Bits]:
        """Bits every layer may run in every group (so a uniform config is a valid one)."""
        common = set(problem.units[0].candidates[0])
        for unit in problem.units:
            for cands in unit.candidates:
                common &= set(cands)
        return sorted(common)


def test_toy_solver_is_told_each_measurement(layers: list[Layer]) -> None:
    from solvers import get_solver

    problem = Problem(layers, GROUPS, make_scores(layers), "wbits=6", candidates=BITS)
    solver = get_solver("toy", k=4)
    runs = drive(solver, problem, lambda c: Measurement({"degradation": problem.predicted(c)["objective"]}),
                 parallelism=3)
    assert len(runs) == 4 and solver.done
    assert all(not problem.violations(p.config) for p, _ in runs)
    with pytest.raises(Exception, match="infeasible"):
        ToySolver().ask(Problem(layers, GROUPS, make_scores(layers), "wbits=1", candidates=BITS), 1)


def test_toy_solver_runs_a_whole_study(tmp_path: Path) -> None:
    import torch

    from search.spec import StudySpec
    from search.study import Study

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = StudySpec(budget=("wbits=6.5",), solver="toy", timestep_groups=2, num_steps=8, trials=3,
                         eval_samples=4, calibration_samples=2, baselines=("W8A8",), full_samples=4)
        study = Study.create("toy", spec, str(tmp_path / "toy.db"))
        told: list[tuple[Proposal, Measurement]] = []
        original = ToySolver.tell

        def spy(self: ToySolver, proposal: Proposal, measurement: Measurement) -> None:
            told.append((proposal, measurement))
            original(self, proposal, measurement)

        ToySolver.tell = spy  # type: ignore[method-assign]
        try:
            study.run(progress=lambda m: None)
        finally:
            ToySolver.tell = original  # type: ignore[method-assign]
    finally:
        torch.set_num_threads(threads)
    assert study.storage.get_study("toy").state.value == "COMPLETE"
    assert len(told) == 3
    cheap = {e.candidate_id: e for e in study.storage.list_evaluations("toy", fidelity="cheap")}
    for proposal, measurement in told:
        assert measurement.reference is not None and measurement.failure is None
        cand = study.storage.get_candidate(measurement.reference)
        assert BitConfig.from_dict(cand.config).to_dict() == proposal.config.to_dict()
        assert _origin(cand.origin) == "toy" and cand.meta.get("toy") is not None
        assert measurement.values["degradation"] == pytest.approx(-cheap[cand.id].metrics["psnr_db"])
    assert study.pareto(("psnr_db", "wbits"))


def _origin(origin: object) -> str:
    return str(getattr(origin, "value", origin))  # an enum before storage kept origins as free text
