"""Scores: predicted degradation per (layer FQN, timestep group, bit pair).

Sensitivity estimators produce them; solvers consume them. A score is the predicted increase of
one metric ("quality", "alignment", or "both") when that one layer runs at those bits during that
timestep group while everything else stays in high precision. Solvers treat scores as additive.
Full precision (W16A16) has degradation 0 implicitly and need not be stored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from quant.config import FULL_PRECISION, Bits, ConfigError, TimestepGroups

Metric = Literal["quality", "alignment", "both"]
METRICS: tuple[str, ...] = get_args(Metric)

FORMAT_NAME = "bitsearch.scores"
FORMAT_VERSION = 1

ScoreKey = tuple[str, int, Bits]


@dataclass(frozen=True)
class Scores:
    """Predicted degradations of one metric from one estimator, keyed (fqn, group, bits)."""

    estimator: str
    metric: Metric
    groups: TimestepGroups
    values: Mapping[ScoreKey, float]
    stderr: Mapping[ScoreKey, float] | None = None
    _by_layer: dict[str, dict[tuple[int, Bits], float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"scores metric {self.metric!r} unknown; valid: {', '.join(METRICS)}")
        object.__setattr__(self, "values", self._checked(self.values, "score"))
        if self.stderr is not None:
            err = self._checked(self.stderr, "stderr")
            extra = set(err) - set(self.values)
            if extra:
                fqn, g, b = sorted(extra)[0]
                raise ConfigError(f"stderr given for ({fqn!r}, group {g}, {b}) which has no score; drop it")
            object.__setattr__(self, "stderr", err)
        by_layer: dict[str, dict[tuple[int, Bits], float]] = {}
        for (fqn, g, b), v in self.values.items():
            by_layer.setdefault(fqn, {})[(g, b)] = v
        object.__setattr__(self, "_by_layer", by_layer)

    def _checked(self, values: Mapping[ScoreKey, float], what: str) -> dict[ScoreKey, float]:
        out: dict[ScoreKey, float] = {}
        for key, value in values.items():
            fqn, g, b = key
            bits = Bits.parse(b)
            if not 0 <= g < len(self.groups):
                raise ConfigError(
                    f"{what} for ({fqn!r}, group {g}, {bits}): group out of range; "
                    f"there are {len(self.groups)} timestep groups ({self.groups})"
                )
            v = float(value)
            if not math.isfinite(v) or v < 0:
                raise ConfigError(
                    f"{what} for ({fqn!r}, group {g}, {bits}) is {value!r}; degradations must be finite "
                    "and >= 0 (clip estimator noise at 0, drop failed measurements)"
                )
            out[(fqn, int(g), bits)] = v
        return out

    def get(self, fqn: str, group: int, bits: Bits) -> float:
        """The predicted degradation; 0 for W16A16; KeyError naming the missing entry otherwise."""
        if bits == FULL_PRECISION:
            return 0.0
        try:
            return self._by_layer[fqn][(group, bits)]
        except KeyError:
            raise KeyError(
                f"{self.estimator} scores have no entry for ({fqn!r}, group {group}, {bits}); "
                "estimate these bits or leave them out of the candidates"
            ) from None

    def layers(self) -> list[str]:
        return list(self._by_layer)

    # ---- serialization: JSON-able, keys "fqn|group|W4A8" -----------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def enc(m: Mapping[ScoreKey, float]) -> dict[str, float]:
            return {f"{fqn}|{g}|{b}": v for (fqn, g, b), v in m.items()}

        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "estimator": self.estimator,
            "metric": self.metric,
            "timestep_groups": self.groups.to_dict(),
            "values": enc(self.values),
            "stderr": None if self.stderr is None else enc(self.stderr),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scores:
        if d.get("format") != FORMAT_NAME:
            raise ConfigError(f"not bitsearch scores (format is {d.get('format')!r}, expected {FORMAT_NAME!r})")
        if d.get("version") != FORMAT_VERSION:
            raise ConfigError(
                f"scores version {d.get('version')} is not supported (reads {FORMAT_VERSION}); "
                "upgrade bitsearch or re-run the estimator"
            )

        def dec(m: Mapping[str, float]) -> dict[ScoreKey, float]:
            out: dict[ScoreKey, float] = {}
            for key, v in m.items():
                # rsplit: FQNs contain dots, never '|'; the last two fields are group and bits
                parts = key.rsplit("|", 2)
                if len(parts) != 3 or not parts[1].isdigit():
                    raise ConfigError(f"score key {key!r} is not 'fqn|group|W4A8'")
                out[(parts[0], int(parts[1]), Bits.parse(parts[2]))] = v
            return out

        return cls._decoded(d, dec)

    # ---- as rows of plain numbers: what storage keeps, one row per (fqn, group, w_bits, a_bits) -----
    def to_table(self) -> dict[str, Any]:
        """The keywords of `storage.Storage.put_scores`: bits as two integers, groups as their JSON."""

        def enc(m: Mapping[ScoreKey, float]) -> dict[tuple[str, int, int, int], float]:
            return {(fqn, g, b.w, b.a): v for (fqn, g, b), v in m.items()}

        return {"estimator": self.estimator, "metric": self.metric, "timestep_groups": self.groups.to_dict(),
                "values": enc(self.values), "stderr": None if self.stderr is None else enc(self.stderr)}

    @classmethod
    def from_table(cls, d: Mapping[str, Any]) -> Scores:
        """Scores from `to_table()`'s form (what `Storage.get_scores` hands back)."""

        def dec(m: Mapping[tuple[str, int, int, int], float]) -> dict[ScoreKey, float]:
            return {(fqn, int(g), Bits(int(w), int(a))): v for (fqn, g, w, a), v in m.items()}

        return cls._decoded(d, dec)

    @classmethod
    def _decoded(cls, d: Mapping[str, Any], dec: Callable[[Any], dict[ScoreKey, float]]) -> Scores:
        """Either form with its keys decoded by `dec`: the fields around the scores are the same in both."""
        return cls(
            estimator=str(d["estimator"]),
            metric=cast(Metric, d["metric"]),
            groups=TimestepGroups.from_dict(d["timestep_groups"]),
            values=dec(d["values"]),
            stderr=None if d.get("stderr") is None else dec(d["stderr"]),
        )
