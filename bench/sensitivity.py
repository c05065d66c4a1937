"""Sensitivity estimators on the built-in model: cost, and rank correlation with measured degradation.

For timestep groups 1 and 3 (uniform over the 20 DDIM steps), every estimator scores all 132 layers at
W2A16, W4A16, W8A16 (weight-only: activations stay in high precision, so the weight signal is what is
ranked) on the `calibration` split; then `sensitivity.measure` quantizes with the int8 backend's REAL
kernels (weight-only int8/int4 kernels for linear W8/W4, integer codes expanded to float for the rest:
nothing is simulated; the run labels are printed) on the held-out `eval` split (other prompt wordings,
other seeds): single layers, and whole random mixed configs at budgets of 5/15/30% of (layer, group)
entries quantized. Printed side by side: wall time (also as a multiple of one FP generation of the
estimators' calibration batch), and Spearman rho / Kendall tau of prediction vs measurement for
quality (image MSE vs FP) and alignment (per image, the share of the classifier's probability of the
prompted digit and of the CLIP score lost vs the FP image, averaged: `sensitivity._common.alignment_drop`).
Then the per-group view: predicted share of W4 degradation per timestep group, next to the measured
image MSE of W4 on every layer in that group only.
The `naive` baseline (weights x bits removed, no model run) is always in the table: an estimator's
correlation above naive's is what running the model buys over counting removed bits. Nothing here is
tuned (no Optuna, no chosen settings): estimators run with their defaults and the options below.

    python bench/sensitivity.py                    # full run (~25 min on 1 core, mostly `decoupled`)
    python bench/sensitivity.py --layers 12 --n-single 8 --n-mixed 8   # quick look
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from quant.apply import quantized  # noqa: E402
from quant.config import BitConfig, Bits, TimestepGroups  # noqa: E402
from quant.layers import quantizable_modules  # noqa: E402
from quant.scores import Scores  # noqa: E402
from sensitivity import correlate, estimator_names, get_estimator, measure  # noqa: E402
from sensitivity._common import image_mse  # noqa: E402
from workloads.builtin.workload import BuiltinWorkload  # noqa: E402

BITS = [Bits.parse(b) for b in ("W2A16", "W4A16", "W8A16")]


def fmt(x: float) -> str:
    return "   n/a" if not math.isfinite(x) else f"{x:+6.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=None, help="first N layers (default all)")
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--images", type=int, default=4, help="calibration images of the gradient-type estimators")
    ap.add_argument("--decoupled-images", type=int, default=4, help="calibration images of `decoupled`")
    ap.add_argument("--eval-images", type=int, default=32,
                    help="held-out images of each measured run (fewer: the measured ranking is mostly noise)")
    ap.add_argument("--n-single", type=int, default=30)
    ap.add_argument("--n-mixed", type=int, default=30)
    ap.add_argument("--estimators", nargs="+", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    wl = BuiltinWorkload("unet")
    names = list(quantizable_modules(wl.denoiser))[: args.layers]
    cal = wl.batch(args.images, split="calibration")
    wl.generate(cal)
    t0 = time.perf_counter()
    wl.generate(cal)
    fp_time = time.perf_counter() - t0
    print(f"built-in unet: {len(names)} layers, {wl.num_steps} DDIM steps, bits {[str(b) for b in BITS]}, "
          f"torch threads 1; one FP generation of {args.images} images: {fp_time:.2f} s")
    ests = args.estimators or estimator_names()
    ests += [] if "naive" in ests else ["naive"]  # the baseline every row is read against; it costs nothing
    for n_groups in args.groups:
        groups = TimestepGroups.uniform(wl.num_steps, n_groups)
        print(f"\n## {n_groups} timestep group(s) {groups}")
        results: dict[str, tuple[float, dict[str, Scores]]] = {}
        for name in ests:
            opts = {"n_images": args.decoupled_images if name == "decoupled" else args.images, "progress": False}
            est = get_estimator(name, **opts)
            t0 = time.perf_counter()
            scores = est.estimate_metrics(wl, names, BITS, groups)
            results[name] = (time.perf_counter() - t0, scores)
            print(f"  {name}: {results[name][0]:.1f} s", flush=True)
        t0 = time.perf_counter()
        m = measure(wl, names, BITS, groups, n_single=args.n_single, n_mixed=args.n_mixed,
                    n_images=args.eval_images, progress=False)
        print(f"  measured {len(m.items)} configs on held-out eval prompts/seeds in {time.perf_counter() - t0:.0f} s; "
              f"backend {m.backend}, {'SIMULATED' if m.simulated else 'real kernels'}, layer-groups ran as "
              + ", ".join(f"{k} x{v}" for k, v in sorted(m.ran_as.items())))
        print(f"\n  {'estimator':22s} {'wall s':>7s} {'xFP':>6s} | single: {'rho_q':>6s} {'rho_a':>6s} |"
              f" mixed: {'rho_q':>6s} {'tau_q':>6s} {'rho_a':>6s} {'tau_a':>6s}")
        for name, (wall, per_metric) in results.items():
            for metric, scores in per_metric.items():
                v = correlate(scores, m)
                c = v.correlations
                print(f"  {name + '(' + metric + ')':22s} {wall:7.1f} {wall / fp_time:6.1f} | "
                      f"        {fmt(c['single']['quality']['spearman'])} {fmt(c['single']['alignment']['spearman'])} |"
                      f"        {fmt(c['mixed']['quality']['spearman'])} {fmt(c['mixed']['quality']['kendall'])} "
                      f"{fmt(c['mixed']['alignment']['spearman'])} {fmt(c['mixed']['alignment']['kendall'])}")
        if n_groups > 1:
            per_group_view(wl, names, groups, results, args.eval_images)


def per_group_view(wl: BuiltinWorkload, names: list[str], groups: TimestepGroups,
                   results: dict[str, tuple[float, dict[str, Scores]]], n_images: int) -> None:
    w4 = Bits.parse("W4A16")
    print(f"\n  per timestep group, W4A16 on every layer in that group only ({groups}):")
    batch = wl.batch(n_images, split="eval")
    ref = wl.generate(batch)
    measured = []
    for g in range(len(groups)):
        plan = [Bits.parse("W16A16")] * len(groups)
        plan[g] = w4
        with quantized(wl.denoiser, BitConfig(groups, {"_default": plan}), "int8") as qm:
            test = wl.generate(batch, on_step=qm.set_step)
        measured.append(image_mse(ref.images, test.images))
    total = sum(measured)
    print(f"  {'measured (eval, image MSE)':34s} " + "  ".join(
        f"g{g}: {v:.2e} ({100 * v / total:4.1f}%, PSNR {-10 * math.log10(max(v, 1e-30)):5.1f} dB)"
        for g, v in enumerate(measured)))
    for name, (_, per_metric) in results.items():
        for metric, s in per_metric.items():
            sums = [sum(s.get(n, g, w4) for n in names) for g in range(len(groups))]
            tot = sum(sums) or 1.0
            print(f"  {name + '(' + metric + ') predicted share':34s} "
                  + "  ".join(f"g{g}: {100 * v / tot:5.1f}%" for g, v in enumerate(sums)))


if __name__ == "__main__":
    main()
