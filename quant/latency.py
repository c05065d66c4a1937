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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from quant.apply import QuantizedModel, quantized
from quant.backends.base import Backend, LayerKernel
from quant.calibrate import ActivationRanges
from quant.config import FULL_PRECISION, BitConfig, Bits, TimestepGroups
from quant.cost import LatencyTable
from quant.layers import quantizable_modules

FULL = FULL_PRECISION


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


def uniformly_applied(model: nn.Module, bits: Sequence[Bits | str], backend: str | Backend = "int8",
                      ranges: ActivationRanges | None = None) -> Iterator[tuple[Bits, QuantizedModel]]:
    """The model quantized uniformly at each pair of `bits` and at W16A16 in turn (restored after each):
    each pair's weights are quantized once, whatever is measured while they are applied."""
    groups = TimestepGroups(1) if ranges is None else ranges.groups
    for b in sorted({FULL, *(Bits.parse(x) for x in bits)}):
        config = BitConfig.uniform(groups, b)
        with torch.no_grad(), quantized(model, config, backend, ranges if not b.is_full_precision else None) as qm:
            qm.set_step(0)
            yield b, qm


def measure_latency(model: nn.Module, run: Callable[[], Any], bits: Sequence[Bits | str], backend: str = "int8",
                    ranges: ActivationRanges | None = None, repeats: int = 5,
                    while_applied: Callable[[Bits, QuantizedModel], None] | None = None) -> LatencyTable:
    """Seconds per denoiser forward of each layer at each of `bits` (plus full precision).
    `while_applied(bits, qm)` runs while each pair is applied (e.g. to read what its kernels hold).

    Work that is the same is timed once: layers alike in everything a kernel's time depends on
    (`_timing_key`: type, weight shape, bias, conv geometry, the shapes and dtype of every call's input)
    on the first of them (a real-size UNet repeats a few dozen shapes over hundreds of layers); and pairs
    whose kernels for a layer run the same code on the same tensors (`_kernel_key`: W4A8, W6A8 and W8A8
    all run the int8 kernel on int8 codes) on the first of them, so noise cannot rank them apart.

    The pairs are applied one after the other, minutes apart on a big model, while the machine's load
    moves: so each quantized kernel is timed side by side with the layer's float forward (the float
    module its QuantLayer keeps), and its entry is that ratio times the layer's float time, the median
    of every window's. Entries of different pairs then share one clock."""
    inputs = layer_inputs(model, run)
    modules = quantizable_modules(model)
    timed: dict[tuple[object, ...], str] = {}  # key -> the layer timed for it
    representative = {fqn: timed.setdefault(_timing_key(modules[fqn][0], xs), fqn) for fqn, xs in inputs.items()}
    floats: dict[str, list[float]] = {fqn: [] for fqn in timed.values()}  # each window's float time
    ratios: dict[tuple[str, tuple[object, ...]], float] = {}  # (layer, kernel key) -> over its float time
    kernel_of: dict[tuple[str, Bits], tuple[str, tuple[object, ...]] | None] = {}  # None: the float layer
    for b, qm in uniformly_applied(model, bits, backend, ranges):
        for fqn in timed.values():
            layer, q = model.get_submodule(fqn), qm.layers.get(fqn)
            if q is None:
                floats[fqn].append(time_calls([_calls(layer, inputs[fqn])], repeats)[0])
                kernel_of[(fqn, b)] = None
                continue
            key = (fqn, _kernel_key(q.kernels[b]))
            if key not in ratios:
                quantized_s, float_s = time_calls([_calls(layer, inputs[fqn]), _float_calls(qm, layer, inputs[fqn])],
                                                  repeats)
                ratios[key] = quantized_s / max(float_s, 1e-12)
                floats[fqn].append(float_s)
            kernel_of[(fqn, b)] = key
        if while_applied is not None:
            while_applied(b, qm)
    table: dict[str, dict[Bits, float]] = {fqn: {} for fqn in inputs}
    for fqn, rep in representative.items():
        float_s = statistics.median(floats[rep])
        for (name, b), kernel in kernel_of.items():
            if name == rep:
                table[fqn][b] = float_s if kernel is None else ratios[kernel] * float_s
    return table


def _float_calls(qm: QuantizedModel, layer: nn.Module, xs: Sequence[torch.Tensor]) -> Callable[[], object]:
    """`_calls` of a QuantLayer run by its float module (`QuantizedModel.float_reference`)."""
    def run() -> object:
        with qm.float_reference():
            return [layer(x) for x in xs]
    return run


def _kernel_key(kernel: LayerKernel) -> tuple[object, ...]:
    return (kernel.label, tuple((t.dtype, tuple(t.shape)) for t in kernel.held))


def _timing_key(module: nn.Module, xs: Sequence[torch.Tensor]) -> tuple[object, ...]:
    weight = getattr(module, "weight", None)
    geometry = tuple(getattr(module, a, None) for a in ("stride", "padding", "dilation", "groups"))
    return (type(module), None if weight is None else tuple(weight.shape), getattr(module, "bias", None) is not None,
            geometry, tuple((tuple(x.shape), x.dtype) for x in xs))


def _calls(layer: nn.Module, xs: Sequence[torch.Tensor]) -> Callable[[], object]:
    """Every call the layer gets in one denoiser forward, as one run to time."""
    return lambda: [layer(x) for x in xs]


def time_calls(runs: Sequence[Callable[[], object]], repeats: int, warmups: int = 1) -> list[float]:
    """Median CPU seconds of the process (every thread counted) for each of `runs`, after `warmups`
    untimed rounds (first-call allocations and kernel selection), the runs interleaved (a, b, a, b, ...)
    so that a noisy neighbour weighs on all of them alike."""
    samples: list[list[float]] = [[] for _ in runs]
    for i in range(warmups + repeats):
        for run, times in zip(runs, samples, strict=True):
            t0 = time.process_time()
            run()
            if i >= warmups:
                times.append(time.process_time() - t0)
    return [statistics.median(times) for times in samples]


@dataclass(frozen=True)
class Call:
    """The inputs of one denoiser call, as the sampler made them."""

    args: tuple[object, ...]
    kwargs: dict[str, object]


def record_calls(module: nn.Module, run: Callable[[], object]) -> list[Call]:
    """The inputs of every call of `module` during `run()` (a generation: call i is step i), cloned so
    that a sampler updating its tensors in place cannot change them afterwards."""
    calls: list[Call] = []

    def grab(_m: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        clone = lambda v: v.clone() if isinstance(v, torch.Tensor) else v  # noqa: E731
        calls.append(Call(tree_map(clone, args), tree_map(clone, kwargs)))

    handle = module.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return calls


def side_by_side(qm: QuantizedModel, calls: Sequence[Call]) -> tuple[float, float]:
    """Median CPU seconds per denoiser call of the quantized model and of the same model's float layers
    (`QuantizedModel.float_reference`), each recorded call run by one and then the other: their ratio
    holds whatever else loads the machine, which a quantized run timed alone does not (a busy sibling
    hyperthread slows every call of a window alike). The quantized kernels are warm from the generation
    that recorded the calls; the float path gets one warm-up call."""
    def quantized(step: int, call: Call) -> Callable[[], object]:
        def run() -> object:
            qm.set_step(step)
            return qm.model(*call.args, **call.kwargs)
        return run

    def reference(call: Call) -> Callable[[], object]:
        def run() -> object:
            with qm.float_reference():
                return qm.model(*call.args, **call.kwargs)
        return run

    with torch.no_grad():
        reference(calls[0])()
        times = time_calls([r for i, c in enumerate(calls) for r in (quantized(i, c), reference(c))], 1, warmups=0)
    return statistics.median(times[0::2]), statistics.median(times[1::2])
