"""Per-layer latency tables, measured: each quantizable layer timed at each bit-width with the
backend's kernels (`quant.apply`), inside real denoiser calls (`measure_latency`); and a candidate's
calls timed side by side with the same model's float layers (`side_by_side`).

The table (`quant.cost.LatencyTable`: fqn -> Bits -> seconds per denoiser forward, every call of the
layer in that forward included) is what latency budgets are solved against. A layer's latency is
additive across layers in this model: it ignores fusion, overlap and the cost of format boundaries, so
a solved config's latency is a prediction; the study's evaluations record the measured one. `full
precision` (W16A16) is the layer's own float forward. Timing: CPU time of the process
(`time.process_time`, every thread counted), medians after a warm-up; run it with the thread count the
deployment will use.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from quant.apply import QuantizedModel, quantized
from quant.backends.base import Backend, LayerKernel, Quantizable, get_backend
from quant.calibrate import ActivationRanges
from quant.config import FULL_PRECISION, BitConfig, Bits, TimestepGroups
from quant.cost import LatencyTable
from quant.layers import LayerKind, quantizable_modules

FULL = FULL_PRECISION


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


TABLE_MIN_ROUNDS = 3  # in_context: at least this many timed rounds (a median of 3 sheds an outlier) ...
TABLE_S = 30.0  # ... and more, up to `repeats`, until the timed calls took this many CPU seconds


def measure_latency(model: nn.Module, run: Callable[[], Any], bits: Sequence[Bits | str], backend: str = "int8",
                    ranges: ActivationRanges | None = None, repeats: int = 5,
                    while_applied: Callable[[Bits, QuantizedModel], None] | None = None) -> tuple[LatencyTable, float]:
    """Seconds per denoiser forward of each layer at each of `bits` (plus full precision), and of the
    rest of the call (every op outside the quantizable layers). `while_applied(bits, qm)` runs while each
    pair is applied (e.g. to read what its kernels hold).

    Layers are timed in context: whole calls `run()` with a clock around every quantizable layer
    (`in_context`), so each layer meets the caches a real call leaves it, not its own warm repeats.
    The pairs are applied one after the other, minutes apart on a big model, while the machine's load
    moves: so with each pair applied the quantized call and the float one (the float modules the
    QuantLayers keep) alternate, and a layer's entry is its quantized over its float time in that
    window times its float time, the median of every window's. The rest of the call is the float calls'
    share outside the layers, on the same clock. Pairs whose kernels for a layer run the same code on
    the same tensors (`kernel_key`: W4A8, W6A8 and W8A8 all run the int8 kernel on int8 codes) share
    the first one's ratio, so noise cannot rank them apart; a pair whose every layer shares an earlier
    pair's kernel is applied (for `while_applied`) but not timed again (an SD1.5-size table: 3 of the
    default 5 pairs timed). The float model is timed beside every quantized pair, so it gets no pass of
    its own unless `bits` has no quantized pair. Each window runs `repeats` rounds, or `TABLE_MIN_ROUNDS`
    once its calls took `TABLE_S` seconds (a big model's calls are steady: a PixArt-size window's round
    takes 19 s)."""
    floats: dict[str, list[float]] = {}  # each window's in-context float time per layer
    rest_shares: list[float] = []
    ratios: dict[tuple[str, tuple[object, ...]], float] = {}  # (layer, kernel key) -> over its float time
    kernel_of: dict[tuple[str, Bits], tuple[str, tuple[object, ...]] | None] = {}  # None: the float layer
    beside_quantized = any(not Bits.parse(b).is_full_precision for b in bits)
    for b, qm in uniformly_applied(model, bits, backend, ranges):
        keys = {fqn: kernel_key(layer.kernels[b]) for fqn, layer in qm.layers.items()
                if not b.is_full_precision}
        if keys and all((fqn, key) in ratios for fqn, key in keys.items()):
            # every layer runs a kernel an earlier pair timed (W6A8 and W8A8 after W4A8): nothing new to time
            kernel_of.update({(fqn, b): (fqn, key) for fqn, key in keys.items()})
            kernel_of.update({(fqn, b): None for fqn in floats if fqn not in keys})
            if while_applied is not None:
                while_applied(b, qm)
            continue
        if b.is_full_precision and beside_quantized:
            if while_applied is not None:
                while_applied(b, qm)
            continue
        if b.is_full_precision:
            (float_layers, float_call), = in_context(model, [run], repeats, enough_s=TABLE_S)
        else:
            def reference(qm: QuantizedModel = qm) -> object:
                with qm.float_reference():
                    return run()
            (quantized_layers, _), (float_layers, float_call) = in_context(model, [run, reference], repeats,
                                                                            enough_s=TABLE_S)
            for fqn, seconds in quantized_layers.items():
                key = (fqn, keys[fqn])
                ratios.setdefault(key, seconds / max(float_layers[fqn], 1e-12))
                kernel_of[(fqn, b)] = key
        for fqn, seconds in float_layers.items():
            floats.setdefault(fqn, []).append(seconds)
            kernel_of.setdefault((fqn, b), None)
        rest_shares.append(max(0.0, float_call - sum(float_layers.values())) / max(float_call, 1e-12))
        if while_applied is not None:
            while_applied(b, qm)
    float_s = {fqn: statistics.median(times) for fqn, times in floats.items()}
    kernel_of.update({(fqn, FULL): None for fqn in float_s})
    table: dict[str, dict[Bits, float]] = {fqn: {} for fqn in float_s}
    for (fqn, b), kernel in kernel_of.items():
        table[fqn][b] = float_s[fqn] if kernel is None else ratios[kernel] * float_s[fqn]
    share = min(statistics.median(rest_shares), 0.99)  # of a whole float call, put on the layers' clock
    return table, share / (1 - share) * sum(float_s.values())


def timed_pairs(modules: Sequence[tuple[nn.Module, LayerKind]], bits: Sequence[Bits | str],
                backend: str | Backend = "int8") -> list[Bits]:
    """The pairs of `bits` `measure_latency` times on a model of these layers, each beside the float
    model (full precision alone where `bits` has no quantized pair): a pair is skipped when every layer
    runs a kernel an earlier pair ran (`kernel_key`). Judged on the `modules` given (the plan passes one
    layer of each kind and weight shape: kernels are chosen by those)."""
    be = get_backend(backend)
    pairs = sorted({Bits.parse(x) for x in bits} - {FULL})
    seen: set[tuple[int, tuple[object, ...]]] = set()
    timed: list[Bits] = []
    for b in pairs:
        keys = {(i, kernel_key(be.kernels(cast(Quantizable, m), kind, {b})[b])) for i, (m, kind) in enumerate(modules)}
        if not keys or not keys <= seen:
            timed.append(b)
        seen |= keys
    return timed or [FULL]


def in_context(model: nn.Module, runs: Sequence[Callable[[], object]], repeats: int,
               warmups: int = 1, enough_s: float = float("inf")) -> list[tuple[dict[str, float], float]]:
    """For each of `runs` (whole denoiser calls, interleaved a, b, a, b, ...): the median CPU seconds of
    every quantizable layer inside the call (all its calls in the run summed) and of the whole run.
    Each run is made twice per round, with a clock around every layer and without: the layers' times are
    scaled by the plain run's over the clocked one's, so the clocks' own cost is not counted. `repeats`
    rounds after `warmups`, or as few as `TABLE_MIN_ROUNDS` once the timed calls took `enough_s` seconds."""
    layers = {fqn: m for fqn, m in model.named_modules() if fqn in _swappable(model)}
    now: dict[str, float] = {}
    spent: dict[str, float] = {}

    def before(fqn: str) -> Callable[..., None]:
        return lambda *_: now.__setitem__(fqn, time.process_time())

    def after(fqn: str) -> Callable[..., None]:
        return lambda *_: spent.__setitem__(fqn, spent.get(fqn, 0.0) + time.process_time() - now[fqn])

    def timed(run: Callable[[], object], clocked: bool) -> float:
        handles = [h for fqn, m in layers.items()
                   for h in (m.register_forward_pre_hook(before(fqn)), m.register_forward_hook(after(fqn)))] \
            if clocked else []
        try:
            t0 = time.process_time()
            run()
            return time.process_time() - t0
        finally:
            for h in handles:
                h.remove()

    samples: list[list[tuple[dict[str, float], float, float]]] = [[] for _ in runs]
    taken = 0.0
    with torch.no_grad():
        for i in range(warmups + repeats):
            for r, out in zip(runs, samples, strict=True):
                spent.clear()
                clocked = timed(r, True)
                per_layer = dict(spent)
                plain = timed(r, False)
                if i >= warmups:
                    out.append((per_layer, clocked, plain))
                    taken += clocked + plain
            if i + 1 - warmups >= TABLE_MIN_ROUNDS and taken >= enough_s:
                break
    results = []
    for out in samples:
        plain = statistics.median(s[2] for s in out)
        scale = plain / max(statistics.median(s[1] for s in out), 1e-12)
        results.append(({fqn: scale * statistics.median(s[0].get(fqn, 0.0) for s in out) for fqn in layers}, plain))
    return results


def _swappable(model: nn.Module) -> set[str]:
    """The names of the layers `quant.apply` swaps (QuantLayers in place, or the float modules)."""
    from quant.apply import QuantLayer

    names = {fqn for fqn, m in model.named_modules() if isinstance(m, QuantLayer)}
    return names | set(quantizable_modules(model))


def kernel_key(kernel: LayerKernel) -> tuple[object, ...]:
    """What a kernel runs: its label and the dtypes and shapes it holds (equal keys: the same code on alike tensors)."""
    return (kernel.label, tuple((t.dtype, tuple(t.shape)) for t in kernel.held))


def time_calls(runs: Sequence[Callable[[], object]], repeats: int, warmups: int = 1,
               enough_s: float = float("inf")) -> list[float]:
    """Median CPU seconds of the process (every thread counted) for each of `runs`, after `warmups`
    untimed rounds (first-call allocations and kernel selection), the runs interleaved (a, b, a, b, ...)
    so that a noisy neighbour weighs on all of them alike; `repeats` rounds, or fewer once the timed
    calls have taken `enough_s` seconds (calls of a big model are steady: a round or two tells)."""
    samples: list[list[float]] = [[] for _ in runs]
    spent = 0.0
    for i in range(warmups + repeats):
        for run, times in zip(runs, samples, strict=True):
            t0 = time.process_time()
            run()
            if i >= warmups:
                times.append(time.process_time() - t0)
                spent += times[-1]
        if spent >= enough_s:
            break
    return [statistics.median(times) for times in samples]


REPLAY_ROUNDS = 5  # side_by_side: at most this many rounds ...
REPLAY_S = 1.0  # ... or fewer once the replayed calls took this many CPU seconds


def side_by_side(qm: QuantizedModel, inputs: Mapping[str, object], groups: TimestepGroups) -> tuple[float, float]:
    """CPU seconds of one denoiser call of the quantized model and of the same model's float layers
    (`QuantizedModel.float_reference`), averaged over the sampler's steps. A call's kernels depend on
    its step's timestep group, not on its values: so one call's `inputs` (batch 1, as the sampler made
    them: `workloads.base.denoiser_inputs`) are replayed at the first step of every group, quantized and
    then float, in rounds (`REPLAY_ROUNDS`, fewer once `REPLAY_S` seconds are spent), after a warm-up
    call of each; each group's median counts once per step of the group. The ratio of the two holds
    whatever else loads the machine, which a quantized run timed alone does not (a busy sibling
    hyperthread slows every call of a window alike)."""
    def quantized(step: int) -> Callable[[], object]:
        def run() -> object:
            qm.set_step(step)
            return qm.model(**inputs)
        return run

    def reference() -> object:
        with qm.float_reference():
            return qm.model(**inputs)

    with torch.no_grad():
        for start in groups.starts:  # batch 1 is a new shape for the kernels the generation ran at its batch
            quantized(start)()
        reference()
        times = time_calls([r for start in groups.starts for r in (quantized(start), reference)], REPLAY_ROUNDS,
                           warmups=0, enough_s=REPLAY_S)
    sizes = groups.sizes()
    return (sum(n * t for n, t in zip(sizes, times[0::2], strict=True)) / groups.num_steps,
            sum(n * t for n, t in zip(sizes, times[1::2], strict=True)) / groups.num_steps)
