"""Budgets: one or more limits a configuration's costs must satisfy.

Written like `wbits=4.5`, `size=0.3x` (relative to the W16A16 model), `size=120MB`, `bops=0.25x`,
`memory=1.5GB`, `latency=0.8x`. Relative limits are resolved against `full_precision_costs`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from quant.config import ConfigError
from quant.cost import COSTS, Costs, cost_of

METRICS = [q.name for q in COSTS]
_UNITS = {"": 1.0, "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "ms": 1e-3, "s": 1.0, "g": 1e9, "t": 1e12}


@dataclass(frozen=True)
class Limit:
    metric: str
    value: float
    relative: bool = False

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"unknown budget metric {self.metric!r}; valid: {', '.join(METRICS)}")
        # NaN fails every comparison and inf passes every one: both would silently disable the limit
        if not (math.isfinite(self.value) and self.value > 0):
            raise ConfigError(f"budget {self.metric} must be positive and finite, got {self.value}")
        if self.metric == "wbits" and self.relative:
            raise ConfigError("wbits is already a ratio-free number; write e.g. wbits=4.5")

    @classmethod
    def parse(cls, text: str) -> Limit:
        m = re.fullmatch(r"\s*(\w+)\s*[=<]=?\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*", text)
        if not m:
            raise ConfigError(f"cannot parse budget {text!r}; write METRIC=VALUE, e.g. wbits=4.5 or size=0.3x")
        metric, number, unit = m.group(1), m.group(2), m.group(3).lower()
        try:
            value = float(number)
        except ValueError:
            raise ConfigError(f"budget {text!r}: {number!r} is not a number") from None
        if unit == "x":
            return cls(metric, value, relative=True)
        if unit not in _UNITS:
            raise ConfigError(f"budget {text!r}: unknown unit {unit!r}; use x (relative), MB/GB, ms/s, G/T")
        return cls(metric, value * _UNITS[unit])

    @property
    def measured(self) -> bool:
        """Priced by the target's measured tables (latency, memory): checkable once they exist."""
        return self.metric in ("latency", "memory")

    def absolute(self, reference: Costs) -> float:
        return self.value * cost_of(reference, self.metric) if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.metric}={self.value:g}{'x' if self.relative else ''}"


@dataclass(frozen=True)
class Budget:
    limits: tuple[Limit, ...]

    def __post_init__(self) -> None:
        if not self.limits:
            raise ConfigError("a budget needs at least one limit, e.g. wbits=4.5")
        metrics = [lim.metric for lim in self.limits]
        dup = {m for m in metrics if metrics.count(m) > 1}
        if dup:
            raise ConfigError(f"budget limits {sorted(dup)} given twice; give each metric once")

    @classmethod
    def parse(cls, texts: Iterable[str] | str) -> Budget:
        items = [texts] if isinstance(texts, str) else list(texts)
        parts = [p for t in items for p in t.split(",") if p.strip()]
        return cls(tuple(Limit.parse(p) for p in parts))

    def limit(self, metric: str) -> Limit | None:
        """The limit on `metric`, or None when the budget does not bound it."""
        return next((lim for lim in self.limits if lim.metric == metric), None)

    def violations(self, costs: Costs, reference: Costs) -> list[str]:
        """Human-readable list of the limits `costs` exceeds (empty when within budget)."""
        out = []
        for lim in self.limits:
            value, cap = cost_of(costs, lim.metric), lim.absolute(reference)
            if value > cap * (1 + 1e-9):
                out.append(f"{lim.metric} {value:.6g} > {cap:.6g} ({lim})")
        return out

    def __str__(self) -> str:
        return ",".join(str(lim) for lim in self.limits)
