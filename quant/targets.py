"""Targets: where a config will run, a device with a backend.

A target owns a catalogue of the formats its kernels really implement (`formats`: each W/A pair a
study may use, named from the bits and from how the backend's kernel for a linear layer runs, plus
the floats fp32 and bf16) and measures each of them on the machine (`measure_tables`): seconds per
denoiser call of every quantizable layer at every pair, bytes its kernels hold at every weight
bit-width, the rest of the call, and the fastest float format, timed whole. `describe` turns those
tables into one row per format: what the whole model would cost in it, relative to the fastest float.

Timing is CPU time of the process (`time.process_time`, every thread counted), the median of
`repeats` after one warm-up (fewer where a big model's calls add up to `quant.latency.TABLE_S`
seconds), like `quant.latency`. Bytes are storages really held, each counted once.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from quant.apply import QuantizedModel, QuantLayer
from quant.backends.base import Backend, RunLabel, get_backend, storage_bytes
from quant.calibrate import ActivationRanges
from quant.config import Bits
from quant.cost import MemoryTable, TargetTables, entry
from quant.errors import UnsupportedBits
from quant.latency import FULL, TABLE_S, measure_latency, time_calls, uniformly_applied
from quant.layers import LayerKind, quantizable_modules

FP32, BF16 = "fp32", "bf16"


@dataclass(frozen=True)
class Format:
    """A format a target's kernels implement: the W/A pair it maps to (the floats are W16A16) and how
    a linear layer (`label`) and a conv layer (`conv_label`, None: no conv kernel) run in it."""

    name: str
    bits: Bits
    label: RunLabel
    conv_label: RunLabel | None
    description: str


FLOAT_FORMATS = (
    Format(FP32, FULL, "float", "float", "float32 weights and activations: the model as loaded"),
    Format(BF16, FULL, "float", "float", "bfloat16 weights and activations: the whole model cast"),
)


def formats(backend: str | Backend, bits: Sequence[Bits | str]) -> list[Format]:
    """The floats, then a named format for each quantized pair of `bits`, from the label the backend's
    kernel reports on a probe linear layer (in_features 64) and a probe conv (UnsupportedBits when the
    backend has no linear kernel for a pair)."""
    be = get_backend(backend)
    with torch.random.fork_rng(devices=[]):  # the probes' init leaves the caller's seeded RNG alone
        probes: dict[LayerKind, nn.Linear | nn.Conv2d] = {"linear": nn.Linear(64, 64), "conv": nn.Conv2d(16, 16, 3)}
    out = list(FLOAT_FORMATS)
    for b in sorted({Bits.parse(x) for x in bits} - {FULL}):
        labels: dict[LayerKind, RunLabel | None] = {}
        for kind, module in probes.items():
            with torch.no_grad():
                labels[kind] = be.kernels(module, kind, {b})[b].label if be.supports(b, kind) else None
        label = labels["linear"]
        if label is None:
            raise UnsupportedBits(f"backend {be.name!r} has no linear kernel for {b}; it is not a format of this target")
        out.append(_format(b, label, labels["conv"]))
    return out


def _format(b: Bits, label: RunLabel, conv_label: RunLabel | None) -> Format:
    if label == "int8-kernel" and (b.w, b.a) == (8, 8):
        name, text = "int8", "W8A8: int8 weights and activations on an integer GEMM/conv"
    elif label == "int8-kernel":
        name = f"w{b.w}a{b.a}-int8-container"
        text = (f"{b}: codes on {b.w}-bit (weights) and {b.a}-bit (activations) grids held in int8 and run by "
                f"the int8 kernel: the quality of {b}, the memory and speed of W8A8")
    elif label == "weight-only-kernel":
        name = f"int{b.w}-weight-only"
        text = f"{b}: int{b.w} weights consumed by a mixed-dtype kernel with float activations (saves memory, not time)"
    elif label == "dequantize-float":
        name = f"w{b.w}a{b.a}-dequantize"
        text = f"{b}: {b.w}-bit codes held in int8, expanded to float at every call (saves memory, costs time)"
    else:
        name, text = f"w{b.w}a{b.a}-{label}", f"{b}: {label} (numerics only, latency and memory not measured)"
    if conv_label != label:
        text += f"; conv layers: {conv_label or 'no kernel'}"
    return Format(name, b, label, conv_label, text)


def resident_bytes(model: nn.Module | QuantizedModel) -> int:
    """Bytes a (possibly quantized) model holds: every parameter and buffer plus every tensor its
    QuantLayers' kernels hold (`LayerKernel.held`), each storage counted once.

    The float modules a QuantLayer keeps for `restore()` are not counted: deployment drops them
    (`QuantizedModel.drop_originals`). Tensors a kernel keeps alive without listing them in `held`
    (its closure's) are invisible here."""
    m = model.model if isinstance(model, QuantizedModel) else model
    held = (t for q in m.modules() if isinstance(q, QuantLayer) for k in q.kernels.values() for t in k.held)
    return storage_bytes([*m.parameters(), *m.buffers(), *held])


def measure_memory(model: nn.Module, bits: Sequence[Bits | str], backend: str | Backend = "int8",
                   ranges: ActivationRanges | None = None) -> MemoryTable:
    """Bytes each quantizable layer's kernels hold at each pair of `bits` (each quantized uniformly),
    and at W16A16 (the layer's own weight and bias as they are)."""
    table = _float_layer_bytes(model)
    for b, qm in uniformly_applied(model, bits, backend, ranges):
        _record_held(table, b, qm)
    return table


def _float_layer_bytes(model: nn.Module) -> dict[str, dict[Bits, int]]:
    """Each quantizable layer's own weight and bias, as the W16A16 entries of a memory table."""
    return {fqn: {FULL: storage_bytes(t for t in (m.weight, m.bias) if isinstance(t, Tensor))}
            for fqn, (m, _kind) in quantizable_modules(model).items()}


def _record_held(table: dict[str, dict[Bits, int]], bits: Bits, qm: QuantizedModel) -> None:
    for fqn, q in qm.layers.items():  # W16A16 replaces no layer: its entries are the float ones
        table[fqn][bits] = q.held_bytes()


def measure_tables(model: nn.Module, inputs: Mapping[str, Any], bits: Sequence[Bits | str],
                   backend: str = "int8", ranges: ActivationRanges | None = None,
                   repeats: int = 5) -> TargetTables:
    """Measure `model` (float32 or bfloat16, as loaded) on this machine with `backend`'s kernels; one
    denoiser call is `model(**inputs)`. One clock for every figure: the layers' entries and the rest of
    the call are timed in whole calls, each pair beside the float model (`measure_latency`); the call of
    the model as loaded is their sum. An fp32 model's bf16 copy is put on that clock by the two whole
    calls timed side by side, and the reference float format is whichever of fp32 and bf16 runs one
    whole call faster. A bf16 model is its own reference: no fp32 copy is made (it would hold twice the
    weights the user loaded bf16 to save), so fp32 is not timed."""
    loaded = loaded_format(model)
    with torch.no_grad():
        memory = _float_layer_bytes(model)  # filled while the latency table applies each pair: one pass
        latency, rest_latency_s = measure_latency(model, lambda: model(**inputs), bits, backend, ranges, repeats,
                                                  while_applied=lambda b, qm: _record_held(memory, b, qm))
        loaded_clock = rest_latency_s + sum(per[FULL] for per in latency.values())
        layers = quantizable_modules(model)
        in_layers = storage_bytes(t for m, _kind in layers.values() for t in (*m.parameters(), *m.buffers()))
        rest_bytes = storage_bytes([*model.parameters(), *model.buffers()]) - in_layers
        if loaded == BF16:
            return TargetTables(latency, memory, rest_latency_s, rest_bytes, BF16, loaded_clock, resident_bytes(model),
                                loaded_clock, BF16)
        fp32_clock = loaded_clock
        half = copy.deepcopy(model).to(torch.bfloat16)
        half_inputs = to_bf16(inputs)
        # more repeats steady the ratio of the two floats, the reference of every relative budget, which
        # otherwise flips between them when they are close; a big model's calls are steady in a few rounds
        fp32_s, bf16_s = time_calls([lambda: model(**inputs), lambda: half(**half_inputs)], 4 * repeats + 1,
                                    enough_s=TABLE_S)
        fp32 = (fp32_clock, FP32, resident_bytes(model))
        bf16 = (fp32_clock * bf16_s / max(fp32_s, 1e-12), BF16, resident_bytes(half))
    seconds, name, nbytes = min(fp32, bf16)
    return TargetTables(latency, memory, rest_latency_s, rest_bytes, name, seconds, nbytes, fp32_clock, FP32)


def loaded_format(model: nn.Module) -> str:
    """FP32 or BF16: the float format every floating parameter of `model` is in (ValueError for any
    other, or a mix: the tables time one float format as loaded). Buffers are not asked: a model may keep
    a constant table in fp32 and cast it in its forward (PixArt's positional embedding, loaded bf16)."""
    dtypes = {t.dtype for t in model.parameters() if t.is_floating_point()}
    for dtype, name in ((torch.float32, FP32), (torch.bfloat16, BF16)):
        if dtypes <= {dtype}:
            return name
    raise ValueError(f"the latency tables time a model held in float32 or bfloat16, but it holds "
                     f"{', '.join(sorted(str(d).removeprefix('torch.') for d in dtypes))}; load it in one of those")


def describe(tables: TargetTables, formats: Sequence[Format]) -> list[dict[str, object]]:
    """One row per format: one denoiser call's latency (ms) and resident MB if the whole model ran in
    it (the measured call for the reference float, its layers' entries plus the rest otherwise), and both
    relative to the reference float format (x). A float format that is not the reference is known only
    as the model was loaded (its layers at W16A16); another was not timed: None."""
    rows: list[dict[str, object]] = []
    for f in formats:
        seconds: float | None
        nbytes: int | None
        if f.name == tables.float_format:
            seconds, nbytes = tables.float_latency_s, tables.float_bytes
        elif f.bits.is_full_precision and f.name != tables.loaded_format:
            seconds = nbytes = None
        else:
            seconds = tables.rest_latency_s + sum(entry(tables.latency, fqn, f.bits) for fqn in tables.latency)
            nbytes = tables.rest_bytes + sum(entry(tables.memory, fqn, f.bits) for fqn in tables.memory)
        rows.append({"name": f.name, "bits": str(f.bits), "label": f.label,
                     "latency_ms": None if seconds is None else seconds * 1e3,
                     "memory_mb": None if nbytes is None else nbytes * 1e-6,
                     "latency_x": _ratio(seconds, tables.float_latency_s), "memory_x": _ratio(nbytes, tables.float_bytes),
                     "description": f.description})
    return rows


def _ratio(value: float | None, reference: float) -> float | None:
    return None if value is None or reference <= 0 else value / reference


def to_bf16(value: Any) -> Any:
    """`value` with every floating tensor cast to bfloat16 (through dicts, lists and tuples)."""
    if isinstance(value, Tensor):
        return value.to(torch.bfloat16) if value.is_floating_point() else value
    if isinstance(value, Mapping):
        return {k: to_bf16(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_bf16(v) for v in value)
    return value
