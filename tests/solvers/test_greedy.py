from __future__ import annotations

import pytest

from quant.layers import Layer
from solvers import get_solver, ilp
from solvers.greedy import greedy
from solvers.problem import InfeasibleBudget, Problem
from tests.solvers.conftest import BITS, GROUPS, make_scores


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("budget", ["wbits=5", "bops=0.2x", "size=0.3x", "memory=0.35x,bops=0.25x"])
def test_greedy_is_feasible_and_never_better_than_ilp(layers: list[Layer], seed: int, budget: str) -> None:
    p = Problem(layers, GROUPS, make_scores(layers, seed=seed), budget, candidates=BITS)
    g = greedy(p)
    assert not p.violations(g)
    assert p.predicted(g)["objective"] >= p.predicted(ilp.solve(p, threads=1))["objective"] * (1 - 1e-6)


def test_greedy_respects_pins_ties_switches_and_reports_infeasible(layers: list[Layer]) -> None:
    s = make_scores(layers)
    p = Problem(layers, GROUPS, s, "wbits=4.8", candidates=BITS, pins={"conv_in": "W8A8"},
                ties=[r"re:(blocks\.\d+)\.attn1\.to_[qkv]"], max_weight_switches=0)
    [cfg] = get_solver("greedy").solve(p)
    assert cfg.layer_bits("conv_in") == p.units[0].candidates[0] * 2
    assert all(p.switches(pl) == 0 for pl in p.plans_of(cfg))
    with pytest.raises(InfeasibleBudget, match="wbits"):
        greedy(p.replace(budget="wbits=3"))
