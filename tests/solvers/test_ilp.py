from __future__ import annotations

import itertools

import pytest

from quant.budget import Budget
from quant.config import BitConfig, Bits, TimestepGroups
from quant.layers import Layer
from quant.scores import Scores
from solvers import ilp
from solvers.problem import InfeasibleBudget, Problem, SolverError, SolverTimeout
from tests.solvers.conftest import BITS, GROUPS, make_layers, make_scores

T = 1  # one solver thread: the test machine is shared


def make(layers: list[Layer], scores: Scores | list[Scores], budget: str, **kw: object) -> Problem:
    return Problem(layers, scores.groups if isinstance(scores, Scores) else GROUPS, scores, budget,  # type: ignore[arg-type]
                   candidates=kw.pop("candidates", BITS), **kw)  # type: ignore[arg-type]


def within(p: Problem, config: BitConfig) -> bool:
    return not p.budget.violations(p.costs(config), p.reference)


def brute_force(p: Problem) -> float:
    """Best objective over every config (tiny problems only), feasibility by quant.cost.costs."""
    best = float("inf")
    per_unit = [list(itertools.product(*u.candidates)) for u in p.units]
    for plans in itertools.product(*per_unit):
        cfg = p.config(plans)
        if not p.violations(cfg):
            best = min(best, p.objective(plans))
    return best


@pytest.mark.parametrize("budget", ["wbits=5.5", "bops=0.2x", "size=0.3x", "memory=0.3x,bops=0.25x"])
def test_optimal_matches_brute_force(budget: str) -> None:
    layers = make_layers(1)[:3]  # 3 layers x 2 groups x 3 pairs: 729 configs to enumerate
    bits = BITS[:3]
    p = make(layers, make_scores(layers, bits=bits), budget, candidates=bits)
    cfg = ilp.solve(p, threads=T)
    assert within(p, cfg)
    assert p.predicted(cfg)["objective"] == pytest.approx(brute_force(p), rel=1e-6)


@pytest.mark.parametrize("backend", ["cbc", "highs"])
@pytest.mark.parametrize("budget", ["wbits=5", "wbits=6,bops=0.22x", "size=0.28x"])
def test_tiny_scores_are_rescaled(layers: list[Layer], scores: Scores, backend: str, budget: str) -> None:
    """Real sensitivities sum to ~1e-5, but solvers prune within an ABSOLUTE tolerance (HiGHS: 1e-6)
    whatever the relative gap: the objective the solver sees must be >= 1 at any score magnitude."""
    import pulp

    tiny = Scores(scores.estimator, scores.metric, scores.groups, {k: v * 1e-8 for k, v in scores.values.items()})
    p, q = make(layers, scores, budget), make(layers, tiny, budget)
    model = ilp._Model(q)
    assert model.solve(backend, ilp.DEFAULT_GAP, T, None)
    assert pulp.value(model.prob.objective) >= 1 - 1e-9
    best = p.predicted(ilp.solve(p, backend, threads=T))["objective"]
    assert q.predicted(ilp.solve(q, backend, threads=T))["objective"] == pytest.approx(best * 1e-8, rel=1e-6)


@pytest.mark.parametrize("backend", ["cbc", "highs"])
@pytest.mark.parametrize("budget", ["wbits=5", "bops=0.2x", "size=0.28x", "memory=0.3x", "wbits=6,bops=0.22x"])
def test_every_budget_is_met_by_quant_costs(layers: list[Layer], scores: Scores, backend: str, budget: str) -> None:
    p = make(layers, scores, budget)
    cfg = ilp.solve(p, backend, threads=T)
    assert within(p, cfg) and set(cfg.rules) == {layer.fqn for layer in layers}


def test_cbc_and_highs_agree(layers: list[Layer], scores: Scores) -> None:
    p = make(layers, scores, "wbits=5.2,bops=0.2x")
    objs = [p.predicted(ilp.solve(p, b, threads=T))["objective"] for b in ("cbc", "highs")]
    assert objs[0] == pytest.approx(objs[1], rel=1e-6)


def test_infeasible_names_binding_limit_and_smallest_value(layers: list[Layer], scores: Scores) -> None:
    p = make(layers, scores, "wbits=8,bops=0.05x")
    with pytest.raises(InfeasibleBudget, match=r"bops=0.05x is infeasible.*at least 0.125x") as err:
        ilp.solve(p, threads=T)
    assert err.value.metric == "bops" and err.value.smallest == pytest.approx(0.125)  # all W4A8
    ilp.solve(p.replace(budget=f"wbits=8,bops={err.value.smallest}x"), threads=T)  # the value is feasible


def test_jointly_infeasible_limits_are_named(layers: list[Layer], scores: Scores) -> None:
    # each alone is reachable: all W4A16 gives wbits 4 (bops 0.25x), all W8A4 bops 0.125x (wbits 8)
    bits = (Bits(4, 16), Bits(8, 4))
    p = make(layers, make_scores(layers, bits=bits), "wbits=4,bops=0.2x", candidates=bits)
    with pytest.raises(InfeasibleBudget, match="given the other limits") as err:
        ilp.solve(p, threads=T)
    assert err.value.metric == "wbits" and err.value.smallest > 4


def test_pins_and_ties_are_respected(layers: list[Layer], scores: Scores) -> None:
    ties = [r"re:(blocks\.\d+)\.attn1\.to_[qkv]"]
    p = make(layers, scores, "wbits=4.6", pins={"re:conv_.*": "W8A8", "conv_out": "W8A16"}, ties=ties)
    cfg = ilp.solve(p, threads=T)
    assert cfg.layer_bits("conv_in") == (Bits(8, 8),) * 2 and cfg.layer_bits("conv_out") == (Bits(8, 16),) * 2
    for i in range(2):
        assert len({cfg.layer_bits(f"blocks.{i}.attn1.to_{c}") for c in "qkv"}) == 1
    assert within(p, cfg)


def test_two_weight_copies_are_counted_in_memory() -> None:
    # one layer; the early group (5 of 20 steps) is the sensitive one. wbits=6 rules out all-W8;
    # without a memory limit the best is W8 early, W4 late (wbits 5): two resident copies
    layer = [Layer("ff", "linear", (256, 256), 65536, 65536 * 1024)]
    s = make_scores(layer)
    loose = make(layer, s, "wbits=6")
    assert [b.w for b in loose.plans_of(ilp.solve(loose, threads=T))[0]] == [8, 4]
    # a memory budget of one W8 copy forbids holding W8 and W4: equal weight bits in every group
    one_copy = loose.units[0].weight_bytes[8]
    tight = make(layer, s, f"wbits=6,memory={one_copy}")
    cfg = ilp.solve(tight, threads=T)
    assert len({b.w for b in tight.plans_of(cfg)[0]}) == 1 and within(tight, cfg)


def test_weight_switch_limit() -> None:
    layers = make_layers(1)
    groups = TimestepGroups.uniform(20, 4)
    s = make_scores(layers, groups=groups)
    free = Problem(layers, groups, s, "wbits=5.5", candidates=BITS)
    assert max(free.switches(pl) for pl in free.plans_of(ilp.solve(free, threads=T))) >= 1
    for k in (0, 1):
        p = free.replace(max_weight_switches=k)
        cfg = ilp.solve(p, threads=T)
        assert max(p.switches(pl) for pl in p.plans_of(cfg)) <= k and within(p, cfg)


def test_alignment_as_constraint(layers: list[Layer]) -> None:
    q, a = make_scores(layers, seed=1), make_scores(layers, seed=2, metric="alignment")
    p = make(layers, [q, a], "wbits=5")
    free_align = p.predicted(ilp.solve(p, threads=T))["alignment"]
    best_align = p.predicted(ilp.solve(p.replace(weights={"alignment": 1.0}), threads=T))["alignment"]
    cap = (free_align + best_align) / 2
    assert best_align < free_align
    capped = p.replace(max_degradation={"alignment": cap})
    pred = capped.predicted(ilp.solve(capped, threads=T))
    assert pred["alignment"] <= cap * (1 + 1e-9)
    with pytest.raises(InfeasibleBudget, match="max_degradation.alignment"):
        ilp.solve(p.replace(max_degradation={"alignment": 0.0}), threads=T)  # needs W16A16
    assert capped.weights == {"quality": 1.0}


def test_sweep_is_a_monotone_front_within_each_budget(layers: list[Layer], scores: Scores) -> None:
    p = make(layers, scores, "bops=0.3x")
    values = [0.3, 0.15, 0.2, 0.25]
    for backend in ("highs", "cbc"):
        front = ilp.sweep(p, values, backend=backend, threads=T)
        assert [pt.value for pt in front] == sorted(values)
        objs = [pt.objective for pt in front]
        assert all(b <= a + 1e-9 for a, b in zip(objs, objs[1:], strict=False))
        for pt in front:
            assert not Budget.parse(f"bops={pt.value}x").violations(pt.costs, p.reference)


def test_registered_solver_returns_front(layers: list[Layer], scores: Scores) -> None:
    from solvers import get_solver

    p = make(layers, scores, "bops=0.3x")
    configs = get_solver("ilp", sweep=[0.15, 0.2, 0.3], threads=T).solve(p)
    assert 1 <= len(configs) <= 3 and all(within(p, c) for c in configs)


# ---- honest failures -------------------------------------------------------------------------------
def test_thread_counts_can_change_within_a_process(layers: list[Layer], scores: Scores) -> None:
    """HiGHS sizes one process-wide scheduler on its first solve; a later solve asking another thread
    count used to come back "Not Set" and be reported as InfeasibleBudget (issue 11). Every solve here,
    whatever the order of counts, backends and calling threads, must reach the same optimum."""
    import threading

    p = make(layers, scores, "wbits=5.2,bops=0.2x")
    best = p.predicted(ilp.solve(p, "cbc", threads=1))["objective"]
    runs = [("highs", 2), ("highs", 1), ("cbc", 2), ("highs", None), ("highs", 2), ("cbc", 1), ("highs", 1)]
    objs = [p.predicted(ilp.solve(p, b, threads=t))["objective"] for b, t in runs]
    other: list[float] = []  # `bitsearch serve` solves from a background thread
    worker = threading.Thread(target=lambda: other.append(p.predicted(ilp.solve(p, "highs", threads=2))["objective"]))
    worker.start()
    worker.join()
    objs += other + [p.predicted(ilp.solve(p, "highs", threads=1))["objective"]]
    assert objs == pytest.approx([best] * (len(runs) + 2), rel=1e-6)


@pytest.mark.parametrize("backend", ["highs", "cbc"])
def test_time_limit_without_a_solution_is_a_time_out_not_infeasible(backend: str) -> None:
    # 8 blocks, two limits: neither solver finds a solution in a microsecond on any machine (HiGHS stops
    # at its first clock check; CBC, stopped in preprocessing, answers "Integer infeasible")
    layers = make_layers(8)
    p = make(layers, make_scores(layers), "wbits=5,bops=0.2x")
    with pytest.raises(SolverTimeout, match=r"(HiGHS|CBC): time limit of 1e-06 s reached without a solution"):
        ilp.solve(p, backend, threads=T, time_limit=1e-6)
    assert within(p, ilp.solve(p, backend, threads=T))  # the budget itself is feasible


def test_a_solver_that_did_not_run_is_a_solver_error(layers: list[Layer], scores: Scores,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the scheduler reset, HiGHS refuses a second thread count: that must surface as the
    solver's own status, never as an infeasible budget."""
    p = make(layers, scores, "wbits=5.2")
    ilp.solve(p, "highs", threads=2)  # the scheduler now has 2 threads
    monkeypatch.setattr(ilp, "_reset_highs_scheduler", lambda threads: None)
    with pytest.raises(SolverError, match=r"^HiGHS: Not Set") as err:
        ilp.solve(p, "highs", threads=1)
    assert not isinstance(err.value, (InfeasibleBudget, SolverTimeout)) and err.value.status == "Not Set"


def test_highs_prints_no_banner_on_stdout() -> None:
    # a fresh process: HiGHS prints its banner once per process, from C++, on the first Highs object
    import subprocess
    import sys

    code = ("from tests.solvers.conftest import make_layers, make_scores\n"
            "from tests.solvers.test_ilp import make\n"
            "from solvers import ilp\n"
            "layers = make_layers()\n"
            "print(ilp.solve(make(layers, make_scores(layers), 'wbits=5'), backend='highs') is not None)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=__file__.rsplit("/tests/", 1)[0])
    assert out.returncode == 0, out.stderr
    assert out.stdout == "True\n"


def test_a_search_bounds_each_solve_and_still_gets_its_front(layers: list[Layer], scores: Scores) -> None:
    """A study's solvers stop each solve at SEARCH_GAP, or at SEARCH_SOLVE_S with the best config found (a
    symmetric PixArt-size problem never closed a 1e-6 gap): the ILP's sweep and Optuna's seeding solves alike."""
    from solvers.base import SearchSettings, solver_for_search

    settings = SearchSettings("s", trials=3)
    solver = solver_for_search("ilp", settings)
    assert (solver.time_limit, solver.gap) == (ilp.SEARCH_SOLVE_S, ilp.SEARCH_GAP)  # type: ignore[attr-defined]
    optuna = solver_for_search("optuna", settings)
    assert (optuna.ilp_time_limit, optuna.ilp_gap) == (ilp.SEARCH_SOLVE_S, ilp.SEARCH_GAP)  # type: ignore[attr-defined]
    p = make(layers, scores, "wbits=5.2")
    configs = solver.propose(p)  # type: ignore[attr-defined]
    assert configs and all(within(p, c) for c in configs)
