"""Activation calibration: the input range of every quantizable layer, per timestep group.

Diffusion activations change a lot along the trajectory (the noisy early steps look nothing like
the late ones), so one range per layer per timestep group, as in Q-Diffusion / MixDQ, instead of
one range for the whole sampling run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from quant.config import ConfigError, TimestepGroups
from quant.layers import quantizable_modules

SetStep = Callable[[int], None]


@dataclass(frozen=True)
class ActivationRanges:
    """absmax[fqn][group]: the calibrated |x| range of the layer's input in that timestep group."""

    groups: TimestepGroups
    values: Mapping[str, tuple[float, ...]]

    def absmax(self, fqn: str, group: int) -> float:
        if fqn not in self.values:
            raise ConfigError(f"layer {fqn!r} was not seen during calibration; recalibrate with this model")
        v = self.values[fqn][group]
        if not math.isfinite(v) or v <= 0:
            raise ConfigError(
                f"layer {fqn!r} has no calibrated range in timestep group {group} ({self.groups}); "
                "the calibration run must visit every step of every group"
            )
        return v

    def regroup(self, groups: TimestepGroups) -> ActivationRanges:
        """The ranges for `groups`, each of which must be a union of this calibration's groups (so a
        per-step calibration serves every grouping): the max over them, exactly what calibrating
        with `groups` would have recorded."""
        if groups == self.groups:
            return self
        if groups.num_steps != self.groups.num_steps or not set(groups.starts) <= set(self.groups.starts):
            raise ConfigError(
                f"activation ranges were calibrated for timestep groups {self.groups} but the config uses "
                f"{groups}; calibrate per step (TimestepGroups.uniform(steps, steps)) or with the config's groups"
            )
        first = [self.groups.starts.index(s) for s in groups.starts] + [len(self.groups)]
        return ActivationRanges(groups, {k: tuple(max(v[a:b]) for a, b in zip(first, first[1:], strict=False))
                                         for k, v in self.values.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"timestep_groups": self.groups.to_dict(), "absmax": {k: list(v) for k, v in self.values.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ActivationRanges:
        return cls(TimestepGroups.from_dict(d["timestep_groups"]),
                   {k: tuple(float(x) for x in v) for k, v in d["absmax"].items()})


def calibrate_activations(
    model: nn.Module,
    groups: TimestepGroups,
    run: Callable[[SetStep], None],
    layer_names: Iterable[str] | None = None,
    percentile: float | None = None,
) -> ActivationRanges:
    """Record each layer's input range per timestep group while `run(set_step)` samples.

    `run` must call `set_step(i)` before each denoiser call, exactly as it would on a
    QuantizedModel. With `percentile` (e.g. 99.99) the range of each call is that percentile of
    |x| instead of its max (clips rare outliers); ranges are the max over calls.
    """
    modules = quantizable_modules(model)
    names = list(layer_names) if layer_names is not None else list(modules)
    current: list[int | None] = [None]
    ranges = {n: [0.0] * len(groups) for n in names}

    def set_step(step: int) -> None:
        current[0] = groups.group_of(step)

    def observe(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(_m: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            g = current[0] if current[0] is not None else (0 if len(groups) == 1 else None)
            if g is None:
                raise RuntimeError("calibration run called the model before set_step(i)")
            x = inputs[0].detach().abs().float()
            if percentile is None:
                r = float(x.max())
            else:
                flat = x.reshape(-1)
                k = max(1, math.ceil(flat.numel() * percentile / 100.0))
                r = float(flat.kthvalue(k).values) if k < flat.numel() else float(flat.max())
            ranges[name][g] = max(ranges[name][g], r)

        return hook

    handles = [modules[n][0].register_forward_pre_hook(observe(n)) for n in names]
    try:
        with torch.no_grad():
            run(set_step)
    finally:
        for h in handles:
            h.remove()
    return ActivationRanges(groups, {n: tuple(v) for n, v in ranges.items()})
