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
        count: 3
        layers: {_default: W8A8, conv_in: W16A16}
      - steps: [3, 19]
        rest: true
        layers: {_default: W4A8, conv_in: W8A8}

With `layers=` the export lists every layer by name instead of the config's rules. Round-trips
to the same BitConfig.

**Another step count.** `steps` are absolute, for `num_steps`. Each entry also says where it sits
relative to the schedule: the longest group is `rest: true`, every other one has a `count` of
steps; entries before `rest` are counted from the first step, entries after it from the last. Import
with `num_steps=N` (CLI: a study with N steps) rebuilds the spans for N: the counted groups keep
their sizes at either end and the `rest` group takes what is left, so "first 2 and last 3 steps at
A16" stays that at 30 steps as at 20. A policy without `count`/`rest` (hand-written) is read only at
its own `num_steps`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from quant.config import BitConfig, Bits, ConfigError, TimestepGroups
from search.exports._common import EXPORTERS, IMPORTERS, Layers, layer_kinds

FORMAT = "bitsearch.step_policy"
VERSION = 1


@EXPORTERS.register("step-policy")
def export(config: BitConfig, layers: Layers = None) -> dict[str, Any]:
    kinds = layer_kinds(layers)
    table = config.resolve(kinds) if kinds is not None else dict(config.rules)
    sizes = config.groups.sizes()
    rest = max(range(len(sizes)), key=lambda g: (sizes[g], -g))  # the longest group stretches
    schedule = [{"steps": [lo, hi], **({"rest": True} if g == rest else {"count": sizes[g]}),
                 "layers": {k: str(v[g]) for k, v in table.items()}}
                for g, (lo, hi) in enumerate(config.groups.spans)]
    return {"format": FORMAT, "version": VERSION, "num_steps": config.groups.num_steps,
            "weight_group_size": config.weight_group_size, "schedule": schedule}


def bits_at(policy: Mapping[str, Any], step: int, fqn: str) -> Bits:
    """The bits layer `fqn` runs at sampler step `step` under an exported policy."""
    config = import_config(policy)
    return config.bits(fqn, config.groups.group_of(step))


@IMPORTERS.register("step-policy")
def import_config(text: str | Mapping[str, Any], layers: Layers = None, num_steps: int | None = None) -> BitConfig:
    """The policy as a BitConfig; with `num_steps` different from the file's, spans are rebuilt from
    each entry's `count` / `rest` (see the module docstring)."""
    data = yaml.safe_load(text) if isinstance(text, str) else text
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise ConfigError(f"not a bitsearch step policy (expected format: {FORMAT})")
    if data.get("version") != VERSION:
        raise ConfigError(f"step policy version {data.get('version')} is not supported (reads {VERSION}); "
                          "re-export it with this bitsearch")
    schedule = data.get("schedule")
    if not isinstance(schedule, list) or not schedule:
        raise ConfigError("a step policy needs a non-empty 'schedule' list of {steps: [first, last], layers: {...}}")
    groups = _groups(schedule, data.get("num_steps"), num_steps)
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


def _groups(schedule: list[Any], own_steps: int | None, num_steps: int | None) -> TimestepGroups:
    if num_steps is None or num_steps == own_steps:
        if any("steps" not in e for e in schedule):
            if own_steps is None:
                raise ConfigError("a step policy with count/rest spans needs num_steps= (the sampler's steps)")
            return _relative(schedule, int(own_steps))
        return TimestepGroups.from_spans([entry["steps"] for entry in schedule], own_steps)
    return _relative(schedule, int(num_steps))


def _relative(schedule: list[Any], n: int) -> TimestepGroups:
    """Spans for `n` steps from the entries' counts: before `rest` from the start, after it from the end."""
    rests = [i for i, e in enumerate(schedule) if e.get("rest")]
    counts = [e.get("count") for i, e in enumerate(schedule) if i not in rests]
    if len(rests) != 1 or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
        raise ConfigError("this step policy's spans are absolute (no 'count' per entry and one 'rest: true'); "
                          "it applies only at its own num_steps: import it without num_steps= or re-export it")
    fixed = sum(int(c) for c in counts)
    if n - fixed < 1:
        raise ConfigError(f"the policy's fixed groups take {fixed} steps, so it needs num_steps >= {fixed + 1}, "
                          f"got {n}")
    sizes = [n - fixed if i in rests else int(e["count"]) for i, e in enumerate(schedule)]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return TimestepGroups(n, tuple(starts))
