"""Solver benchmark, side by side in one run: CBC vs HiGHS on a synthetic SDXL-size problem.

    .venv/bin/python bench/solvers.py [--threads 1] [--points 10] [--quick]

- scale: the SDXL UNet inventory (built on the meta device, 794 layers) x 4 timestep groups x 5 bit
  pairs with random but realistically shaped scores, one budget (wbits=5, bops=0.3x) solved to
  optimality (relative gap 1e-6) with each backend; then a budget sweep over `--points` bops levels,
  with and without warm start;
- quality: greedy vs ILP predicted objective at equal budgets, every config checked with
  quant.cost.costs (Problem.check, which every solver also runs before returning).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quant.config import Bits, TimestepGroups  # noqa: E402
from quant.layers import Layer  # noqa: E402
from quant.scores import Scores  # noqa: E402
from solvers import ilp  # noqa: E402
from solvers.greedy import greedy  # noqa: E402
from solvers.problem import Problem  # noqa: E402

BITS = tuple(Bits.parse(b) for b in ("W4A8", "W6A8", "W8A8", "W4A16", "W8A16"))
GROUPS = TimestepGroups.uniform(20, 4)


def sdxl_layers() -> list[Layer]:
    from quant.layers import example_inputs, inventory
    from quant.models import load_denoiser

    model = load_denoiser("sdxl-unet")
    return inventory(model, example_inputs(model))


def synthetic_scores(layers: list[Layer], groups: TimestepGroups, bits: tuple[Bits, ...], seed: int = 0) -> Scores:
    """Degradation ~ s_w(layer) 2^(-2(w-4)) + s_a(layer) 2^(-2(a-8)) (quantization noise power falls 4x
    per bit), lognormal layer sensitivities, early (noisy) groups weighted up to 2x, 10% noise."""
    rng = random.Random(seed)
    values: dict[tuple[str, int, Bits], float] = {}
    for layer in layers:
        s_w, s_a = rng.lognormvariate(0, 1.0), rng.lognormvariate(-1, 1.2)
        for g in range(len(groups)):
            early = 2.0 - g / max(len(groups) - 1, 1)
            for b in bits:
                act = 0.0 if b.a == 16 else s_a * 4.0 ** (-(b.a - 8))
                values[(layer.fqn, g, b)] = early * (s_w * 4.0 ** (-(b.w - 4)) + act) * rng.uniform(0.9, 1.1)
    return Scores("synthetic", "quality", groups, values)


def sdxl_problem(budget: str = "wbits=5,bops=0.3x", seed: int = 0) -> Problem:
    layers = sdxl_layers()
    return Problem(layers, GROUPS, synthetic_scores(layers, GROUPS, BITS, seed), budget, candidates=BITS)


def real_sensitivity_comparison() -> None:
    """Greedy vs ILP on the built-in model with REAL sensitivities (issue 5's acceptance)."""
    raise NotImplementedError(
        "needs sensitivity estimators (the sensitivity issue) to produce Scores for the built-in model; "
        "then: Problem(builtin inventory, groups, scores, budget) and compare_greedy(problem, budgets)"
    )


def timed(fn, *args, **kw):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def compare_backends(problem: Problem, threads: int | None) -> None:
    print(f"\n== one budget ({problem.budget}) ==")
    print(f"{'backend':8s}{'gap':>8s}{'seconds':>10s}{'objective':>14s}{'optimal':>9s}")
    best = math.inf
    # CBC cannot prove 1e-6 on this problem in a minute (HiGHS does in seconds): cap it, say so
    for backend, gap, limit in (("highs", 1e-6, None), ("cbc", 1e-6, 60.0), ("highs", 1e-4, None), ("cbc", 1e-4, None)):
        config, seconds = timed(ilp.solve, problem, backend, gap, threads, limit)
        obj = problem.predicted(config)["objective"]
        best = min(best, obj)
        proven = "no (time limit)" if limit is not None and seconds >= limit else "yes"
        print(f"{backend:8s}{gap:8.0e}{seconds:10.2f}{obj:14.5f}{proven:>16s}")
    print("target <= 10 s to optimality")


def compare_sweeps(problem: Problem, points: int, threads: int | None) -> list[float]:
    values = [round(v, 4) for v in _linspace(0.15, 0.45, points)]
    print(f"\n== {points}-point bops sweep {values[0]}x..{values[-1]}x (wbits=5 kept), target <= 60 s ==")
    print(f"{'backend':8s}{'gap':>8s}{'warm':>6s}{'total s':>10s}{'max point s':>13s}{'sum objective':>15s}")
    for backend, gap in (("highs", 1e-6), ("cbc", 1e-4)):
        for warm in (False, True):
            front, seconds = timed(ilp.sweep, problem, values, "bops", backend, warm, gap, threads)
            print(f"{backend:8s}{gap:8.0e}{warm!s:>6s}{seconds:10.2f}{max(p.seconds for p in front):13.2f}"
                  f"{sum(p.objective for p in front):15.4f}")
    return values


def compare_greedy(problem: Problem, values: list[float], threads: int | None) -> None:
    print("\n== greedy vs ILP at equal budgets (predicted objective; lower is better) ==")
    print(f"{'budget':>22s}{'ilp':>12s}{'greedy':>12s}{'greedy/ilp':>12s}{'greedy s':>10s}")
    worst = math.inf
    for v in values:
        p = problem.replace(budget=f"wbits=5,bops={v}x")
        ilp_cfg = ilp.solve(p, threads=threads)
        greedy_cfg, seconds = timed(greedy, p)
        for cfg in (ilp_cfg, greedy_cfg):
            p.check(cfg)  # quant.cost.costs within budget (the solvers check too)
        a, b = p.predicted(ilp_cfg)["objective"], p.predicted(greedy_cfg)["objective"]
        worst = min(worst, b / a)
        print(f"{str(p.budget):>22s}{a:12.5f}{b:12.5f}{b / a:12.4f}{seconds:10.2f}")
    print(f"ILP never worse than greedy: {worst >= 1 - 1e-6} (min greedy/ilp {worst:.4f}); every config within budget")


def _linspace(lo: float, hi: float, n: int) -> list[float]:
    return [lo + (hi - lo) * i / max(n - 1, 1) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="solver threads (this machine is shared)")
    ap.add_argument("--points", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="3 sweep points, 3 greedy budgets")
    args = ap.parse_args()
    points = 3 if args.quick else args.points
    t0 = time.perf_counter()
    problem = sdxl_problem()
    n_x = sum(len(c) for u in problem.units for c in u.candidates)
    print(f"SDXL UNet: {len(problem.layers)} layers x {len(GROUPS)} groups x {len(BITS)} pairs = {n_x} binaries "
          f"(inventory + problem {time.perf_counter() - t0:.1f} s); auto backend = {ilp.resolve_backend('auto')}")
    compare_backends(problem, args.threads)
    values = compare_sweeps(problem, points, args.threads)
    compare_greedy(problem, values if not args.quick else values[:3], args.threads)
    try:
        real_sensitivity_comparison()
    except NotImplementedError as e:
        print(f"\nreal sensitivities: skipped ({e})")


if __name__ == "__main__":
    main()
