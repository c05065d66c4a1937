"""Targets and formats: the measured front next to every uniform format and both heuristics, per budget.

For each model and each budget `memory <= {0.5, 0.6}x` crossed with `latency <= {1.0, 1.2}x` (relative to
the target's fastest float format, measured: fp32 or bf16, whichever is faster on this machine and thread
count), one study (`ilp` solver by default, the default baselines: every uniform format of the study's
bits, `float-ends` and `first-last-3`), 1 torch thread, all studies in one temporary database. The models:
`builtin` (the text-to-digit UNet every setting of the project was tuned on) and `fashion` (a
class-conditional UNet2DModel trained on Fashion-MNIST by `workloads/fashion/train.py`, a bare model
directory with its scheduler; tuned nothing: it only runs here and in its own tests). Every number below
is a real run on the target's kernels; latency is measured side by side with the float model
(`quant.latency.side_by_side`) and put on the target tables' clock. Printed per model and budget:

- the fastest float format, with its ms per denoiser call and its resident MB (what the caps are x of);
- every baseline and every point the search evaluated: PSNR (dB, to full precision, the study's cheap
  evaluation), measured latency (ms per call) and memory (MB resident), predicted latency (the target's
  tables: what the solver optimised), and whether it meets the budget AS MEASURED;
- the search's best config within the budget (`search.front.best_within`) and the best baseline within
  it, both re-measured on held-out images (seeds after the study's eval and full samples: no stage
  saw them; picking the best of noisy measurements is optimistic on the images it was picked on);
- the 3-D hypervolume (minimising -PSNR, latency, memory; reference point: the budget's caps and a
  PSNR floor, latency and memory as fractions of their caps, so the unit is dB) of the search's points
  within the budget, of the best single baseline, and of all baselines together, and the ratios;
- a verdict: "search dominates every baseline" when each baseline within the budget is dominated by a
  search point (quality, measured latency, measured memory), otherwise which baseline is not dominated
  and on which objectives it beats or ties the search's best.

A summary table across the budgets ends the run. The budget is written latency first: the `ilp` solver
sweeps the last 10% of the budget's FIRST limit (one value per trial), and on the built-in model every
quantized format is far under 0.5x of float memory, so a sweep over memory would propose one config.

    python bench/targets.py             # both models, 20 steps, 8 eval / 8 full images, 6 ILP trials (~20 min)
    python bench/targets.py --models fashion
    python bench/targets.py --quick     # 8 steps, 4 images, 3 trials: a smoke run (~2 min)
    python bench/targets.py --solver optuna --trials 12
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from quant.config import FULL_PRECISION, BitConfig  # noqa: E402
from quant.cost import LATENCY, MEMORY, full_precision_costs, shown_costs  # noqa: E402
from search.baselines import baseline_configs  # noqa: E402
from search.executors.base import Outcome  # noqa: E402
from search.front import FrontPoint, best_within, dominated_by  # noqa: E402
from search.origins import HEURISTIC, UNIFORM  # noqa: E402
from search.spec import StudySpec  # noqa: E402
from search.study import Study  # noqa: E402
from solvers.pareto import hypervolume  # noqa: E402
from solvers.problem import InfeasibleBudget  # noqa: E402
from workloads.metrics import QUALITY  # noqa: E402

MEMORY_CAPS = (0.5, 0.6)
LATENCY_CAPS = (1.0, 1.2)
HV_FLOOR_DB = 15.0  # PSNR at or below this adds no hypervolume
OBJECTIVES = (QUALITY, LATENCY, MEMORY)
REFERENCE_TOLERANCE = 0.15  # the float model re-measured further than this from the tables' reference: flagged
BASELINE_ORIGINS = (UNIFORM, HEURISTIC)
FASHION = Path(__file__).resolve().parents[1] / "workloads" / "fashion" / "weights"
# model key -> (StudySpec.model, workload options)
MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "builtin": ("builtin", ()),
    "fashion": (str(FASHION / "unet"), ("null_class=10", "guidance_scale=2.0", f"classifier={FASHION / 'classifier'}")),
}


def quiet(_m: str) -> None:
    pass


def label(study: Study, p: FrontPoint, heuristics: dict[str, str]) -> str:
    """A baseline's name (its uniform format, `float-ends`, `first-last-3`), else the origin and id."""
    config = BitConfig.from_dict(p.config)
    key = json.dumps(config.to_dict(), sort_keys=True)
    if key in heuristics:  # first-last-3 on few steps is uniform W8A16 over one group: named as itself
        return heuristics[key]
    if p.origin == UNIFORM:
        formats = {str(b) for plan in config.resolve([x.fqn for x in study.layers(quiet)]).values() for b in plan}
        return f"uniform {formats.pop()}" if len(formats) == 1 else f"uniform #{p.candidate_id}"
    if p.origin == HEURISTIC:
        return f"heuristic #{p.candidate_id}"
    return f"{p.origin} #{p.candidate_id}"


def heldout(study: Study, config: dict, n: int, references: dict) -> Outcome:
    """A cheap evaluation of `config` on `n` images whose seeds neither the search (cheap) nor the full
    evaluation used; the float reference images are generated once per study (`references`)."""
    from search.evaluation import CHEAP, measure

    wl = study.workload
    if study.name not in references:
        batch = wl.batch(n, offset=study.spec.eval_samples + study.spec.full_samples)
        references[study.name] = (batch, wl.generate(batch, record_steps=True))
    return measure(wl, study.spec, BitConfig.from_dict(config), CHEAP, study.cache.activation_ranges(quiet),
                   lambda: references[study.name])


def heldout_psnr(study: Study, config: dict, n: int, references: dict) -> float:
    outcome = heldout(study, config, n, references)
    return outcome.metrics.get(QUALITY, float("nan")) if outcome.metrics else float("nan")


def hv(points: list[FrontPoint], lat_cap: float, mem_cap: float) -> float:
    """Hypervolume of `points` (-PSNR, latency / cap, memory / cap; reference: -floor, 1, 1), in dB."""
    rows = [(HV_FLOOR_DB - p.metrics[QUALITY], p.costs[LATENCY] / lat_cap, p.costs[MEMORY] / mem_cap)
            for p in points if p.has(QUALITY) and p.has(LATENCY) and p.has(MEMORY)]
    return hypervolume(rows, (0.0, 1.0, 1.0))


def run_budget(db: str, model: str, mem_x: float, lat_x: float, args: argparse.Namespace) -> dict:
    budget = f"latency={lat_x:g}x,memory={mem_x:g}x"  # latency first: the ILP sweeps the first limit
    path, options = MODELS[model]
    spec = StudySpec(model=path, workload_options=options, budget=budget, solver=args.solver, trials=args.trials,
                     num_steps=args.steps, timestep_groups=args.groups, eval_samples=args.eval_samples,
                     full_samples=args.full_samples, calibration_samples=args.calibration_samples, seed=args.seed)
    name = f"{model}-m{mem_x:g}-l{lat_x:g}".replace(".", "_")
    t0 = time.perf_counter()
    study = Study.create(name, spec, db)
    infeasible = None
    try:
        study.run(progress=quiet)
    except InfeasibleBudget as e:  # the solver proposes nothing; the baselines are queued: measure them
        infeasible = str(e)
        study.evaluate(quiet)
    wall = time.perf_counter() - t0
    layers = study.layers(quiet)
    tables = study.cache.solved_tables()
    if tables is None:
        sys.exit("the study measured no target tables (a simulating backend?); this bench needs real kernels")
    reference = full_precision_costs(layers, spec.num_steps, tables)
    ref = shown_costs(reference)
    lat_cap, mem_cap = lat_x * ref[LATENCY], mem_x * ref[MEMORY]
    heuristics = {json.dumps(c.to_dict(), sort_keys=True): n for n in ("float-ends", "first-last-3")
                  for c in baseline_configs([n], spec.bits, spec.groups, layers)}

    points = [p for p in study.front_points() if p.has(QUALITY) and p.has(LATENCY) and p.has(MEMORY)]
    baselines = [p for p in points if p.origin in BASELINE_ORIGINS]
    searched = [p for p in points if p.origin not in BASELINE_ORIGINS]

    def fits(p: FrontPoint) -> bool:
        return p.costs[LATENCY] <= lat_cap * (1 + 1e-9) and p.costs[MEMORY] <= mem_cap * (1 + 1e-9)

    print(f"\n=== {model}: budget {budget}  (study {name}: {len(baselines)} baselines + {len(searched)} search points, "
          f"{wall:.0f} s)")
    if infeasible:
        print(f"solver: {infeasible} (as the target tables predict it); the search proposed nothing")
    print(f"fastest float format: {tables.float_format}, {ref[LATENCY]:.2f} ms per call, {ref[MEMORY]:.2f} MB resident "
          f"-> caps: latency <= {lat_cap:.2f} ms, memory <= {mem_cap:.2f} MB")
    print(f"{'config':<22}{'psnr dB':>9}{'lat ms':>9}{'x float':>8}{'mem MB':>9}{'x float':>8}{'pred ms':>9}"
          f"{'pred MB':>9}  meets budget")
    references: dict = {}
    # the float model through the candidates' own measurement path: is the tables' reference comparable?
    fl = heldout(study, BitConfig.uniform(spec.groups, FULL_PRECISION).to_dict(), args.heldout, references)
    if fl.latency_s is not None and fl.peak_memory_bytes is not None:
        fl_ms, fl_mb = fl.latency_s * 1e3, fl.peak_memory_bytes * 1e-6
        print(f"{'float W16A16 (ref)':<22}{'-':>9}{fl_ms:>9.2f}{fl_ms / ref[LATENCY]:>8.2f}{fl_mb:>9.2f}"
              f"{fl_mb / ref[MEMORY]:>8.2f}{ref[LATENCY]:>9.2f}{ref[MEMORY]:>9.2f}  "
              f"{'yes' if fl_ms <= lat_cap and fl_mb <= mem_cap else 'no'} (not a candidate: the float model "
              "measured like one; pred = the tables' float reference)")
        gap = fl_ms / ref[LATENCY] - 1
        if abs(gap) > REFERENCE_TOLERANCE:
            print(f"note: the fp32 model timed alone now runs {fl_ms:.2f} ms, {gap:+.0%} vs the tables' fastest float "
                  f"({tables.float_format}, {ref[LATENCY]:.2f} ms): the machine's load moved; the candidates' latencies "
                  "are side-by-side ratios on the tables' clock, so their verdicts do not move with it")
    else:
        fl_ms = fl_mb = float("nan")
    rows = sorted(baselines, key=lambda p: (p.origin != UNIFORM, label(study, p, heuristics)))
    rows += sorted(searched, key=lambda p: -p.metrics[QUALITY])
    for p in rows:
        over = [w for w, bad in (("latency", p.costs[LATENCY] > lat_cap * (1 + 1e-9)),
                                 ("memory", p.costs[MEMORY] > mem_cap * (1 + 1e-9))) if bad]
        print(f"{label(study, p, heuristics):<22}{p.metrics[QUALITY]:>9.2f}{p.costs[LATENCY]:>9.2f}"
              f"{p.costs[LATENCY] / ref[LATENCY]:>8.2f}{p.costs[MEMORY]:>9.2f}{p.costs[MEMORY] / ref[MEMORY]:>8.2f}"
              f"{p.costs.get(f'{LATENCY}_predicted', float('nan')):>9.2f}"
              f"{p.costs.get(f'{MEMORY}_predicted', float('nan')):>9.2f}  "
              f"{'yes' if not over else 'no (' + ', '.join(over) + ')'}")

    from quant.config import ConfigError

    def best(pts: list[FrontPoint]) -> FrontPoint | None:
        try:
            return best_within(pts, spec.budget, reference)
        except ConfigError:
            return None

    s_best, b_best = best(searched), best(baselines)
    out = {"model": model, "budget": budget, "float": f"{tables.float_format} {ref[LATENCY]:.2f} ms {ref[MEMORY]:.2f} MB",
           "wall": wall, "n_search_in": sum(map(fits, searched)), "n_search": len(searched),
           "n_base_in": sum(map(fits, baselines)), "n_base": len(baselines), "float_ms": fl_ms,
           "ref_ms": ref[LATENCY], "infeasible": infeasible}
    for key, p in (("search", s_best), ("baseline", b_best)):
        if p is None:
            print(f"best {key} within budget: none meets it as measured")
            out[key] = None
            continue
        held = heldout_psnr(study, p.config, args.heldout, references)
        print(f"best {key} within budget: {label(study, p, heuristics)}: {p.metrics[QUALITY]:.2f} dB "
              f"({held:.2f} dB on {args.heldout} held-out images), {p.costs[LATENCY]:.2f} ms, {p.costs[MEMORY]:.2f} MB")
        out[key] = {"name": label(study, p, heuristics), "psnr": p.metrics[QUALITY], "heldout": held,
                    "lat": p.costs[LATENCY], "mem": p.costs[MEMORY]}

    s_in, b_in = [p for p in searched if fits(p)], [p for p in baselines if fits(p)]
    hv_s, hv_all = hv(s_in, lat_cap, mem_cap), hv(b_in, lat_cap, mem_cap)
    per_base = {label(study, p, heuristics): hv([p], lat_cap, mem_cap) for p in b_in}
    best_name, hv_b = max(per_base.items(), key=lambda kv: kv[1], default=("none", 0.0))
    ratio = hv_s / hv_b if hv_b > 0 else float("inf") if hv_s > 0 else float("nan")
    ratio_all = hv_s / hv_all if hv_all > 0 else float("inf") if hv_s > 0 else float("nan")
    print(f"hypervolume within the budget (-psnr vs {HV_FLOOR_DB:g} dB floor, latency/cap, memory/cap; dB units): "
          f"search {hv_s:.3f}, best baseline ({best_name}) {hv_b:.3f}, all baselines {hv_all:.3f}; "
          f"ratio search/best baseline x{ratio:.2f}, search/all baselines x{ratio_all:.2f}")
    out.update(hv_search=hv_s, hv_best=hv_b, hv_best_name=best_name, hv_all=hv_all, ratio=ratio, ratio_all=ratio_all)

    if s_best is None:
        verdict = ("NOT dominated: the search has no point within the budget as measured"
                   + (" (the solver found the budget infeasible as predicted)" if infeasible else ""))
        verdict += (f"; baselines within it: {', '.join(label(study, p, heuristics) for p in b_in)}" if b_in
                    else "; no baseline meets it either")
    else:
        undominated = [p for p in b_in if not dominated_by(p, s_in, OBJECTIVES)]
        if not undominated:
            verdict = ("search dominates every baseline" + (" within the budget" if b_in else
                       " (no baseline meets the budget as measured)"))
            over = len(baselines) - len(b_in)
            if b_in and over:
                verdict += f" ({over} other baselines are over the budget)"
        else:
            parts = []
            for p in undominated:
                wins = [n for n, ok in (("psnr", p.metrics[QUALITY] >= s_best.metrics[QUALITY]),
                                        ("latency", p.costs[LATENCY] <= s_best.costs[LATENCY]),
                                        ("memory", p.costs[MEMORY] <= s_best.costs[MEMORY])) if ok]
                beats_best = bool(dominated_by(s_best, [p], OBJECTIVES))
                parts.append(f"baseline {label(study, p, heuristics)} beats or ties the search's best on "
                             f"{', '.join(wins) or 'nothing (but no search point dominates it)'}"
                             + (" (it dominates the search's best)" if beats_best else ""))
            verdict = "NOT dominated: " + "; ".join(parts)
    print(f"verdict: {verdict}")
    out["verdict"] = ("dominates" if verdict.startswith("search dominates") else "not dominated" if s_best or b_in
                      else "nothing meets it")
    study.storage.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--solver", default="ilp", choices=("ilp", "optuna", "greedy"))
    ap.add_argument("--trials", type=int, default=6, help="solver proposals (ILP sweep) or Optuna trials")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--groups", type=int, default=3, help="timestep groups")
    ap.add_argument("--eval-samples", type=int, default=8)
    ap.add_argument("--full-samples", type=int, default=8)
    ap.add_argument("--calibration-samples", type=int, default=10)
    ap.add_argument("--heldout", type=int, default=16, help="images of the held-out re-measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 steps, 4 images, 3 trials, 4 held-out")
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or set(models) - set(MODELS):
        ap.error(f"--models: choose from {', '.join(MODELS)}")
    if args.quick:
        args.steps, args.eval_samples, args.full_samples, args.calibration_samples = 8, 4, 4, 4
        args.trials, args.heldout = 3, 4
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    print(f"# python bench/targets.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"models {', '.join(models)}, {args.steps} steps, {args.groups} timestep groups, {args.eval_samples} eval / "
          f"{args.full_samples} full images, solver {args.solver} ({args.trials} trials), default baselines; "
          f"torch {torch.__version__}, 1 thread, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print("every latency/memory below is measured on the target's kernels (ms per denoiser call at batch 1, timed "
          "side by side with the float model, on the target tables' clock; MB resident); 'pred' = the target "
          "tables' prediction the solver optimised")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "targets.db")
        for model in models:
            for mem_x in MEMORY_CAPS:
                for lat_x in LATENCY_CAPS:
                    results.append(run_budget(db, model, mem_x, lat_x, args))

    print(f"\n=== summary (PSNR dB; held-out = the best config re-measured on {args.heldout} unused images; "
          f"HV ratio = search / best single baseline, within the budget; float ms = the fastest float format per call, "
          "as the target tables measured it (the caps' reference) / measured like a candidate)")
    print(f"{'model':<9}{'budget':<26}{'float ms tab/eval':>18}{'search in/all':>14}{'base in/all':>12}  {'search best':<16}"
          f"{'psnr':>7}{'held':>7}  {'best baseline':<16}{'psnr':>7}{'held':>7}{'HV s':>8}{'HV b':>8}{'ratio':>7}"
          f"  verdict")
    for r in results:
        s, b = r["search"], r["baseline"]
        s_txt = f"{s['name']:<16}{s['psnr']:>7.2f}{s['heldout']:>7.2f}" if s else f"{'none':<16}{'-':>7}{'-':>7}"
        b_txt = f"{b['name']:<16}{b['psnr']:>7.2f}{b['heldout']:>7.2f}" if b else f"{'none':<16}{'-':>7}{'-':>7}"
        floats = f"{r['ref_ms']:.2f}/{r['float_ms']:.2f}" + ("!" if abs(r["float_ms"] / r["ref_ms"] - 1)
                                                                > REFERENCE_TOLERANCE else "")
        print(f"{r['model']:<9}{r['budget']:<26}{floats:>18}{r['n_search_in']:>8}/{r['n_search']:<5}{r['n_base_in']:>6}/"
              f"{r['n_base']:<5}  {s_txt}  {b_txt}{r['hv_search']:>8.3f}{r['hv_best']:>8.3f}{r['ratio']:>7.2f}  "
              f"{r['verdict']}{' (solver: infeasible as predicted)' if r['infeasible'] else ''}")
    print("fastest float format per study (tables): " + "; ".join(r["float"] for r in results)
          + f"  ('!' above: re-measured fp32 differs by more than {REFERENCE_TOLERANCE:.0%})")
    print(f"total wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
