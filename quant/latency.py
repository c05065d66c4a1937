"""Per-layer latency tables, measured: each quantizable layer timed in isolation at each bit-width,
with the backend's kernels (`quant.apply`), on the inputs it receives in one real denoiser call.

The table (`quant.cost.LatencyTable`: fqn -> Bits -> seconds per denoiser forward, every call of the
layer in that forward included) is what latency budgets are solved against. A layer's latency is
additive across layers in this model: it ignores fusion and overlap, so a solved config's latency is
a prediction; the study's evaluations record the measured one. `full precision` (W16A16) is the
layer's own float forward. Timing: CPU time of the process (`time.process_time`, every thread counted)
on CPUs, the median of `repeats` after one warm-up; run it with the thread count the deployment will use.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from quant.apply import quantized
from quant.calibrate import ActivationRanges
from quant.config import BitConfig, Bits, TimestepGroups
from quant.cost import LatencyTable
from quant.layers import quantizable_modules

FULL = Bits(16, 16)


def layer_inputs(model: nn.Module, run: Callable[[], Any]) -> dict[str, list[torch.Tensor]]:
    """The input of every call of every quantizable layer during `run()` (one denoiser forward)."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [m.register_forward_pre_hook(lambda _m, args, fqn=fqn: seen.setdefault(fqn, []).append(args[0]))
               for fqn, (m, _kind) in quantizable_modules(model).items()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return seen


def measure_latency(model: nn.Module, run: Callable[[], Any], bits: Sequence[Bits | str], backend: str = "int8",
                    ranges: ActivationRanges | None = None, repeats: int = 5) -> LatencyTable:
    """Seconds per denoiser forward of each layer at each of `bits` (plus full precision)."""
    inputs = layer_inputs(model, run)
    options = sorted({FULL, *(Bits.parse(b) if isinstance(b, str) else b for b in bits)})
    table: dict[str, dict[Bits, float]] = {fqn: {} for fqn in inputs}
    groups = TimestepGroups(1) if ranges is None else ranges.groups
    for b in options:
        config = BitConfig.uniform(groups, b)
        with torch.no_grad(), quantized(model, config, backend, ranges if not b.is_full_precision else None) as qm:
            qm.set_step(0)
            for fqn, xs in inputs.items():
                table[fqn][b] = _time(model.get_submodule(fqn), xs, repeats)
    return table


def _time(layer: nn.Module, xs: Sequence[torch.Tensor], repeats: int) -> float:
    """Median CPU seconds of `layer` over all its calls `xs`, after one warm-up (first-call
    allocations and kernel selection)."""
    samples = []
    for i in range(repeats + 1):
        t0 = time.process_time()
        for x in xs:
            layer(x)
        if i:
            samples.append(time.process_time() - t0)
    return statistics.median(samples)
