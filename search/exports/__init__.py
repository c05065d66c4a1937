"""Exports of a BitConfig to other tools, and imports back; one module per format.

    from search.exports import export, import_config
    text = export(config, "yaml")                                  # bitsearch's own schema
    files = export(config, "mixdq", layers=inventory, group=0)     # {"weights": ..., "activations": ...}
    snippet = export(config, "torchao", layers=inventory)          # Python source for quantize_
    config = import_config(files["weights"], "mixdq", activations=files["activations"], num_steps=20)

| format      | export returns                          | import back | module            |
| ----------- | --------------------------------------- | ----------- | ----------------- |
| json, yaml  | text (versioned bitsearch schema)       | yes         | `native`          |
| mixdq       | {"weights": yaml, "activations": yaml}  | yes         | `mixdq`           |
| torchao     | Python snippet building FqnToConfig     | one-way     | `torchao_snippet` |
| modelopt    | ModelOpt quant_cfg (list; dict < 0.44)  | one-way     | `modelopt_cfg`    |
| step-policy | per-step schedule dict                  | yes         | `step_policy`     |
| diffusion-step-policy | quantization_config.runtime block | one-way | `diffusion_policy` |
| vidit-q     | {"weights": yaml, "activations": yaml}  | yes         | `vidit_q`         |

`layers` (FQNs, `quant.layers.Layer`s, or {fqn: kind}) lets per-layer formats expand pattern rules
and validates names; formats with one bit-width per layer take `group=` for per-timestep configs.
Applying an exported file to a diffusers pipeline: `search.exports.apply.apply_exported`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quant.config import BitConfig, TimestepGroups
from quant.errors import UnknownNameError
from quant.registry import Registry
from search.exports import (  # noqa: F401  (each format module registers its functions on import)
    diffusion_policy,
    mixdq,
    modelopt_cfg,
    native,
    step_policy,
    torchao_snippet,
    vidit_q,
)
from search.exports._common import EXPORTERS, IMPORTERS, Layers, layer_kinds

FORMATS = tuple(EXPORTERS.names())
IMPORT_FORMATS = tuple(IMPORTERS.names())
TWO_FILES = frozenset({"weights", "activations"})  # the keys of a result written as two files (FILE, FILE_act)


def format_options(fmt: str, importing: bool = False) -> list[str]:
    """The keyword arguments format `fmt` takes when exporting (or importing). Callers branch on these,
    never on format names: `layers` (lists the model's layers), `group` (one bit-width per layer),
    `activations` (a second file), `num_steps` (a format without steps of its own)."""
    return (IMPORTERS if importing else EXPORTERS).params(fmt, skip=1) or []


def formats_taking(option: str, importing: bool = False) -> tuple[str, ...]:
    return tuple(f for f in (IMPORT_FORMATS if importing else FORMATS) if option in format_options(f, importing))


PER_LAYER_FORMATS = formats_taking("group")  # one bit-width per layer: they take --group N


def export(config: BitConfig, fmt: str, layers: Layers = None, **options: Any) -> str | dict[str, Any]:
    """`config` in format `fmt`; `options` are the format's own (e.g. `group=` for mixdq/torchao/modelopt)."""
    fn = EXPORTERS.lookup(fmt)
    return fn(config, **_options(EXPORTERS, fmt, options, {"layers": layers}))


def import_config(text: str | Mapping[str, Any], fmt: str, *, groups: TimestepGroups | None = None,
                  num_steps: int | None = None, layers: Layers = None, **options: Any) -> BitConfig:
    """Parse `text` of format `fmt` into a BitConfig (validated against `layers` when given).

    `groups` / `num_steps` give timestep groups to formats that have none (mixdq); `options` are the
    format's own (mixdq, vidit-q: `activations=` text of the activations file; mixdq: `protected=`)."""
    try:
        fn = IMPORTERS.lookup(fmt)
    except UnknownNameError as e:
        one_way = f" ({fmt} is a one-way export)" if fmt in FORMATS else ""
        raise UnknownNameError(f"{e}{one_way}") from None
    common = {"groups": groups, "num_steps": num_steps, "layers": layers}
    config = fn(text, **_options(IMPORTERS, fmt, options, common))
    kinds = layer_kinds(layers)
    if kinds is not None:
        config.resolve(kinds)
    return config


def _options(registry: Registry[Any], fmt: str, options: Mapping[str, Any], common: Mapping[str, Any]) -> dict[str, Any]:
    """The options format `fmt` takes: unknown ones are rejected with the valid list; common arguments
    (layers, groups, num_steps) are passed only to formats that use them, and never by the user."""
    registry.check(fmt, options, skip=1, reserved=common)
    params = registry.params(fmt, skip=1) or []
    return {**{k: v for k, v in common.items() if k in params}, **options}
