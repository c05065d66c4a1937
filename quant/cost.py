"""Cost functions of a BitConfig on a layer inventory: what a budget is checked against.

Per-timestep configs run different bits at different steps, so costs that accrue per step
(average weight bits, bit-ops, latency) are step-weighted averages over the sampler's steps, and
costs that are held (bytes) count every weight precision that must stay available.

With a target's measured tables (`TargetTables`, from `quant.targets.measure_tables`) `latency` and
`memory` are predictions in what the kernels really spend: seconds per denoiser call (the layers'
measured times plus the rest of the call) and resident bytes (the tensors each layer's kernels
really hold, plus every parameter outside the quantizable layers). Without them `memory` falls back
to packed bytes (a proxy) and `latency` is unknown. `size` (bytes at rest, packed) is always computed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

from quant.config import FULL_PRECISION, HIGH_PRECISION, BitConfig, Bits, ConfigError
from quant.layers import Layer
from quant.quantities import Quantity, declare

K = TypeVar("K")
V = TypeVar("V")

SCALE_BYTES = 4  # float32 scale per output channel (or per group)
FLOAT_BYTES = 2  # a high-precision weight copy is bf16/fp16

LatencyTable = Mapping[str, Mapping[Bits, float]]
"""Seconds per call of each layer at each bit pair, measured on the target machine."""
MemoryTable = Mapping[str, Mapping[Bits, int]]
"""Bytes the backend's kernels of each layer hold at each bit pair (W16A16: the float layer)."""


@dataclass(frozen=True)
class TargetTables:
    """What one model costs on one target and machine, measured (see `quant.targets`)."""

    latency: LatencyTable  # seconds per denoiser call of each quantizable layer at each bit pair
    memory: MemoryTable  # bytes each layer's kernels hold at each bit pair
    rest_latency_s: float  # the rest of one float call: every op outside the quantizable layers
    rest_bytes: int  # parameters and buffers outside the quantizable layers
    float_format: str  # the reference float format, measured: the fastest of fp32 and bf16 for an fp32
    # model, the model's own for a bf16 one ("bf16" or "fp32")
    float_latency_s: float  # one denoiser call in it
    float_bytes: int  # the denoiser's resident bytes in it
    # one call of the model as loaded, timed beside the reference float: what an evaluation's side-by-side
    # float reference runs (None in tables stored before it: then the rest plus the layers)
    loaded_latency_s: float | None = None
    loaded_format: str = "fp32"  # the model's own float format: what the layers' W16A16 entries time

    @property
    def reference_words(self) -> str:
        """The reference float format and how it was chosen, for messages."""
        if self.loaded_format != "fp32":
            return f"the model's own float format, {self.float_format} (as loaded; fp32 not timed)"
        return f"the fastest float format here, {self.float_format}"

    @property
    def loaded_call_s(self) -> float:
        """Seconds of one denoiser call of the model as loaded, as these tables measured it."""
        if self.loaded_latency_s is not None:
            return self.loaded_latency_s
        return self.rest_latency_s + sum(per[FULL_PRECISION] for per in self.latency.values() if FULL_PRECISION in per)

    def to_dict(self) -> dict[str, object]:
        return {"latency": {f: {str(b): s for b, s in per.items()} for f, per in self.latency.items()},
                "memory": {f: {str(b): n for b, n in per.items()} for f, per in self.memory.items()},
                "rest_latency_s": self.rest_latency_s, "rest_bytes": self.rest_bytes,
                "float_format": self.float_format, "float_latency_s": self.float_latency_s,
                "float_bytes": self.float_bytes, "loaded_latency_s": self.loaded_latency_s,
                "loaded_format": self.loaded_format}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> TargetTables:
        latency = cast("Mapping[str, Mapping[str, float]]", d["latency"])
        memory = cast("Mapping[str, Mapping[str, int]]", d["memory"])
        loaded = d.get("loaded_latency_s", d.get("fp32_latency_s"))  # its name before bf16 models were timed
        return cls({f: {Bits.parse(b): float(s) for b, s in per.items()} for f, per in latency.items()},
                   {f: {Bits.parse(b): int(n) for b, n in per.items()} for f, per in memory.items()},
                   float(cast(float, d["rest_latency_s"])), int(cast(int, d["rest_bytes"])), str(d["float_format"]),
                   float(cast(float, d["float_latency_s"])), int(cast(int, d["float_bytes"])),
                   None if loaded is None else float(cast(float, loaded)), str(d.get("loaded_format", "fp32")))


@dataclass(frozen=True)
class Costs:
    avg_weight_bits: float  # parameter- and step-weighted
    weight_bytes: int  # packed bytes storing every distinct weight precision of every layer
    resident_weight_bytes: int  # bytes held at run time (see `resident_weight_bytes`)
    bops: float  # bit-operations (MACs x w-bits x a-bits) of one denoiser forward, step-averaged
    latency_s: float | None  # seconds per denoiser call from the target's tables, step-averaged


# The costs a budget limits and a front shows, by one name each (`size=0.3x`, `--best-under size=5`).
WBITS, SIZE, MEMORY, BOPS, LATENCY = "wbits", "size", "memory", "bops", "latency"
STEP_COSTS = (WBITS, BOPS, LATENCY)  # accrue per step: linear in each (layer, group) choice
HELD_COSTS = (SIZE, MEMORY)  # held: every distinct weight precision a layer keeps counts
COSTS = (
    Quantity(WBITS, "bits", False, "average weight bits (parameter- and step-weighted)", proxy=True, cost=True),
    Quantity(SIZE, "MB", False, "packed weight bytes at rest, every distinct precision stored", cost=True,
             scale=1e-6),
    Quantity(MEMORY, "MB", False, "resident bytes of the denoiser while sampling, measured after apply "
             "(every weight copy a per-timestep schedule keeps)", cost=True, scale=1e-6),
    Quantity(BOPS, "G", False, "bit-operations per denoiser call", proxy=True, cost=True, scale=1e-9),
    Quantity(LATENCY, "ms", False, "CPU time of one denoiser call at batch 1, measured on the target's kernels "
             "side by side with the float model and put on the target tables' clock (ratio x their fp32 call)",
             cost=True, scale=1e3),
)
# The same two costs as the target's tables predict them (what the solver optimised), beside the measured.
PREDICTED = tuple(Quantity(f"{q.name}_predicted", q.unit, False, f"{q.description}: predicted from the target's "
                           "tables", cost=True, scale=q.scale) for q in COSTS if q.name in (LATENCY, MEMORY))
declare(*COSTS, *PREDICTED)


def cost_of(costs: Costs, name: str) -> float:
    """The value of cost `name` in base units (raises if it needs the target's tables and none were given)."""
    value = {WBITS: costs.avg_weight_bits, SIZE: costs.weight_bytes, MEMORY: costs.resident_weight_bytes,
             BOPS: costs.bops, LATENCY: costs.latency_s}[name]
    if value is None:
        raise ConfigError(f"budget on {name} needs the target's measured tables (quant.targets.measure_tables)")
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


def resident_weight_bytes(layer: Layer, w_bits: set[int], group_size: int | None = None) -> int:
    """Weight bytes a per-timestep schedule keeps in memory for one layer (packed: the proxy used until
    the target's tables are measured): each distinct weight precision is a copy that stays resident,
    because `quant.apply` builds every kernel up front and re-quantizes nothing while sampling."""
    return sum(packed_weight_bytes(layer, w, group_size) for w in w_bits)


def costs(config: BitConfig, layers: Sequence[Layer], tables: TargetTables | None = None) -> Costs:
    """What `config` costs on `layers`; `latency` and `memory` in measured units when `tables` are given
    (see the module docstring)."""
    plans = config.resolve([layer.fqn for layer in layers])
    fractions = [n / config.groups.num_steps for n in config.groups.sizes()]
    gs = config.weight_group_size
    total_params = sum(layer.params for layer in layers) or 1
    wbits = stored = bops = 0.0
    resident = 0.0 if tables is None else float(tables.rest_bytes)
    lat: float | None = None if tables is None else tables.rest_latency_s
    for layer in layers:
        plan = plans[layer.fqn]
        distinct = {b.w for b in plan}
        stored += sum(packed_weight_bytes(layer, w, gs) for w in distinct)
        if tables is None:
            resident += resident_weight_bytes(layer, distinct, gs)
        else:  # each distinct pair's kernel holds its own tensors
            resident += sum(held_bytes(tables, layer.fqn, b) for b in set(plan))
        for frac, b in zip(fractions, plan, strict=True):
            wbits += frac * layer.params * b.w
            bops += frac * layer.macs * b.w * b.a
            if tables is not None and lat is not None:
                lat += frac * entry(tables.latency, layer.fqn, b, "latency table")
    return Costs(wbits / total_params, int(stored), int(resident), bops, lat)


def full_precision_costs(layers: Sequence[Layer], num_steps: int = 1, tables: TargetTables | None = None) -> Costs:
    """What relative budgets (e.g. `memory=0.5x`) are relative to: the target's fastest float format as
    measured (`tables`), else the W16A16 model computed (bf16 bytes; latency unknown)."""
    computed = costs(BitConfig.uniform(num_steps, Bits(HIGH_PRECISION, HIGH_PRECISION)), layers)
    if tables is None:
        return computed
    return Costs(computed.avg_weight_bits, computed.weight_bytes, tables.float_bytes, computed.bops,
                 tables.float_latency_s)


class MissingEntry(ConfigError, KeyError):
    """A measured table lacks a layer or bit pair the caller asks for (measure it with these bits)."""

    def __str__(self) -> str:  # KeyError's would quote the message
        return str(self.args[0])


def entry(table: Mapping[str, Mapping[K, V]], fqn: str, key: K, what: str = "target tables") -> V:
    """`table[fqn][key]` of a measured table, or MissingEntry naming what to measure."""
    try:
        return table[fqn][key]
    except KeyError:
        raise MissingEntry(f"{what} has no entry for {fqn} at {key}; measure the tables with these bits") from None


def held_bytes(tables: TargetTables, fqn: str, bits: Bits) -> int:
    """Bytes layer `fqn`'s kernel at `bits` holds, measured."""
    return entry(tables.memory, fqn, bits, "memory table")
