"""Built-in workload benchmark: is the shipped model real, and does quantization show up in its metrics?

Prints, side by side in one run on the same prompts (held-out wordings), seeds and initial noise:
- full precision: prompt accuracy by the independent classifier, CLIP-style score, FCD vs real digits
  (with the real-vs-real noise floor), and the time of one 32-image x 20-step batch;
- uniform configs (every layer) on the int8 backend's REAL kernels: fidelity to full precision
  (SQNR of denoiser outputs, PSNR/SSIM of images), distribution (FCD) and alignment;
- one layer at a time at W4A8 (the rest full precision): the spread of degradation across layers,
  i.e. whether a per-layer sensitivity signal exists.

    python bench/workload.py                 # 500 samples, all 132 single layers (~15 min on 2 cores)
    python bench/workload.py --n 100 --layers 20   # quicker look
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from quant.apply import quantized  # noqa: E402
from quant.calibrate import calibrate_activations  # noqa: E402
from quant.config import BitConfig, TimestepGroups  # noqa: E402
from quant.layers import quantizable_modules  # noqa: E402
from workloads.base import Batch, Generation  # noqa: E402
from workloads.builtin.metrics import fcd_noise_floor  # noqa: E402
from workloads.builtin.workload import BuiltinWorkload  # noqa: E402
from workloads.metrics import fidelity  # noqa: E402

UNIFORM = ["W8A8", "W8A16", "W6A8", "W8A6", "W4A16", "W4A8", "W3A8"]


def generate_all(wl: BuiltinWorkload, batch: Batch, chunk: int, **kw: object) -> Generation:
    """Generate a large batch in chunks (same seeds, same images as one call)."""
    parts = [wl.generate(Batch(batch.prompts[i:i + chunk], batch.seeds[i:i + chunk]), record_steps=True, **kw)
             for i in range(0, len(batch.prompts), chunk)]
    steps = [torch.cat([p.step_outputs[s] for p in parts]) for s in range(len(parts[0].step_outputs))]
    return Generation(torch.cat([p.images for p in parts]), steps)


def row(name: str, m: dict[str, float]) -> str:
    return (f"{name:12s} {m.get('sqnr_db', float('inf')):8.2f} {m.get('psnr_db', float('inf')):8.2f} "
            f"{m.get('ssim', 1.0):7.4f} {m['fcd']:8.2f} {100 * m['prompt_accuracy']:7.1f}% {m['clip_score']:7.2f}  "
            f"{m.get('ran', '')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["unet", "dit"], default="unet")
    ap.add_argument("--n", type=int, default=500, help="samples per config (>= 500 to compare accuracy/FCD)")
    ap.add_argument("--layers", type=int, default=None, help="single-layer runs: first N layers (default all)")
    ap.add_argument("--backend", default="int8", help="int8 = real kernels; fake = simulated")
    args = ap.parse_args()
    torch.set_num_threads(1)
    wl = BuiltinWorkload(args.kind)
    n_params = sum(p.numel() for p in wl.denoiser.parameters())
    print(f"built-in {args.kind}: {n_params / 1e6:.2f} M parameters, {wl.num_steps} DDIM steps, "
          f"backend {args.backend} ({'real integer kernels' if args.backend == 'int8' else 'SIMULATED'})")

    timing_batch = wl.batch(32)
    t0, c0 = time.perf_counter(), time.thread_time()
    wl.generate(timing_batch)
    print(f"one batch of 32 images x {wl.num_steps} steps: {time.perf_counter() - t0:.2f} s wall, "
          f"{time.thread_time() - c0:.2f} s CPU (1 thread)")

    batch = wl.batch(args.n)
    groups = TimestepGroups(wl.num_steps)
    ranges = calibrate_activations(wl.denoiser, groups, wl.calibration_run(wl.batch(32, split="calibration")))
    reference = generate_all(wl, batch, 100)
    floor = fcd_noise_floor(min(args.n, 500))
    fp = {**wl.distribution(reference), **wl.alignment(batch, reference)}
    print(f"\n## Uniform configs, {args.n} samples (held-out wordings); FCD real-vs-real noise floor {floor:.2f}")
    print(f"{'config':12s} {'SQNR dB':>8s} {'PSNR dB':>8s} {'SSIM':>7s} {'FCD':>8s} {'acc':>8s} {'CLIP':>7s}  ran as")
    print(row("full prec.", fp))
    for bits in UNIFORM:
        with quantized(wl.denoiser, BitConfig.uniform(groups, bits), args.backend, ranges) as qm:
            test = generate_all(wl, batch, 100, on_step=qm.set_step)
            labels = ", ".join(f"{k} x{v}" for k, v in sorted(qm.label_counts().items()))
        m = {**fidelity(reference, test), **wl.distribution(test), **wl.alignment(batch, test), "ran": labels}
        print(row(bits, m))  # type: ignore[arg-type]

    names = list(quantizable_modules(wl.denoiser))[: args.layers]
    small = wl.batch(10, offset=1000)  # one image per digit, seeds not used above
    ref_small = wl.generate(small, record_steps=True)
    print(f"\n## One layer at a time at W4A8 ({len(names)} layers, 10 images): SQNR of denoiser outputs, dB")
    results = []
    for name in names:
        cfg = BitConfig(groups, {name: "W4A8"})
        with quantized(wl.denoiser, cfg, args.backend, ranges) as qm:
            test = wl.generate(small, on_step=qm.set_step, record_steps=True)
        results.append((fidelity(ref_small, test)["sqnr_db"], name))
    results.sort()
    for sqnr, name in results[:8]:
        print(f"  most sensitive   {sqnr:7.2f}  {name}")
    for sqnr, name in results[-4:]:
        print(f"  least sensitive  {sqnr:7.2f}  {name}")
    values = [s for s, _ in results]
    print(f"  spread: min {min(values):.2f} dB, median {statistics.median(values):.2f} dB, max {max(values):.2f} dB "
          f"({max(values) - min(values):.1f} dB between the most and least sensitive layer)")


if __name__ == "__main__":
    main()
