"""`mixdq`: MixDQ's flat mixed-precision YAML, one file for weights and one for activations.

Each file maps `model.<fqn>` (MixDQ wraps the UNet as `model`) to a bit-width; 16 keeps that
operand in high precision. MixDQ has one bit-width per layer for all timesteps, so a config whose
bits change across timestep groups is exported one group at a time (`group=`) or refused.
Import reads both files back (a missing activations file means activations stay in high precision;
a layer listed in neither file runs in high precision).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from quant.config import HIGH_PRECISION, BitConfig, Bits, ConfigError, TimestepGroups
from search.exports._common import Layers, layer_kinds, make_groups, per_layer

PREFIX = "model."


def export(config: BitConfig, layers: Layers = None, group: int | None = None,
           prefix: str = PREFIX) -> dict[str, str]:
    """{"weights": yaml text, "activations": yaml text}, every layer listed in both."""
    bits = per_layer(config, layers, group, "mixdq")
    weights = {prefix + n: b.w for n, b in bits.items()}
    acts = {prefix + n: b.a for n, b in bits.items()}
    return {"weights": yaml.safe_dump(weights, sort_keys=False), "activations": yaml.safe_dump(acts, sort_keys=False)}


def import_config(text: str, activations: str | None = None, groups: TimestepGroups | None = None,
                  num_steps: int | None = None, layers: Layers = None, prefix: str = PREFIX) -> BitConfig:
    """A BitConfig with one exact rule per listed layer, the same bits in every timestep group."""
    g = make_groups(groups, num_steps, "mixdq")
    w = _read(text, "weights", prefix)
    a = _read(activations, "activations", prefix) if activations is not None else {}
    rules: dict[str, Any] = {}
    for fqn in [*w, *(k for k in a if k not in w)]:
        try:
            rules[fqn] = Bits(w.get(fqn, HIGH_PRECISION), a.get(fqn, HIGH_PRECISION))
        except ConfigError as e:
            raise ConfigError(f"mixdq layer {prefix}{fqn}: {e}") from None
    config = BitConfig(g, rules)
    kinds = layer_kinds(layers)
    if kinds is not None:
        config.resolve(kinds)  # names this model lacks -> a clear error, before anything runs
    return config


def _read(text: str, what: str, prefix: str) -> dict[str, int]:
    data = yaml.safe_load(text) if text.strip() else {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"mixdq {what} file must be a flat mapping 'model.<fqn>: bits', got {type(data).__name__}")
    out: dict[str, int] = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"mixdq {what} file: {key!r} has bits {value!r}; expected an integer like 8 (16 = high "
                              "precision)")
        name = str(key)
        out[name[len(prefix):] if prefix and name.startswith(prefix) else name] = value
    return out
