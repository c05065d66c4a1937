"""Helpers shared by the export formats: the format registries, layer lists, one-group selection,
group parsing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from quant.config import DEFAULT_KEY, REGEX_PREFIX, BitConfig, Bits, ConfigError, TimestepGroups
from quant.registry import Registry

# Each format module registers its functions; importing `search.exports` imports every format module.
# An exporter takes the config first, an importer the text first; the rest are keyword options.
EXPORTERS: Registry[str | dict[str, Any]] = Registry("export format", "search.exports")
IMPORTERS: Registry[BitConfig] = Registry("import format", "search.exports")

Layers = Iterable[Any] | Mapping[str, Any] | None
"""The model's layers: FQN strings, objects with `.fqn` (and `.kind`, e.g. `quant.layers.Layer`),
dicts with "fqn" (and "kind"), or a mapping FQN -> kind ("linear" / "conv")."""


def layer_kinds(layers: Layers) -> dict[str, str | None] | None:
    """FQN -> kind ("linear", "conv", or None when unknown), in the given order; None if no layers."""
    if layers is None:
        return None
    if isinstance(layers, Mapping):
        return {str(k): (None if v is None else str(v)) for k, v in layers.items()}
    out: dict[str, str | None] = {}
    for x in layers:
        if isinstance(x, str):
            out[x] = None
        elif isinstance(x, Mapping):
            out[str(x["fqn"])] = x.get("kind")
        else:
            out[str(x.fqn)] = getattr(x, "kind", None)
    return out


def layer_names(config: BitConfig, layers: Layers, fmt: str) -> list[str]:
    """The layers to list one by one: the model's (validated against the config), or, without a
    layer list, the config's own exact-FQN rules (patterns cannot be expanded without the model)."""
    kinds = layer_kinds(layers)
    if kinds is not None:
        config.resolve(kinds)  # unknown FQNs / dead regexes -> a clear ConfigError
        return list(kinds)
    patterns = [k for k in config.rules if k == DEFAULT_KEY or k.startswith(REGEX_PREFIX)]
    if patterns:
        raise ConfigError(
            f"the {fmt} format lists every layer by name, but this config has pattern rules (e.g. {patterns[0]!r}); "
            "pass layers= (the model's layer FQNs, e.g. from `bitsearch inspect --json`; the CLI takes them from the study)"
        )
    return list(config.rules)


def one_group(config: BitConfig, group: int | None, fmt: str) -> int:
    """The timestep group to export to a format that has one bit-width per layer.

    Without `group`, a config whose bits never change across groups exports as is; one whose bits
    do change is refused rather than silently collapsed.
    """
    n = len(config.groups)
    if group is not None:
        if not 0 <= group < n:
            raise ConfigError(f"group={group} is out of range: this config has {n} timestep group(s) ({config.groups}), "
                              f"choose 0..{n - 1}")
        return group
    varying = [k for k, v in config.rules.items() if len(set(v)) > 1]
    if varying:
        raise ConfigError(
            f"{fmt} has one bit-width per layer, but this config changes bits across its {n} timestep groups "
            f"({config.groups}; e.g. rule {varying[0]!r}); pass group=N (CLI: --group N, N in 0..{n - 1}) to export "
            "one group's bits, or use the step-policy format to keep the schedule"
        )
    return 0


def per_layer(config: BitConfig, layers: Layers, group: int | None, fmt: str) -> dict[str, Bits]:
    """FQN -> Bits of the chosen group, for every layer (see `layer_names`)."""
    g = one_group(config, group, fmt)
    return {n: config.bits(n, g) for n in layer_names(config, layers, fmt)}


def make_groups(groups: TimestepGroups | None, num_steps: int | None, fmt: str) -> TimestepGroups:
    """Timestep groups for formats that carry none (one bit-width per layer for all steps)."""
    if groups is not None:
        return groups
    if num_steps is None:
        raise ConfigError(f"{fmt} files carry no timestep information; pass num_steps= (the sampler's steps) "
                          "or groups= (a TimestepGroups; every group gets the same bits)")
    return TimestepGroups(int(num_steps))


def strip_prefix(name: str, prefix: str) -> str:
    """`name` without the wrapper prefix tools put before module names (MixDQ and ViDiT-Q: "model.")."""
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


def read_bits(value: Any, where: str) -> int:
    """An integer bit-width read from a published file (bools and strings are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} has bits {value!r}; expected an integer like 8 (16 = high precision)")
    return value


def load_yaml_mapping(text: str, what: str) -> Mapping[str, Any]:
    """A YAML document that must be a mapping at its top level (empty text -> {})."""
    import yaml

    data = yaml.safe_load(text) if text.strip() else {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} must be a YAML mapping at its top level, got {type(data).__name__}")
    return data


def mean_weight_bits(config: BitConfig, params: Mapping[str, int]) -> float:
    """Average weight bits weighted by parameter count and by steps (a proxy, not a measured cost).

    `params` maps FQN -> weight parameter count; layers without a rule count at 16 bits."""
    total = sum(params.values())
    if total <= 0:
        raise ConfigError("cannot average weight bits over layers with no parameters; pass their parameter counts")
    sizes = config.groups.sizes()
    n = config.groups.num_steps
    acc = 0.0
    for fqn, p in params.items():
        bits = config.layer_bits(fqn)
        acc += p * sum(b.w * s for b, s in zip(bits, sizes, strict=True)) / n
    return acc / total


def group_summary(config: BitConfig, names: Iterable[str]) -> list[dict[str, Any]]:
    """Per timestep group: its steps and how many of `names` run at each bit pair (e.g. {"W6A6": 340})."""
    table = config.resolve(list(names))
    out = []
    for g, (lo, hi) in enumerate(config.groups.spans):
        counts: dict[str, int] = {}
        for bits in table.values():
            counts[str(bits[g])] = counts.get(str(bits[g]), 0) + 1
        out.append({"group": g, "steps": [lo, hi], "bits": dict(sorted(counts.items()))})
    return out
