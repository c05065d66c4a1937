"""Search benchmark: evaluation throughput with 1 vs 2 Ray workers, and what the search buys.

One study is prepared once (inventory, calibration, sensitivities, solver proposals + uniform
baselines); each run starts from a fresh copy of that database, so every run evaluates the SAME
candidate set on the built-in model with real int8 kernels. Printed side by side:

- candidates evaluated per minute with the `ray` executor, 1 worker vs 2 workers, 1 torch thread
  each: end to end (Ray start and each worker's model load included) and steady state (between the
  first and the last recorded evaluation); the 2/1 ratio;
- measured quality (PSNR to full precision) of the best solver config under the budget vs uniform
  quantization at no more than the same average weight bits.

    python bench/search.py                   # 20 steps, 8 eval images, 10 ILP trials (~3 min on 2 cores)
    python bench/search.py --steps 8 --eval-samples 4 --trials 4   # quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from quant.budget import Budget  # noqa: E402
from search.executors import get_executor  # noqa: E402
from search.study import Study, StudySpec  # noqa: E402


def quiet(_m: str) -> None:
    pass


def prepare(path: Path, spec: StudySpec) -> None:
    import torch

    torch.set_num_threads(1)
    s = Study.create("bench", spec, str(path))
    layers = s.layers(quiet)
    s.activation_ranges(quiet)
    s.propose(layers, s.sensitivities(layers, quiet), quiet)
    s.storage.close()


def run(prepared: Path, workdir: Path, workers: int) -> dict[str, float]:
    path = workdir / f"ray{workers}.db"
    shutil.copy(prepared, path)
    study = Study.load("bench", str(path))
    executor = get_executor("ray", workers=workers, threads_per_worker=1, num_cpus=max(2, workers))
    t0 = time.perf_counter()
    study.run(progress=quiet, executor=executor)
    wall = time.perf_counter() - t0
    evals = study.storage.list_evaluations("bench")
    first, last = evals[0].created_at, evals[-1].created_at
    steady = (last - first).total_seconds()
    return {"n": len(evals), "wall_s": wall, "per_min": 60 * len(evals) / wall,
            "steady_per_min": 60 * (len(evals) - 1) / steady if steady > 0 else float("nan"),
            "workers_used": len({e.worker.rsplit(":", 1)[0] for e in evals if e.worker})}


def quality(prepared: Path, workdir: Path, budget: str) -> None:
    study = Study.load("bench", str(workdir / "ray1.db"))
    limit = Budget.parse([budget]).limits[0]
    if limit.metric != "wbits":
        print(f"quality comparison needs a wbits budget, got {budget}")
        return
    points = [p for p in study.front_points() if p.costs["wbits"] <= limit.value + 1e-9]
    solver = [p for p in points if p.origin != "uniform"]
    uniform = [p for p in points if p.origin == "uniform"]
    print(f"\nquality at {budget} (PSNR dB to full precision, {study.spec.eval_samples} images x "
          f"{study.spec.num_steps} steps, int8 kernels):")
    print(f"{'config':<34}{'origin':>8}{'wbits':>8}{'psnr_db':>10}{'sqnr_db':>10}")
    for p in sorted(points, key=lambda p: -p.metrics["psnr_db"]):
        rule = p.config.get("rules", {}).get("_default", "") if p.origin == "uniform" else ""
        label = f"candidate {p.candidate_id}" + (f" ({rule} everywhere)" if rule else "")
        print(f"{label:<34}{p.origin:>8}{p.costs['wbits']:>8.3f}{p.metrics['psnr_db']:>10.2f}"
              f"{p.metrics.get('sqnr_db', float('nan')):>10.2f}")
    if solver and uniform:
        best = max(solver, key=lambda p: p.metrics["psnr_db"])
        base = max(uniform, key=lambda p: p.metrics["psnr_db"])
        print(f"best solver config: {best.metrics['psnr_db']:.2f} dB at {best.costs['wbits']:.3f} wbits; "
              f"best uniform: {base.metrics['psnr_db']:.2f} dB at {base.costs['wbits']:.3f} wbits; "
              f"gain {best.metrics['psnr_db'] - base.metrics['psnr_db']:+.2f} dB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eval-samples", type=int, default=8)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--groups", type=int, default=3)
    ap.add_argument("--budget", default="wbits=4.5")
    args = ap.parse_args()
    try:
        import ray
    except ImportError:
        sys.exit("bench/search.py needs Ray: pip install ray")
    spec = StudySpec(budget=(args.budget,), timestep_groups=args.groups, num_steps=args.steps, trials=args.trials,
                     eval_samples=args.eval_samples, baselines=("W8A8", "W4A8", "W4A16"))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        prepare(workdir / "prepared.db", spec)
        print(f"built-in model, {args.steps} steps, {args.eval_samples} eval images, {args.groups} timestep groups, "
              f"budget {args.budget}; study prepared in {time.perf_counter() - t0:.1f} s "
              f"(ray {ray.__version__}, {os.cpu_count()} CPUs)")
        results = {w: run(workdir / "prepared.db", workdir, w) for w in (1, 2)}
        print(f"\n{'ray workers':<12}{'candidates':>11}{'wall s':>9}{'per min':>9}{'steady/min':>12}{'used':>6}")
        for w, r in results.items():
            print(f"{w:<12}{r['n']:>11.0f}{r['wall_s']:>9.1f}{r['per_min']:>9.1f}{r['steady_per_min']:>12.1f}"
                  f"{r['workers_used']:>6.0f}")
        one, two = results[1], results[2]
        print(f"2 vs 1 worker: x{two['per_min'] / one['per_min']:.2f} end to end, "
              f"x{two['steady_per_min'] / one['steady_per_min']:.2f} steady state")
        quality(workdir / "prepared.db", workdir, args.budget)


if __name__ == "__main__":
    main()
