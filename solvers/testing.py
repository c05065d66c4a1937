"""The conformance suite every solver runs through (as optuna's `testing/pytest_samplers.py`), and the
small problem it solves.

A plugin author subclasses `SolverSuite` in a test file and overrides the `make_solver` fixture with
a factory of fresh solvers (a solver keeps state between `ask` and `tell`):

    from solvers.testing import SolverSuite

    class TestMySolver(SolverSuite):
        @pytest.fixture
        def make_solver(self) -> Callable[[], Solver]:
            return lambda: MySolver(trials=4)

The checks are the ask/tell contract in `solvers.base`'s docstring, on a 10-layer problem with two
timestep groups: the first answer is never empty; every proposal is within the budget with one rule
per layer, carries an origin and a JSON tag; told its measurements the solver is done within a bound;
an infeasible budget raises `InfeasibleBudget` naming the limit. pytest is imported here: this module
is for test files only.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest

from quant.config import BitConfig, Bits, TimestepGroups
from quant.layers import Layer
from quant.scores import Scores
from solvers.base import Measurement, Solver, drive
from solvers.problem import InfeasibleBudget, Problem

GROUPS = TimestepGroups.from_spans([(0, 4), (5, 19)])  # 5 and 15 steps: unequal step weights
BITS = tuple(Bits.parse(b) for b in ("W4A8", "W8A8", "W4A16", "W8A16"))
MAX_PROPOSALS = 200  # a solver still asking after this many measured proposals never ends


def make_layers(n_blocks: int = 2) -> list[Layer]:
    layers = [Layer("conv_in", "conv", (64, 4, 3, 3), 2304, 2304 * 4096)]
    for i in range(n_blocks):
        for j, name in enumerate(("attn1.to_q", "attn1.to_k", "attn1.to_v", "ff.proj")):
            out = 128 * (j // 3 + 1)
            layers.append(Layer(f"blocks.{i}.{name}", "linear", (out, 128), out * 128, out * 128 * 1024))
    layers.append(Layer("conv_out", "conv", (4, 64, 3, 3), 2304, 2304 * 4096))
    return layers


def make_scores(layers: list[Layer], groups: TimestepGroups = GROUPS, bits: tuple[Bits, ...] = BITS,
                seed: int = 0, metric: str = "quality") -> Scores:
    """Random but plausible scores: lower bits and early groups degrade more."""
    rng = random.Random(seed)
    values = {}
    for layer in layers:
        s_w, s_a = rng.lognormvariate(0, 1), rng.lognormvariate(-1, 1)
        for g in range(len(groups)):
            for b in bits:
                act = 0.0 if b.a == 16 else s_a * 4.0 ** (-(b.a - 8))
                values[(layer.fqn, g, b)] = (2 - g / len(groups)) * (s_w * 4.0 ** (-(b.w - 4)) + act) * rng.uniform(0.8, 1.2)
    return Scores("test", metric, groups, values)  # type: ignore[arg-type]


def small_problem(budget: str = "wbits=6") -> Problem:
    layers = make_layers()
    return Problem(layers, GROUPS, make_scores(layers), budget, candidates=BITS)


def predicted_measure(problem: Problem) -> Callable[[BitConfig], Measurement]:
    """A 'measurement' without a model: the predicted degradation, as a learning solver is told it."""
    return lambda config: Measurement({"degradation": problem.predicted(config)["objective"]})


class SolverSuite:
    @pytest.fixture
    def make_solver(self) -> Callable[[], Solver]:
        raise NotImplementedError("override the `make_solver` fixture with a factory of the solver under test")

    def test_first_answer_is_within_budget_with_one_rule_per_layer(self, make_solver: Callable[[], Solver]) -> None:
        problem = small_problem()
        proposals = make_solver().ask(problem, 2)
        assert proposals, "the first ask is never empty (InfeasibleBudget instead)"
        for p in proposals:
            assert problem.violations(p.config) == []
            assert set(p.config.resolve({layer.fqn: layer.kind for layer in problem.layers})) == \
                {layer.fqn for layer in problem.layers}
            assert isinstance(p.origin, str) and p.origin
            json.dumps(dict(p.tag))  # the caller stores the tag as JSON

    def test_told_its_measurements_it_is_done_within_a_bound(self, make_solver: Callable[[], Solver]) -> None:
        problem, solver = small_problem(), make_solver()
        told = 0
        while not solver.done:
            proposals = solver.ask(problem, 2)
            assert told or proposals
            for p in proposals:
                assert problem.violations(p.config) == []
                solver.tell(p, predicted_measure(problem)(p.config))
            told += len(proposals)
            assert told <= MAX_PROPOSALS, "still asking: `done` never becomes true"

    def test_drive_runs_it_to_the_end(self, make_solver: Callable[[], Solver]) -> None:
        problem = small_problem()
        assert drive(make_solver(), problem, predicted_measure(problem))

    def test_an_infeasible_budget_names_its_limit(self, make_solver: Callable[[], Solver]) -> None:
        with pytest.raises(InfeasibleBudget) as info:
            make_solver().ask(small_problem("wbits=2"), 1)  # no candidate has fewer than 4 weight bits
        assert info.value.metric == "wbits" and "wbits" in str(info.value)
