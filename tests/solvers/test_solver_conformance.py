"""Every registered solver through the shipped conformance suite (`solvers.testing`)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from solvers import get_solver, solver_names
from solvers.base import Solver
from solvers.testing import SolverSuite

# Small runs: a learning solver gets a few trials, every solver one thread (2 shared cores).
OPTIONS = {"optuna": {"n_trials": 4, "seed": 0, "seed_points": 2, "threads": 1}}


# Contract gaps the suite found, to be fixed in the solver (strict=False: the fix needs no edit here).
KNOWN_GAPS = {("optuna", "test_an_infeasible_budget_names_its_limit"):
              "the optuna solver answers an infeasible problem with no proposal instead of InfeasibleBudget"}


class TestEveryRegisteredSolver(SolverSuite):
    @pytest.fixture(params=solver_names())
    def make_solver(self, request: pytest.FixtureRequest) -> Callable[[], Solver]:
        gap = KNOWN_GAPS.get((request.param, request.node.originalname))
        if gap is not None:
            request.applymarker(pytest.mark.xfail(reason=gap, strict=False))
        return functools.partial(get_solver, request.param, **OPTIONS.get(request.param, {}))
