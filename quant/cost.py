"""Cost functions of a BitConfig on a layer inventory: what a budget is checked against.

Per-timestep configs run different bits at different steps, so costs that accrue per step
(average weight bits, bit-ops, latency) are step-weighted averages over the sampler's steps, and
costs that are held (bytes) count every weight precision that must stay available.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from quant.config import HIGH_PRECISION, BitConfig, Bits, ConfigError
from quant.layers import Layer
from quant.quantities import Quantity, declare

SCALE_BYTES = 4  # float32 scale per output channel (or per group)
FLOAT_BYTES = 2  # a high-precision weight copy is bf16/fp16

LatencyTable = Mapping[str, Mapping[Bits, float]]
"""Seconds per call of each layer at each bit pair, measured on the target machine."""


@dataclass(frozen=True)
class Costs:
    avg_weight_bits: float  # parameter- and step-weighted
    weight_bytes: int  # packed bytes storing every distinct weight precision of every layer
    resident_weight_bytes: int  # bytes held at run time (see `resident_weight_bytes`)
    bops: float  # bit-operations (MACs x w-bits x a-bits) of one denoiser forward, step-averaged
    latency_s: float | None  # seconds per denoiser forward from a latency table, step-averaged


# The costs a budget limits and a front shows, by one name each (`size=0.3x`, `--best-under size=5`).
WBITS, SIZE, MEMORY, BOPS, LATENCY = "wbits", "size", "memory", "bops", "latency"
STEP_COSTS = (WBITS, BOPS, LATENCY)  # accrue per step: linear in each (layer, group) choice
HELD_COSTS = (SIZE, MEMORY)  # held: every distinct weight precision a layer keeps counts
COSTS = (
    Quantity("wbits", "bits", False, "average weight bits (parameter- and step-weighted)", proxy=True, cost=True),
    Quantity("size", "MB", False, "packed weight bytes, every distinct precision stored", cost=True, scale=1e-6),
    Quantity("memory", "MB", False, "resident weight bytes at run time", cost=True, scale=1e-6),
    Quantity("bops", "G", False, "bit-operations per denoiser forward", proxy=True, cost=True, scale=1e-9),
    Quantity("latency", "ms", False, "seconds per denoiser forward, predicted from a latency table", cost=True,
             scale=1e3),
)
declare(*COSTS)


def cost_of(costs: Costs, name: str) -> float:
    """The value of cost `name` in base units (raises if it needs a latency table that was not given)."""
    value = {WBITS: costs.avg_weight_bits, SIZE: costs.weight_bytes, MEMORY: costs.resident_weight_bytes,
             BOPS: costs.bops, LATENCY: costs.latency_s}[name]
    if value is None:
        raise ConfigError(f"budget on {name} needs a latency table; build one with the target backend first")
    return float(value)


def shown_costs(costs: Costs) -> dict[str, float]:
    """Every cost `costs` has, in the units a front shows them (MB, ms, G)."""
    return {q.name: cost_of(costs, q.name) * q.scale for q in COSTS
            if q.name != LATENCY or costs.latency_s is not None}


def packed_weight_bytes(layer: Layer, w_bits: int, group_size: int | None = None) -> int:
    """Bytes of one stored copy of the layer's weight: codes packed at `w_bits` plus scales."""
    if w_bits == HIGH_PRECISION:
        return layer.params * FLOAT_BYTES
    n_scales = layer.out_channels if group_size is None else layer.params // group_size
    return math.ceil(layer.params * w_bits / 8) + n_scales * SCALE_BYTES


def resident_weight_bytes(layer: Layer, w_bits: set[int], group_size: int | None = None,
                          derive_lower: bool = False) -> int:
    """Weight bytes a per-timestep schedule keeps in memory for one layer.

    Each distinct weight precision is a copy that stays resident, unless `derive_lower`: then only
    the highest precision is kept and lower ones are re-derived from it at each group switch
    (requantizing a symmetric grid from a finer one), trading switch time for memory.
    """
    kept = {max(w_bits)} if derive_lower else w_bits
    return sum(packed_weight_bytes(layer, w, group_size) for w in kept)


def costs(config: BitConfig, layers: Sequence[Layer], latency: LatencyTable | None = None,
          derive_lower: bool = False) -> Costs:
    plans = config.resolve([layer.fqn for layer in layers])
    fractions = [n / config.groups.num_steps for n in config.groups.sizes()]
    gs = config.weight_group_size
    total_params = sum(layer.params for layer in layers) or 1
    wbits = stored = resident = 0.0
    bops = 0.0
    lat: float | None = 0.0 if latency is not None else None
    for layer in layers:
        plan = plans[layer.fqn]
        distinct = {b.w for b in plan}
        stored += sum(packed_weight_bytes(layer, w, gs) for w in distinct)
        resident += resident_weight_bytes(layer, distinct, gs, derive_lower)
        for frac, b in zip(fractions, plan, strict=True):
            wbits += frac * layer.params * b.w
            bops += frac * layer.macs * b.w * b.a
            if latency is not None and lat is not None:
                lat += frac * _latency_of(latency, layer.fqn, b)
    return Costs(wbits / total_params, int(stored), int(resident), bops, lat)


def full_precision_costs(layers: Sequence[Layer], num_steps: int = 1,
                         latency: LatencyTable | None = None) -> Costs:
    """The W16A16 reference that relative budgets (e.g. `size=0.5x`) are measured against."""
    return costs(BitConfig.uniform(num_steps, Bits(HIGH_PRECISION, HIGH_PRECISION)), layers, latency)


def _latency_of(table: LatencyTable, fqn: str, bits: Bits) -> float:
    try:
        return table[fqn][bits]
    except KeyError:
        raise KeyError(f"latency table has no entry for {fqn} at {bits}; rebuild the table with these bits") from None
