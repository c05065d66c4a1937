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


class TestEveryRegisteredSolver(SolverSuite):
    @pytest.fixture(params=solver_names())
    def make_solver(self, request: pytest.FixtureRequest) -> Callable[[], Solver]:
        return functools.partial(get_solver, request.param, **OPTIONS.get(request.param, {}))
