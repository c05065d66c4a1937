"""Kernel benchmark: fp32 vs bf16 vs bitsearch's real int8 path, side by side in one run.

For diffusion-typical Linear shapes, 3x3 convs, one whole SD-width UNet forward and one
PixArt-style transformer forward (random weights: speed does not depend on their values), prints
speed-up ratios against bf16 (the honest CPU baseline) and fp32, the relative error against fp32,
weight bytes, and peak resident memory of a forward (whole models, each variant in its own process, measured
above the process's footprint before the model was built: weights + activations + workspace).

Timing: one thread and CPU time of that thread (`time.thread_time`) by default, so the numbers
hold on a shared, noisy machine; the variants are interleaved round-robin and medians reported.
`--threads 2 --clock wall` gives the 2-thread wall-clock view.

    python bench/kernels.py            # everything (~10 min on 2 cores)
    python bench/kernels.py --quick    # small shapes and a 2-block UNet, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from quant.apply import QuantizedModel, apply  # noqa: E402
from quant.backends.base import get_backend  # noqa: E402
from quant.calibrate import calibrate_activations  # noqa: E402
from quant.config import BitConfig, Bits, TimestepGroups  # noqa: E402
from quant.quantizers import activation_scale, pack, quantize_weight  # noqa: E402
from workloads.denoisers import BUILTIN_CONFIGS, example_inputs  # noqa: E402

VARIANTS = ("fp32", "bf16", "int8")

LINEAR_SHAPES = [  # (tokens M, in K, out N): SD/SDXL/PixArt attention and feed-forward projections
    (4096, 320, 320), (4096, 320, 1280), (1024, 640, 640), (1024, 640, 2560),
    (256, 1280, 1280), (256, 1280, 5120), (1024, 2560, 640), (4096, 1152, 1152),
]
CONV_SHAPES = [  # (channels in, channels out, H = W) of 3x3 convs in an SD UNet at 512 px
    (320, 320, 64), (320, 640, 32), (640, 640, 32), (1280, 1280, 16), (1280, 1280, 8),
]
QUICK_LINEAR = [(256, 320, 320), (256, 640, 640), (1024, 1280, 1280)]
QUICK_CONV = [(320, 320, 32), (640, 640, 16)]


def timer(clock: str) -> Callable[[], float]:
    return time.thread_time if clock == "cpu" else time.perf_counter


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, clock: str) -> dict[str, float]:
    """Median seconds of each fn, running the variants round-robin so drift hits all alike."""
    now = timer(clock)
    for fn in fns.values():  # warm-up: oneDNN picks and caches its kernels on the first call
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = now()
            fn()
            samples[name].append(now() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def rel_err(y: Tensor, ref: Tensor) -> float:
    return float((y.float() - ref.float()).norm() / ref.float().norm())


def mb(n: float) -> str:
    return f"{n / 2**20:8.1f}"


# ---- single layers -----------------------------------------------------------------------------

def layer_variants(module: nn.Module, kind: str, x: Tensor) -> tuple[dict[str, Callable[[], Tensor]], dict[str, int]]:
    """The three ways a user could run this layer, on the same input, and their weight bytes."""
    bf16 = _copy(module).to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    kernel = get_backend("int8").kernels(module, kind, {Bits(8, 8)})[Bits(8, 8)]  # type: ignore[arg-type]
    scale = activation_scale(float(x.abs().max()), 8)
    fns = {"fp32": lambda: module(x), "bf16": lambda: bf16(xb), "int8": lambda: kernel.run(xb, scale)}
    w = module.weight
    nbytes = {
        "fp32": w.numel() * 4, "bf16": w.numel() * 2,
        "int8": sum(t.numel() * t.element_size() for t in kernel.held),
        "int4-packed": pack(quantize_weight(w, 4)).nbytes,
    }
    return fns, nbytes


def bench_layers(shapes: list[tuple[int, int, int]], kind: str, reps: int, clock: str) -> list[dict[str, Any]]:
    rows = []
    for shape in shapes:
        torch.manual_seed(0)
        if kind == "linear":
            m, k, n = shape
            module: nn.Module = nn.Linear(k, n)
            x = torch.randn(m, k)
            label = f"linear M={m:<5d} K={k:<5d} N={n:<5d}"
        else:
            cin, cout, hw = shape
            module = nn.Conv2d(cin, cout, 3, padding=1)
            x = torch.randn(1, cin, hw, hw)
            label = f"conv3x3 {cin:>4d}->{cout:<4d} {hw}x{hw}"
        with torch.no_grad():
            fns, nbytes = layer_variants(module, kind, x)
            ref = fns["fp32"]()
            errs = {v: rel_err(fns[v](), ref) for v in VARIANTS}
            t = interleaved(fns, reps, clock)
        rows.append({"name": label, "time": t, "err": errs, "bytes": nbytes})
    return rows


def _copy(module: nn.Module) -> nn.Module:
    clone = type(module).__new__(type(module))
    clone.__dict__ = module.__dict__.copy()
    clone._parameters = {k: nn.Parameter(v.detach().clone()) if v is not None else None
                         for k, v in module._parameters.items()}
    return clone


# ---- whole models --------------------------------------------------------------------------------

MODELS = {
    # SD-1.5's UNet widths (320/640/1280, 8 heads, 768-d text) at a 32x32 latent (256 px).
    "sd-unet": ("sd15-unet", {}, 32),
    # PixArt-alpha's transformer (1152 wide, patch 2) cut to 8 of its 28 blocks, at a 32x32 latent.
    "pixart": ("pixart-alpha", {"num_layers": 8, "sample_size": 32}, 32),
}
QUICK_MODELS = {
    "sd-unet": ("sd15-unet", {"block_out_channels": [320, 640], "down_block_types":
                              ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types":
                              ["UpBlock2D", "CrossAttnUpBlock2D"], "layers_per_block": 1}, 16),
    "pixart": ("pixart-alpha", {"num_layers": 2, "sample_size": 16}, 16),
}


def build_model(spec: tuple[str, dict[str, Any], int], dtype: torch.dtype) -> tuple[nn.Module, dict[str, Any]]:
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    name, overrides, latent = spec
    config = json.loads((BUILTIN_CONFIGS / f"{name}.json").read_text()) | overrides
    cls = getattr(diffusers, config["_class_name"])
    torch.manual_seed(0)
    model = cls.from_config(config).to(dtype).eval()
    torch.manual_seed(1)
    inputs = example_inputs(model, batch=1, resolution=latent)
    return model, inputs


def prepare_variant(variant: str, spec: tuple[str, dict[str, Any], int]) -> tuple[Callable[[], Tensor], int]:
    """A zero-argument forward of the model in this variant, and its weight bytes."""
    dtype = torch.float32 if variant == "fp32" else torch.bfloat16
    model, inputs = build_model(spec, dtype)
    if variant != "int8":
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        return lambda: _sample(model(**inputs)), nbytes
    qm = int8_model(model, inputs)
    # Deployment view: the float weights of quantized layers are gone, only their int8 codes remain.
    qm.drop_originals()
    quantized = set(qm.layers)
    other = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                if n.rsplit(".", 1)[0] not in quantized)
    return lambda: _sample(qm(**inputs)), qm.held_weight_bytes() + other


def int8_model(model: nn.Module, inputs: dict[str, Any]) -> QuantizedModel:
    """Every Linear and Conv2d at W8A8 on the int8 kernels, activation ranges from one forward."""
    groups = TimestepGroups(1)

    def one_forward(set_step: Callable[[int], None]) -> None:
        set_step(0)
        model(**inputs)

    ranges = calibrate_activations(model, groups, one_forward)
    return apply(model, BitConfig.uniform(groups, "W8A8"), "int8", ranges)


def _sample(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out.sample


def bench_models(models: dict[str, tuple[str, dict[str, Any], int]], reps: int, clock: str) -> list[dict[str, Any]]:
    rows = []
    for label, spec in models.items():
        with torch.no_grad():
            prepared = {v: prepare_variant(v, spec) for v in VARIANTS}
            fns = {v: p[0] for v, p in prepared.items()}
            ref = fns["fp32"]()
            errs = {v: rel_err(fns[v](), ref) for v in VARIANTS}
            t = interleaved(fns, reps, clock)
        del prepared, fns
        peak = {v: memory_probe(label, v, models) for v in VARIANTS}
        rows.append({"name": label, "time": t, "err": errs, "bytes": {v: peak[v]["weights"] for v in VARIANTS},
                     "peak": {v: peak[v]["peak"] for v in VARIANTS}})
    return rows


def memory_probe(label: str, variant: str, models: dict[str, Any]) -> dict[str, int]:
    """Peak resident memory of one forward, measured in a fresh process so variants don't mix."""
    quick = models is QUICK_MODELS
    cmd = [sys.executable, __file__, "--probe", f"{label}:{variant}"] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_probe(target: str, models: dict[str, Any]) -> None:
    """Peak RSS of a forward above the process's footprint before the model existed."""
    import ctypes
    import gc

    label, variant = target.split(":")
    torch.set_num_threads(1)
    base = _rss()
    with torch.no_grad():
        fn, weights = prepare_variant(variant, models[label])
        fn()  # first call allocates oneDNN's scratch and caches
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed float weights back to the OS
        sampler = _RssSampler()
        with sampler:
            fn()
    print(json.dumps({"weights": weights, "peak": sampler.peak - base}))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _RssSampler:
    """Samples this process's resident set size every millisecond while active (the peak of a forward)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---- report --------------------------------------------------------------------------------------

def report(title: str, rows: list[dict[str, Any]], clock: str) -> None:
    unit = "CPU ms" if clock == "cpu" else "wall ms"
    print(f"\n## {title}  ({unit}, median; error = relative L2 vs fp32)")
    head = f"{'shape':36s} {'fp32':>8s} {'bf16':>8s} {'int8':>8s} | {'int8/bf16':>9s} {'int8/fp32':>9s} | " \
           f"{'err bf16':>8s} {'err int8':>8s} | weight MiB fp32 / bf16 / int8"
    extra = rows and "peak" in rows[0]
    print(head + ("  | peak RSS MiB fp32 / bf16 / int8" if extra else ""))
    for r in rows:
        t, e, b = r["time"], r["err"], r["bytes"]
        line = (f"{r['name']:36s} {t['fp32'] * 1e3:8.2f} {t['bf16'] * 1e3:8.2f} {t['int8'] * 1e3:8.2f} | "
                f"{t['bf16'] / t['int8']:8.2f}x {t['fp32'] / t['int8']:8.2f}x | {e['bf16']:8.4f} {e['int8']:8.4f} | "
                f"{mb(b['fp32'])} /{mb(b['bf16'])} /{mb(b['int8'])}")
        if extra:
            p = r["peak"]
            line += f"  | {mb(p['fp32'])} /{mb(p['bf16'])} /{mb(p['int8'])}"
        print(line)
    if extra:
        print("(peak RSS: resident memory during one forward above the process's footprint before the model "
              "existed; int8 holds only int8 codes for quantized layers, float weights released)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes and models (smoke run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["cpu", "wall"], default=None,
                    help="cpu = time.thread_time of the calling thread (default with 1 thread); wall otherwise")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--skip-models", action="store_true")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    models = QUICK_MODELS if args.quick else MODELS
    if args.probe:
        run_probe(args.probe, models)
        return
    clock = args.clock or ("cpu" if args.threads == 1 else "wall")
    if clock == "cpu" and args.threads > 1:
        ap.error("CPU time of one thread misses the other threads' work: use --clock wall with --threads > 1")
    torch.set_num_threads(args.threads)
    reps = args.reps or (3 if args.quick else 7)
    print(f"bitsearch kernel bench: torch {torch.__version__}, {args.threads} thread(s), clock={clock}, "
          f"{reps} interleaved reps, int8 = W8A8 on oneDNN integer kernels (real, not simulated)")
    shapes = QUICK_LINEAR if args.quick else LINEAR_SHAPES
    lin = bench_layers(shapes, "linear", reps, clock)
    report("Linear layers", lin, clock)
    conv = bench_layers(QUICK_CONV if args.quick else CONV_SHAPES, "conv", reps, clock)
    report("3x3 convolutions", conv, clock)
    four_bit = [r["bytes"]["int4-packed"] / r["bytes"]["fp32"] for r in lin + conv]
    print(f"\n4-bit weights packed with their scales: {max(four_bit):.4f} of fp32 bytes at most "
          f"(target <= 1/7 = {1 / 7:.4f})")
    if not args.skip_models:
        model_rows = bench_models(models, max(3, reps // 2), clock)
        report("Whole denoiser forward (every Linear and Conv2d at W8A8)", model_rows, clock)
    big = [r for r, shape in zip(lin, shapes, strict=True) if shape[0] >= 256 and min(shape[1:]) >= 640]
    ratios = [r["time"]["bf16"] / r["time"]["int8"] for r in big]
    print(f"\nLinear int8/bf16 speed-up: median {statistics.median(ratios):.2f}x, min {min(ratios):.2f}x "
          f"(target >= 1.5x for M >= 256, K,N >= 640)")


if __name__ == "__main__":
    main()
