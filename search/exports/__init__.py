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

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from quant.config import BitConfig, ConfigError, TimestepGroups
from search.exports import (
    diffusion_policy,
    mixdq,
    modelopt_cfg,
    native,
    step_policy,
    torchao_snippet,
    vidit_q,
)
from search.exports._common import Layers, layer_kinds

Exporter = Callable[..., "str | dict[str, Any]"]
Importer = Callable[..., BitConfig]

EXPORTERS: dict[str, Exporter] = {
    "json": native.export_json,
    "yaml": native.export_yaml,
    "mixdq": mixdq.export,
    "torchao": torchao_snippet.export,
    "modelopt": modelopt_cfg.export,
    "step-policy": step_policy.export,
    "diffusion-step-policy": diffusion_policy.export,
    "vidit-q": vidit_q.export,
}

IMPORTERS: dict[str, Importer] = {
    "json": native.import_text,
    "yaml": native.import_text,
    "mixdq": mixdq.import_config,
    "step-policy": step_policy.import_config,
    "vidit-q": vidit_q.import_config,
}

FORMATS = tuple(EXPORTERS)
IMPORT_FORMATS = tuple(IMPORTERS)


def export(config: BitConfig, fmt: str, layers: Layers = None, **options: Any) -> str | dict[str, Any]:
    """`config` in format `fmt`; `options` are the format's own (e.g. `group=` for mixdq/torchao/modelopt)."""
    fn = _lookup(EXPORTERS, fmt, "export")
    kwargs = _options(fn, fmt, options, {"layers": layers})
    return fn(config, **kwargs)


def import_config(text: str | Mapping[str, Any], fmt: str, *, groups: TimestepGroups | None = None,
                  num_steps: int | None = None, layers: Layers = None, **options: Any) -> BitConfig:
    """Parse `text` of format `fmt` into a BitConfig (validated against `layers` when given).

    `groups` / `num_steps` give timestep groups to formats that have none (mixdq); `options` are the
    format's own (mixdq, vidit-q: `activations=` text of the activations file; mixdq: `protected=`)."""
    fn = _lookup(IMPORTERS, fmt, "import")
    common = {"groups": groups, "num_steps": num_steps, "layers": layers}
    config = fn(text, **_options(fn, fmt, options, common))
    kinds = layer_kinds(layers)
    if kinds is not None:
        config.resolve(kinds)
    return config


def _lookup(table: Mapping[str, Any], fmt: str, what: str) -> Any:
    if fmt not in table:
        one_way = f" ({fmt} is a one-way export)" if what == "import" and fmt in EXPORTERS else ""
        raise ConfigError(f"cannot {what} format {fmt!r}{one_way}; valid: {', '.join(table)}")
    return table[fmt]


def _options(fn: Callable[..., Any], fmt: str, options: Mapping[str, Any], common: Mapping[str, Any]) -> dict[str, Any]:
    """The options `fn` accepts: unknown ones are rejected with the valid list; common arguments
    (layers, groups, num_steps) are passed only to formats that use them."""
    params = [p for p in inspect.signature(fn).parameters][1:]
    unknown = [k for k in options if k not in params or k in common]
    if unknown:
        valid = [p for p in params if p not in common]
        raise ConfigError(f"format {fmt!r} has no option {unknown[0]!r}; valid: {', '.join(valid) or 'none'}")
    return {**{k: v for k, v in common.items() if k in params}, **options}
