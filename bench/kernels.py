"""Kernel benchmark: every format the CPU target's `int8` backend really runs, against the FASTEST
FLOAT FORMAT OF THIS MACHINE (fp32 or bf16, measured per shape and named).

Which float is fastest depends on the CPU: with AMX or a fast bf16 path (e.g. an AMD EPYC) bf16
GEMM is ~2x faster than fp32; on an Intel Xeon without AMX bf16 is 1.5-1.9x SLOWER. So both are
timed on every shape, the faster one is the baseline of every ratio, and the quantized kernels are
fed activations in that float's dtype (what a deployment on this machine would run).

Formats (each kernel built by the project's own backend, `get_backend("int8").kernels(...)`, so this
measures exactly what studies run; the row name carries the kernel's `LayerKernel.label`):
  fp32 / bf16 float     the layer unquantized
  W8A8  int8-kernel     oneDNN qlinear / qconv on int8 weights and uint8 activations
  W6A8, W4A8            the same int8 kernel on codes of the 6/4-bit grid held in int8 containers:
                        the quality of W6/W4, the speed and memory of W8
  W8A16 weight-only     aten._weight_int8pack_mm (Linear only; a conv falls back to dequantize-float)
  W4A16 weight-only     aten._weight_int4pack_mm_for_cpu (Linear only; conv: dequantize-float)
  W6A16 dequantize-float  int8 codes expanded to float at every call (no kernel for that width)

Per shape and format: median time, speed-up against the fastest float (>1 = faster), resident bytes
of the tensors the kernel holds (`LayerKernel.held`, storages deduplicated) against the fastest
float's weight bytes, and the relative L2 error against fp32.

Timing: one thread and CPU time of that thread (`time.thread_time`) by default, so the numbers
hold on a shared, noisy machine; the formats are interleaved (order shuffled each rep) and medians
reported.
`--threads 2 --clock wall` gives the 2-thread wall-clock view. `--models` adds whole denoiser
forwards (fp32, bf16, W8A8; slow: several minutes) with their peak resident memory.

example:
    python bench/kernels.py                 # all Linear and conv shapes (~2-3 min on 2 cores)
    python bench/kernels.py --quick         # one Linear and one conv shape, for a smoke run
    python bench/kernels.py --models        # plus a whole SD UNet and PixArt forward (~10 min)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from quant.apply import QuantizedModel, apply  # noqa: E402
from quant.backends.base import LayerKernel, get_backend  # noqa: E402
from quant.calibrate import calibrate_activations  # noqa: E402
from quant.config import BitConfig, Bits, TimestepGroups  # noqa: E402
from quant.quantizers import activation_scale  # noqa: E402
from workloads.denoisers import BUILTIN_CONFIGS, example_inputs  # noqa: E402

FLOATS = {"fp32": torch.float32, "bf16": torch.bfloat16}
# The quantized pairs the int8 backend implements for real (see quant/backends/int8.py).
QUANTIZED = [Bits(8, 8), Bits(6, 8), Bits(4, 8), Bits(8, 16), Bits(4, 16), Bits(6, 16)]

LINEAR_SHAPES = [  # (tokens M, in K, out N): SD/SDXL/PixArt attention and feed-forward projections
    (4096, 320, 320), (4096, 320, 1280), (1024, 640, 640), (1024, 640, 2560),
    (256, 1280, 1280), (256, 1280, 5120), (1024, 2560, 640), (4096, 1152, 1152),
]
CONV_SHAPES = [  # (channels in, channels out, H = W) of 3x3 convs in an SD UNet at 512 px
    (320, 320, 64), (320, 640, 32), (640, 640, 32), (1280, 1280, 16), (1280, 1280, 8),
]
QUICK_LINEAR = [(1024, 640, 640)]
QUICK_CONV = [(320, 320, 32)]


def timer(clock: str) -> Callable[[], float]:
    return time.thread_time if clock == "cpu" else time.perf_counter


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, clock: str) -> dict[str, list[float]]:
    """Seconds of each fn per rep, running the variants round-robin so drift hits all alike; the order
    is shuffled every rep (fixed seed) so no variant always runs right after the same neighbour."""
    now = timer(clock)
    for fn in fns.values():  # warm-up: oneDNN picks and caches its kernels on the first call
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    rng = random.Random(0)
    for _ in range(reps):
        rng.shuffle(order)
        for name in order:
            t0 = now()
            fns[name]()
            samples[name].append(now() - t0)
    return samples


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in samples.items()}


def rel_err(y: Tensor, ref: Tensor) -> float:
    return float((y.float() - ref.float()).norm() / ref.float().norm())


def mb(n: float) -> str:
    return f"{n / 2**20:8.1f}"


def held_bytes(tensors: list[Tensor]) -> int:
    """Resident bytes of a kernel's tensors, each storage counted once. oneDNN's prepacked weights
    are opaque (no storage to read): counted as numel x element size, their logical size."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        try:
            storage = t.untyped_storage()
        except (NotImplementedError, RuntimeError):
            key, nbytes = id(t), t.numel() * t.element_size()
        else:
            key, nbytes = storage.data_ptr(), storage.nbytes()
        if key not in seen:
            seen.add(key)
            total += nbytes
    return total


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                wanted = ["avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8"]
                return " ".join(f for f in wanted if f in have) or "none of avx512/vnni/amx"
    except OSError:
        pass
    return "?"


# ---- single layers -----------------------------------------------------------------------------

def format_name(bits: Bits, label: str, kind: str) -> str:
    """The row name: bits, the kernel's own label, and what that means."""
    if bits.is_full_precision:
        return f"{label} float"
    if label == "int8-kernel":
        op = "qlinear" if kind == "linear" else "qconv"
        if bits.w == 8:
            return f"{bits} int8-kernel (onednn {op})"
        return f"{bits} int8-kernel: W{bits.w} grid in int8 (W{bits.w} quality, W8 speed+mem)"
    if label == "weight-only-kernel":
        op = "_weight_int8pack_mm" if bits.w == 8 else "_weight_int4pack_mm_for_cpu"
        return f"{bits} weight-only-kernel ({op})"
    return f"{bits} dequantize-float (int8 codes expanded each call)"


@dataclass
class Row:
    name: str
    ms: float
    speedup: float  # fastest float's time / this time
    bytes_ratio: float  # held bytes / fastest float's weight bytes
    err: float  # relative L2 vs fp32


@dataclass
class ShapeResult:
    shape: str
    fastest: str  # the fastest float, named
    float_ratio: float  # slower float's time / fastest float's time
    input_dtype: str  # the dtype the quantized kernels were fed
    rows: list[Row]


def bench_shape(module: nn.Module, kind: str, x: Tensor, label: str, reps: int, clock: str) -> ShapeResult:
    backend = get_backend("int8")
    floats: dict[str, LayerKernel] = {}
    inputs: dict[str, Tensor] = {}
    for name, dtype in FLOATS.items():
        copy = _copy(module).to(dtype)
        floats[name] = backend.kernels(copy, kind, {Bits(16, 16)})[Bits(16, 16)]  # type: ignore[arg-type]
        inputs[name] = x.to(dtype)
    # Pass 1: the floats alone, to pick the dtype the quantized kernels get (the deployment's dtype).
    float_fns = {n: (lambda k=k, xi=inputs[n]: k.run(xi, None)) for n, k in floats.items()}
    first = interleaved(float_fns, max(3, reps // 2), clock)
    act = min(first, key=lambda n: statistics.median(first[n]))
    quantized = backend.kernels(module, kind, set(QUANTIZED))  # type: ignore[arg-type]
    xa = inputs[act]
    scale = activation_scale(float(x.abs().max()), 8)
    kernels: dict[str, tuple[Bits, LayerKernel, Tensor]] = {n: (Bits(16, 16), k, inputs[n]) for n, k in floats.items()}
    for b in QUANTIZED:
        kernels[format_name(b, quantized[b].label, kind)] = (b, quantized[b], xa)
    fns = {n: (lambda k=k, xi=xi, b=b: k.run(xi, None if b.a == 16 else scale)) for n, (b, k, xi) in kernels.items()}
    ref = fns["fp32"]()
    errs = {n: rel_err(fn(), ref) for n, fn in fns.items()}
    # Pass 2: every format, interleaved; the floats keep their pass-1 samples too.
    samples = interleaved(fns, reps, clock)
    for n in floats:
        samples[n] = first[n] + samples[n]
    t = medians(samples)
    fastest = min(floats, key=lambda n: t[n])
    slower = next(n for n in floats if n != fastest)
    base_t, base_b = t[fastest], held_bytes(floats[fastest].held)
    rows = [Row(n if n not in floats else f"{n} float", t[n] * 1e3, base_t / t[n],
                held_bytes(k.held) / base_b, errs[n]) for n, (_, k, _) in kernels.items()]
    input_dtype = act if act == fastest else f"{act} (pass 1 pick; overall medians favour {fastest})"
    return ShapeResult(label, fastest, t[slower] / base_t, input_dtype, rows)


def bench_layers(shapes: list[tuple[int, int, int]], kind: str, reps: int, clock: str) -> list[ShapeResult]:
    out = []
    for shape in shapes:
        torch.manual_seed(0)
        if kind == "linear":
            m, k, n = shape
            module: nn.Module = nn.Linear(k, n)
            x = torch.randn(m, k)
            label = f"linear M={m} K={k} N={n}"
        else:
            cin, cout, hw = shape
            module = nn.Conv2d(cin, cout, 3, padding=1)
            x = torch.randn(1, cin, hw, hw)
            label = f"conv3x3 {cin}->{cout} {hw}x{hw}"
        with torch.no_grad():
            out.append(bench_shape(module, kind, x, label, reps, clock))
        print(f"  done: {label}", file=sys.stderr, flush=True)
    return out


def _copy(module: nn.Module) -> nn.Module:
    clone = type(module).__new__(type(module))
    clone.__dict__ = module.__dict__.copy()
    clone._parameters = {k: nn.Parameter(v.detach().clone()) if v is not None else None
                         for k, v in module._parameters.items()}
    return clone


def report_layers(title: str, results: list[ShapeResult], clock: str) -> None:
    unit = "CPU ms" if clock == "cpu" else "wall ms"
    print(f"\n## {title}  ({unit}, median; x = fastest float's time / this time, >1 faster; "
          f"bytes = held bytes / fastest float's weight bytes; err = relative L2 vs fp32)")
    for r in results:
        slower = next(n for n in FLOATS if n != r.fastest)
        print(f"\n{r.shape}   fastest float: {r.fastest} ({slower} {r.float_ratio:.2f}x slower); "
              f"quantized kernels fed {r.input_dtype} activations")
        print(f"  {'format':62s} {unit:>9s} {'x fastest':>10s} {'bytes':>7s} {'err':>8s}")
        for row in r.rows:
            print(f"  {row.name:62s} {row.ms:9.2f} {row.speedup:9.2f}x {row.bytes_ratio:7.3f} {row.err:8.4f}")
    print("\n(bytes: oneDNN's prepacked int8 weights are opaque tensors, counted at their logical size, 1 byte a "
          "weight; bias and activations not counted)")


def summary(title: str, results: list[ShapeResult]) -> None:
    """One line per shape: the speed-up of every format against that shape's fastest float."""
    cols = [(r.name.split(" ")[0] + (" " + r.name.split(" ")[1] if r.name.split(" ")[0] not in FLOATS else ""))
            for r in results[0].rows]
    short = [c.replace("int8-kernel", "i8k").replace("int8-kernel:", "i8k").replace("weight-only-kernel", "w-only")
             .replace("dequantize-float", "deq").rstrip(":") for c in cols]
    print(f"\n## Summary, {title}: speed-up vs the fastest float of each shape (x, >1 faster; "
          "i8k = int8-kernel, w-only = weight-only-kernel, deq = dequantize-float)")
    print(f"{'shape':30s} {'fastest':>7s} " + " ".join(f"{s:>11s}" for s in short) + "  i8k spread")
    for r in results:
        same = [row.ms for row in r.rows if "int8-kernel" in row.name]  # one kernel: their spread is noise
        print(f"{r.shape:30s} {r.fastest:>7s} " + " ".join(f"{row.speedup:10.2f}x" for row in r.rows)
              + f"  {max(same) / min(same):9.2f}x")
    print("(i8k spread: slowest / fastest of W8A8, W6A8, W4A8, which run the same int8 kernel on the same "
          "data sizes: the timing noise of this run, read ratios closer to 1 than that as ties)")


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


def prepare_variant(variant: str, spec: tuple[str, dict[str, Any], int],
                    act: str = "bf16") -> tuple[Callable[[], Tensor], int]:
    """A zero-argument forward of the model in this variant, and its weight bytes. The W8A8 model
    runs its float parts (and its kernels' activations) in the dtype `act`."""
    dtype = FLOATS[variant] if variant in FLOATS else FLOATS[act]
    model, inputs = build_model(spec, dtype)
    if variant in FLOATS:
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
            prepared = {v: prepare_variant(v, spec) for v in FLOATS}
            first = interleaved({v: p[0] for v, p in prepared.items()}, 2, clock)
            act = min(first, key=lambda v: statistics.median(first[v]))
            prepared["W8A8"] = prepare_variant("W8A8", spec, act)
            fns = {v: p[0] for v, p in prepared.items()}
            ref = fns["fp32"]()
            errs = {v: rel_err(fns[v](), ref) for v in fns}
            samples = interleaved(fns, reps, clock)
            for v in FLOATS:
                samples[v] = first[v] + samples[v]
            t = medians(samples)
            nbytes = {v: p[1] for v, p in prepared.items()}
        del prepared, fns
        peak = {v: memory_probe(label, v, act, models)["peak"] for v in t}
        rows.append({"name": label, "act": act, "time": t, "err": errs, "bytes": nbytes, "peak": peak})
        print(f"  done: {label}", file=sys.stderr, flush=True)
    return rows


def memory_probe(label: str, variant: str, act: str, models: dict[str, Any]) -> dict[str, int]:
    """Peak resident memory of one forward, measured in a fresh process so variants don't mix."""
    quick = models is QUICK_MODELS
    cmd = [sys.executable, __file__, "--probe", f"{label}:{variant}:{act}"] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_probe(target: str, models: dict[str, Any]) -> None:
    """Peak RSS of a forward above the process's footprint before the model existed."""
    import ctypes
    import gc

    label, variant, act = target.split(":")
    torch.set_num_threads(1)
    base = _rss()
    with torch.no_grad():
        fn, weights = prepare_variant(variant, models[label], act)
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


def report_models(rows: list[dict[str, Any]], clock: str) -> None:
    unit = "CPU ms" if clock == "cpu" else "wall ms"
    print(f"\n## Whole denoiser forward (every Linear and Conv2d at W8A8)  ({unit}, median; x and bytes vs "
          f"the fastest float; peak = resident MiB during one forward above the footprint before the model)")
    for r in rows:
        t = r["time"]
        fastest = min(FLOATS, key=lambda v: t[v])
        print(f"\n{r['name']}   fastest float: {fastest}; W8A8 model's float parts and activations in {r['act']}")
        print(f"  {'format':30s} {unit:>9s} {'x fastest':>10s} {'bytes':>7s} {'err':>8s} {'weight MiB':>10s} "
              f"{'peak MiB':>9s}")
        for v in t:
            name = f"{v} float" if v in FLOATS else "W8A8 int8-kernel (all layers)"
            print(f"  {name:30s} {t[v] * 1e3:9.1f} {t[fastest] / t[v]:9.2f}x "
                  f"{r['bytes'][v] / r['bytes'][fastest]:7.3f} {r['err'][v]:8.4f} {mb(r['bytes'][v]):>10s} "
                  f"{mb(r['peak'][v]):>9s}")


# ---- main ----------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one Linear and one conv shape (smoke run)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default=None,
                    help="cpu = time.thread_time of the calling thread (default with 1 thread); wall otherwise")
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 15, quick 3)")
    ap.add_argument("--models", action="store_true", help="also whole denoiser forwards (slow)")
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
    reps = args.reps or (3 if args.quick else 15)
    print(f"bitsearch kernel bench | CPU: {cpu_name()} [{cpu_flags()}] | torch {torch.__version__} | "
          f"{torch.get_num_threads()} thread(s) | clock={clock} | {reps} interleaved reps (+ a float-only pass)")
    print("baseline of every ratio: the FASTEST FLOAT (fp32 or bf16) of each shape, measured and named below; "
          "all quantized kernels built by get_backend('int8').kernels (real, not simulated)")
    lin_shapes = QUICK_LINEAR if args.quick else LINEAR_SHAPES
    lin = bench_layers(lin_shapes, "linear", reps, clock)
    report_layers("Linear layers", lin, clock)
    conv = bench_layers(QUICK_CONV if args.quick else CONV_SHAPES, "conv", reps, clock)
    report_layers("3x3 convolutions", conv, clock)
    summary("Linear", lin)
    summary("3x3 conv", conv)
    wins = {n: sum(r.fastest == n for r in lin + conv) for n in FLOATS}
    print("\nfastest float: " + ", ".join(f"{n} on {c} of {len(lin) + len(conv)} shapes" for n, c in wins.items()))
    w8a8 = format_name(Bits(8, 8), "int8-kernel", "linear")
    big = [r for r, s in zip(lin, lin_shapes, strict=True) if s[0] >= 256 and min(s[1:]) >= 640] or lin
    ratios = [next(row.speedup for row in r.rows if row.name == w8a8) for r in big]
    print(f"Linear W8A8 int8-kernel vs fastest float: median {statistics.median(ratios):.2f}x, min {min(ratios):.2f}x "
          f"(target >= 1.5x for M >= 256, K,N >= 640)")
    for bits in (Bits(8, 16), Bits(4, 16)):
        name = format_name(bits, "weight-only-kernel", "linear")
        sp = [row.speedup for r in lin for row in r.rows if row.name == name]
        if sp:
            print(f"Linear {name} vs fastest float: median {statistics.median(sp):.2f}x, "
                  f"range {min(sp):.2f}x .. {max(sp):.2f}x (saves memory, not time, where < 1)")
    if args.models:
        report_models(bench_models(models, max(3, reps // 2), clock), clock)


if __name__ == "__main__":
    main()
