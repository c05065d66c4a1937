"""`step-policy`: the per-timestep schedule as a diffusers `diffusion_step_policy`-like map.

Which precision each layer runs at each sampler step, compactly: one entry per timestep group
with its inclusive step span and a map of layer (exact FQN, `re:` pattern or `_default`, same
precedence as BitConfig) to bits like "W4A8":

    format: bitsearch.step_policy
    version: 1
    num_steps: 20
    weight_group_size: null
    schedule:
      - steps: [0, 2]
        layers: {_default: W8A8, conv_in: W16A16}
      - steps: [3, 19]
        layers: {_default: W4A8, conv_in: W8A8}

With `layers=` the export lists every layer by name instead of the config's rules. Round-trips
to the same BitConfig.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from quant.config import BitConfig, Bits, ConfigError, TimestepGroups
from search.exports._common import Layers, layer_kinds

FORMAT = "bitsearch.step_policy"
VERSION = 1


def export(config: BitConfig, layers: Layers = None) -> dict[str, Any]:
    kinds = layer_kinds(layers)
    table = config.resolve(kinds) if kinds is not None else dict(config.rules)
    schedule = [{"steps": [lo, hi], "layers": {k: str(v[g]) for k, v in table.items()}}
                for g, (lo, hi) in enumerate(config.groups.spans)]
    return {"format": FORMAT, "version": VERSION, "num_steps": config.groups.num_steps,
            "weight_group_size": config.weight_group_size, "schedule": schedule}


def bits_at(policy: Mapping[str, Any], step: int, fqn: str) -> Bits:
    """The bits layer `fqn` runs at sampler step `step` under an exported policy."""
    config = import_config(policy)
    return config.bits(fqn, config.groups.group_of(step))


def import_config(text: str | Mapping[str, Any], layers: Layers = None) -> BitConfig:
    data = yaml.safe_load(text) if isinstance(text, str) else text
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise ConfigError(f"not a bitsearch step policy (expected format: {FORMAT})")
    if data.get("version") != VERSION:
        raise ConfigError(f"step policy version {data.get('version')} is not supported (reads {VERSION}); "
                          "re-export it with this bitsearch")
    schedule = data.get("schedule")
    if not isinstance(schedule, list) or not schedule:
        raise ConfigError("a step policy needs a non-empty 'schedule' list of {steps: [first, last], layers: {...}}")
    groups = TimestepGroups.from_spans([entry["steps"] for entry in schedule], data.get("num_steps"))
    maps = [dict(entry.get("layers") or {}) for entry in schedule]
    gs = data.get("weight_group_size")
    keys = list(maps[0])
    if all(set(m) == set(keys) for m in maps):
        config = BitConfig(groups, {k: [m[k] for m in maps] for k in keys}, gs)
    else:
        # Groups name different rules: resolve each group on its own, then list layers by name.
        kinds = layer_kinds(layers)
        if kinds is None:
            odd = next(k for m in maps for k in {*keys, *m} if any(k not in mm for mm in maps))
            raise ConfigError(f"step policy groups name different layers/patterns (e.g. {odd!r} is missing from "
                              "some group); list the same keys in every group, or pass layers= to resolve each group")
        per_group = [BitConfig(TimestepGroups(1), m).resolve(kinds) for m in maps]
        config = BitConfig(groups, {n: [pg[n][0] for pg in per_group] for n in kinds}, gs)
    kinds = layer_kinds(layers)
    if kinds is not None:
        config.resolve(kinds)
    return config
