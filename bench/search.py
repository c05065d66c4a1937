"""Search benchmark: evaluation throughput with 1 vs 2 Ray workers, and what the search buys.

One ILP study is prepared once (inventory, calibration, sensitivities, the ILP's budget sweep +
uniform baselines). Printed side by side:

- throughput: candidates evaluated per minute (cheap fidelity, real int8 kernels) by the `ray`
  executor with 1 vs 2 workers, 1 torch thread each, each run on a fresh copy of the prepared
  database (the SAME candidates), runs interleaved (1, 2, 1, 2, ...), medians: end to end (Ray start
  and each worker's model load included) and steady state (first to last recorded evaluation);
- quality at equal budget, every number a real quantized run on held-out prompts/seeds: uniform
  quantization, the ILP-only front (the sweep, no Optuna), and the `optuna` solver's front (its
  trials seeded by the ILP, each measured): best PSNR to full precision under the budget, the
  hypervolume of each (PSNR, wbits) front under the budget, the best config's PSNR re-measured on
  32 images of seeds no stage used (selection picks the luckiest measurement: this removes that
  bias), and its prompt accuracy (its `full` evaluation); with how many cheap and full evaluations
  each method spent.

    python bench/search.py                   # 20 steps, 8 eval images, 10 ILP / 24 Optuna trials (~12 min)
    python bench/search.py --steps 8 --eval-samples 4 --trials 4 --optuna-trials 6 --reps 1  # quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from search.executors import get_executor  # noqa: E402
from search.spec import StudySpec  # noqa: E402
from search.study import Study  # noqa: E402
from solvers.pareto import hypervolume  # noqa: E402
from workloads.metrics import QUALITY  # noqa: E402

HV_FLOOR_DB = 20.0  # PSNR below this adds no hypervolume (uniform W4 lands near 25 dB)
HELDOUT_IMAGES = 32


def quiet(_m: str) -> None:
    pass


def prepare(path: Path, spec: StudySpec) -> None:
    import torch

    torch.set_num_threads(1)
    s = Study.create("bench", spec, str(path))
    s.propose(quiet)
    s.storage.close()


def throughput(prepared: Path, workdir: Path, workers: int, rep: int) -> dict[str, float]:
    """Evaluate the prepared candidates (cheap fidelity only) on `workers` Ray workers."""
    path = workdir / f"ray{workers}-{rep}.db"
    shutil.copy(prepared, path)
    study = Study.load("bench", str(path))
    executor = get_executor("ray", workers=workers, threads_per_worker=1, num_cpus=max(2, workers))
    t0 = time.perf_counter()
    study.evaluate(quiet, executor=executor)
    wall = time.perf_counter() - t0
    evals = study.storage.list_evaluations("bench")
    steady = (evals[-1].created_at - evals[0].created_at).total_seconds()
    return {"n": len(evals), "wall_s": wall, "per_min": 60 * len(evals) / wall,
            "steady_per_min": 60 * (len(evals) - 1) / steady if steady > 0 else float("nan"),
            "workers_used": len({e.worker.rsplit(":", 1)[0] for e in evals if e.worker})}


def heldout_psnr(study: Study, config: dict, n: int) -> float:
    """PSNR of `config` on `n` images whose seeds neither the search (cheap) nor the full evaluation
    used: the best of many noisy measurements is optimistic on the images it was picked on."""
    from quant.config import BitConfig
    from search.evaluation import CHEAP, measure

    wl = study.workload
    batch = wl.batch(n, offset=study.spec.eval_samples + study.spec.full_samples)
    reference = (batch, wl.generate(batch, record_steps=True))
    outcome = measure(wl, study.spec, BitConfig.from_dict(config), CHEAP, study.cache.activation_ranges(quiet),
                      lambda: reference)  # the study's own cheap measurement, on other seeds
    return outcome.metrics[QUALITY]


def front_summary(study: Study, cap: float, origins: set[str]) -> dict[str, float]:
    """Best PSNR under the wbits cap among `origins`, its prompt accuracy, and the hypervolume of
    their (PSNR, wbits) points under the cap above HV_FLOOR_DB."""
    points = [p for p in study.front_points() if p.origin in origins and p.costs["wbits"] <= cap + 1e-9]
    best = max(points, key=lambda p: p.metrics[QUALITY])
    rows = [(HV_FLOOR_DB - p.metrics[QUALITY], p.costs["wbits"]) for p in points]
    evals = [e for e in study.storage.list_evaluations(study.name) if e.origin in origins]
    return {"n": len(points), "cheap": sum(e.fidelity == "cheap" for e in evals),
            "full": sum(e.fidelity == "full" for e in evals), "psnr": best.metrics[QUALITY],
            "wbits": best.costs["wbits"], "accuracy": best.metrics.get("prompt_accuracy", math.nan),
            "hv": hypervolume(rows, (0.0, cap)), "heldout": heldout_psnr(study, best.config, HELDOUT_IMAGES)}


def compare(ilp_db: Path, workdir: Path, spec: StudySpec, optuna_trials: int) -> None:
    cap = spec.budget.limits[0].value
    ilp = Study.load("bench", str(ilp_db))
    t0 = time.perf_counter()
    ilp.run(progress=quiet)  # the cheap evaluations are in: this promotes and runs the full ones
    ilp_s = time.perf_counter() - t0
    tuned = Study.create("tuned", dataclasses.replace(spec, solver="optuna", trials=optuna_trials),
                         str(workdir / "optuna.db"))
    t0 = time.perf_counter()
    tuned.run(progress=quiet)
    tuned_s = time.perf_counter() - t0
    rows = {"uniform": front_summary(ilp, cap, {"uniform"}),
            "ILP only (sweep)": front_summary(ilp, cap, {"ilp"}),
            "optuna (ILP-seeded)": front_summary(tuned, cap, {"ilp", "optuna"})}
    print(f"\nquality at {spec.budget}: PSNR (dB) to full precision on {spec.eval_samples} held-out images x "
          f"{spec.num_steps} steps; prompt accuracy on {spec.full_samples} others; int8 kernels, measured")
    print(f"{'method':<22}{'points':>7}{'cheap':>7}{'full':>6}{'best psnr':>11}{'held-out':>10}{'at wbits':>10}"
          f"{'accuracy':>10}{'HV':>8}")
    for name, r in rows.items():
        print(f"{name:<22}{r['n']:>7.0f}{r['cheap']:>7.0f}{r['full']:>6.0f}{r['psnr']:>11.2f}{r['heldout']:>10.2f}"
              f"{r['wbits']:>10.3f}{r['accuracy']:>10.3f}{r['hv']:>8.2f}")
    u, i, o = rows.values()
    print(f"best ILP-only vs uniform: {i['psnr'] - u['psnr']:+.2f} dB ({i['heldout'] - u['heldout']:+.2f} held-out); "
          f"optuna vs ILP-only: {o['psnr'] - i['psnr']:+.2f} dB ({o['heldout'] - i['heldout']:+.2f} held-out), "
          f"hypervolume x{o['hv'] / i['hv']:.2f} (HV: area of the (psnr - {HV_FLOOR_DB:g} dB, wbits <= {cap:g}) front; "
          f"held-out: the best config re-measured on {HELDOUT_IMAGES} images of unused seeds)")
    print(f"wall: ILP study's full evaluations {ilp_s:.0f} s; optuna study end to end {tuned_s:.0f} s "
          f"({optuna_trials} trials, 1 worker)")
    full = [e for e in tuned.storage.list_evaluations("tuned")]
    med = {f: statistics.median(e.duration_s for e in full if e.fidelity == f and e.duration_s) for f in ("cheap", "full")}
    n_cheap = sum(e.fidelity == "cheap" for e in full)
    n_full = sum(e.fidelity == "full" for e in full)
    print(f"multi-fidelity (optuna study): {n_full} of {n_cheap} candidates got the full evaluation; median CPU "
          f"s per evaluation: cheap {med['cheap']:.1f}, full {med['full']:.1f}; full on every candidate would "
          f"have cost {(n_cheap - n_full) * med['full']:.0f} s more")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eval-samples", type=int, default=8)
    ap.add_argument("--full-samples", type=int, default=32)
    ap.add_argument("--trials", type=int, default=10, help="ILP sweep proposals")
    ap.add_argument("--optuna-trials", type=int, default=24)
    ap.add_argument("--groups", type=int, default=3)
    ap.add_argument("--budget", default="wbits=4.5")
    ap.add_argument("--reps", type=int, default=2, help="interleaved throughput runs per worker count")
    args = ap.parse_args()
    try:
        import ray
    except ImportError:
        sys.exit("bench/search.py needs Ray: pip install ray")
    spec = StudySpec(budget=(args.budget,), timestep_groups=args.groups, num_steps=args.steps, trials=args.trials,
                     eval_samples=args.eval_samples, full_samples=args.full_samples,
                     baselines=("W8A8", "W4A8", "W4A16"))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        prepare(workdir / "prepared.db", spec)
        print(f"built-in model, {args.steps} steps, {args.eval_samples} eval images, {args.groups} timestep groups, "
              f"budget {args.budget}; study prepared in {time.perf_counter() - t0:.1f} s "
              f"(ray {ray.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f})")
        runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        for rep in range(args.reps):
            for w in (1, 2):
                runs[w].append(throughput(workdir / "prepared.db", workdir, w, rep))
        print(f"\n{'ray workers':<12}{'candidates':>11}{'wall s':>9}{'per min':>9}{'steady/min':>12}{'used':>6}"
              f"   (medians of {args.reps} interleaved runs)")
        med = {w: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for w, rs in runs.items()}
        for w, r in med.items():
            print(f"{w:<12}{r['n']:>11.0f}{r['wall_s']:>9.1f}{r['per_min']:>9.1f}{r['steady_per_min']:>12.1f}"
                  f"{r['workers_used']:>6.0f}")
        one, two = med[1], med[2]
        print(f"2 vs 1 worker: x{two['per_min'] / one['per_min']:.2f} end to end, "
              f"x{two['steady_per_min'] / one['steady_per_min']:.2f} steady state")
        compare(workdir / "ray1-0.db", workdir, spec, args.optuna_trials)


if __name__ == "__main__":
    main()
