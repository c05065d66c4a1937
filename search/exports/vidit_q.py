"""`vidit-q`: ViDiT-Q's timestep-wise mixed-precision YAML (thu-nics/ViDiT-Q), weights and activations.

ViDiT-Q publishes per-timestep configs for OpenSora's STDiT (e.g. `qdiff/analysis_tools/
mixed_precision/mixed_precision_config/w6a6_0/t20_weight_6_8_mp.yaml`): top-level keys are ranges
of the sampler's timestep index, counted down the sampling loop as ViDiT-Q's
`t2v/scripts/quant_txt2video_mp.py` builds them (`quant_start_t = quant_time_list[...] + n//4 - 1`,
`quant_end_t = quant_time_list[...]`): with 20 steps, "19-15" is the first five steps of the loop,
then "14-10", "9-5", "4-0". Range "a-b" of an N-step schedule is loop steps N-1-a .. N-1-b here. Each
range maps `model.<fqn>` to a bit-width. An optional `fp_layers` section lists, per range, name
fragments (e.g. `blocks.24.attn.`, `blocks.26.mlp`) matched as substrings of the layer name without
the `model.` prefix: those layers run fully in high precision in that range (W16A16 here).

Import reads both files on the file's own layer names when no model is given, and checks them
against a model's inventory when `layers=` is (names without the prefix). A layer a range does not
list keeps that operand in high precision. Export writes the same shape (keys sorted like ViDiT-Q's
`yaml.dump`): W16A16 layers of a range go to `fp_layers` (exact names) in the weights file; a layer
with only one operand at 16 bits is refused, because ViDiT-Q's loader leaves unlisted operands at
its default bits rather than high precision.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from quant.config import HIGH_PRECISION, BitConfig, Bits, ConfigError, TimestepGroups
from search.exports._common import (
    EXPORTERS,
    IMPORTERS,
    Layers,
    layer_kinds,
    load_yaml_mapping,
    read_bits,
    strip_prefix,
)

PREFIX = "model."
FP_KEY = "fp_layers"
_RANGE = re.compile(r"(\d+)-(\d+)")


@IMPORTERS.register("vidit-q")
def import_config(text: str, activations: str | None = None, layers: Layers = None,
                  prefix: str = PREFIX) -> BitConfig:
    """A BitConfig with one timestep group per range, in the loop's order."""
    w_ranges, w_fp = _read(text, "weights", prefix)
    a_ranges, a_fp = _read(activations, "activations", prefix) if activations is not None else ({}, {})
    if a_ranges and set(a_ranges) != set(w_ranges):
        raise ConfigError(f"vidit-q weights and activations files have different step ranges "
                          f"({sorted(w_ranges)} vs {sorted(a_ranges)}); use a pair written for the same schedule")
    bounds = {key: _bounds(key) for key in w_ranges}
    n = max(hi for hi, _ in bounds.values()) + 1
    order = sorted(w_ranges, key=lambda k: -bounds[k][0])  # the loop runs from timestep n-1 down to 0
    groups = TimestepGroups.from_spans([(n - 1 - bounds[k][0], n - 1 - bounds[k][1]) for k in order], n)
    names: dict[str, None] = {}
    for k in order:
        names.update(dict.fromkeys(w_ranges[k]))
        names.update(dict.fromkeys(a_ranges.get(k, {})))
    fp = {k: [*w_fp.get(k, []), *a_fp.get(k, [])] for k in order}
    rules: dict[str, list[Bits]] = {}
    for name in names:
        per_group = []
        for k in order:
            if any(frag in name for frag in fp[k]):
                per_group.append(Bits(HIGH_PRECISION, HIGH_PRECISION))
                continue
            try:
                per_group.append(Bits(w_ranges[k].get(name, HIGH_PRECISION), a_ranges.get(k, {}).get(name, HIGH_PRECISION)))
            except ConfigError as e:
                raise ConfigError(f"vidit-q range {k}, layer {prefix}{name}: {e}") from None
        rules[name] = per_group
    config = BitConfig(groups, rules)
    kinds = layer_kinds(layers)
    if kinds is not None:
        config.resolve(kinds)  # names this model lacks -> a clear error naming `bitsearch inspect`
    return config


@EXPORTERS.register("vidit-q")
def export(config: BitConfig, layers: Layers = None, prefix: str = PREFIX) -> dict[str, str]:
    """{"weights": yaml text, "activations": yaml text}, one mapping per step range."""
    kinds = layer_kinds(layers)
    names = list(kinds) if kinds is not None else [k for k in config.rules if not _is_pattern(k)]
    if kinds is None and len(names) != len(config.rules):
        raise ConfigError("the vidit-q format lists every layer by name, but this config has pattern rules; "
                          "pass layers= (the model's layer FQNs, e.g. from `bitsearch inspect --json`)")
    table = config.resolve(names)
    n = config.groups.num_steps
    weights: dict[str, Any] = {}
    acts: dict[str, Any] = {}
    fp: dict[str, list[str]] = {}
    for g, (lo, hi) in enumerate(config.groups.spans):
        key = f"{n - 1 - lo}-{n - 1 - hi}"
        weights[key], acts[key] = {}, {}
        for name, bits in table.items():
            b = bits[g]
            if b.is_full_precision:
                fp.setdefault(key, []).append(name)
            elif HIGH_PRECISION in (b.w, b.a):
                raise ConfigError(f"{name!r} runs {b} in steps {lo}-{hi}: ViDiT-Q expresses 16 bits only for a "
                                  "whole layer (fp_layers); use W16A16 or quantize both operands")
            else:
                weights[key][prefix + name] = b.w
                acts[key][prefix + name] = b.a
    w_text = yaml.safe_dump(weights, sort_keys=True)
    if fp:
        w_text += yaml.safe_dump({FP_KEY: fp}, sort_keys=True)
    return {"weights": w_text, "activations": yaml.safe_dump(acts, sort_keys=True)}


def _is_pattern(key: str) -> bool:
    return key == "_default" or key.startswith("re:")


def _bounds(key: str) -> tuple[int, int]:
    m = _RANGE.fullmatch(key)
    if not m or int(m.group(1)) < int(m.group(2)):
        raise ConfigError(f"vidit-q step range {key!r} is not 'first-last' counted down (e.g. '19-15')")
    return int(m.group(1)), int(m.group(2))


def _read(text: str, what: str, prefix: str) -> tuple[dict[str, dict[str, int]], dict[str, list[str]]]:
    data = load_yaml_mapping(text, f"vidit-q {what} file")
    ranges: dict[str, dict[str, int]] = {}
    fp: dict[str, list[str]] = {}
    for key, value in data.items():
        if key == FP_KEY:
            if not isinstance(value, Mapping):
                raise ConfigError(f"vidit-q {what} file: {FP_KEY} must map step ranges to lists of layer names")
            fp = {str(k): [str(x) for x in (v or [])] for k, v in value.items()}
            continue
        _bounds(str(key))
        if not isinstance(value, Mapping):
            raise ConfigError(f"vidit-q {what} file: range {key!r} must map 'model.<fqn>' to bits")
        ranges[str(key)] = {strip_prefix(str(k), prefix): read_bits(v, f"vidit-q {what} file: {key} {k!r}")
                            for k, v in value.items()}
    if not ranges:
        raise ConfigError(f"vidit-q {what} file has no step ranges (keys like '19-15')")
    unknown = sorted(set(fp) - set(ranges))
    if unknown:
        raise ConfigError(f"vidit-q {what} file: {FP_KEY} names step range {unknown[0]!r} that no mapping has")
    return ranges, fp
