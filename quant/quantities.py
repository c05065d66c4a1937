"""The one catalogue of metrics and costs: name, unit, direction, description, and whether it is a proxy.

Workloads declare the metrics they return (`workloads.metrics`, each workload's own module) and
`quant.cost` declares the costs; fronts, objectives, promotion, tables and help text read them here,
so no caller compares a metric's name to decide its direction or its label.

    declare(Quantity("psnr_db", "dB", higher_is_better=True, description="PSNR of images to full precision"))
    quantity("psnr_db").minimised(31.9)   # -31.9: fronts minimise every objective
"""

from __future__ import annotations

from dataclasses import dataclass

from quant.errors import ConfigError, UnknownNameError

_CATALOGUE: dict[str, Quantity] = {}


@dataclass(frozen=True)
class Quantity:
    name: str  # as stored and typed: psnr_db, latency_ms
    unit: str  # dB, ms, MB, bits, "" for a ratio or score
    higher_is_better: bool
    description: str
    proxy: bool = False  # a paper-compatible stand-in for what a user pays (average bits, bit-ops)
    cost: bool = False  # a cost of the config (fronts' x-axes) rather than a measured quality metric
    scale: float = 1.0  # shown value = value in base units (bytes, seconds, bit-ops) x scale

    def minimised(self, value: float) -> float:
        """`value` on the scale fronts minimise."""
        return -value if self.higher_is_better else value

    @property
    def label(self) -> str:
        """How tables and plots name it: `wbits (bits, proxy)`."""
        tags = [t for t in (self.unit, "proxy" if self.proxy else "") if t]
        return f"{self.name} ({', '.join(tags)})" if tags else self.name


def declare(*quantities: Quantity) -> None:
    """Add `quantities` to the catalogue; declaring one name twice with another definition is an error."""
    for q in quantities:
        known = _CATALOGUE.setdefault(q.name, q)
        if known != q:
            raise ConfigError(f"quantity {q.name!r} is already declared differently ({known}); pick another name")


def quantity(name: str) -> Quantity:
    try:
        return _CATALOGUE[name]
    except KeyError:
        valid = ", ".join(sorted(_CATALOGUE))
        raise UnknownNameError(f"unknown metric or cost {name!r}; valid: {valid}") from None


def quantities(*, cost: bool | None = None) -> list[Quantity]:
    """Every declared quantity (only costs, or only metrics, when `cost` says so), by name."""
    return sorted((q for q in _CATALOGUE.values() if cost is None or q.cost == cost), key=lambda q: q.name)
