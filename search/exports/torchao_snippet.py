"""`torchao`: a ready-to-run Python snippet that builds a torchao `FqnToConfig` for `quantize_`.

Only configs that exist in the installed torchao are used (checked by importing it at export
time; without torchao installed, the documented 0.1x names are assumed and the snippet says so).
Each bitsearch bit pair maps to the closest torchao config:

| bitsearch            | nn.Linear                                        | nn.Conv2d                     |
| -------------------- | ------------------------------------------------ | ----------------------------- |
| W8A16                | Int8WeightOnlyConfig                             | IntxWeightOnlyConfig(int8)    |
| W2..6A16             | IntxWeightOnlyConfig(intN)                       | IntxWeightOnlyConfig(intN)    |
| W8A8                 | Int8DynamicActivationInt8WeightConfig            | weights only (approximated)   |
| W2..6A8              | Int8DynamicActivationIntxWeightConfig(intN)      | weights only (approximated)   |
| WxA4 / WxA6          | as WxA8: activations at 8 bits (approximated)    | weights only (approximated)   |
| W16A8 etc.           | no equivalent: left in high precision            | no equivalent                 |

(torchao 0.18 has no quantized-activation path for convolutions, and no activation-only config.)
Approximated and unmapped layers are listed in comments at the top: nothing is dropped silently.
torchao has one config per layer, so a per-timestep config exports one group (`group=`) or is refused.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from quant.config import HIGH_PRECISION, BitConfig, Bits
from search.exports._common import EXPORTERS, Layers, layer_kinds, one_group, per_layer

# The names this exporter may emit; without torchao installed, they are assumed to exist.
USED = ("FqnToConfig", "Int8WeightOnlyConfig", "IntxWeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig",
        "Int8DynamicActivationIntxWeightConfig")


@functools.lru_cache(maxsize=1)
def installed() -> tuple[str | None, frozenset[str]]:
    """(torchao version, names in torchao.quantization), or (None, USED) when torchao is absent."""
    try:
        import torchao
        import torchao.quantization as tq
    except Exception:  # not installed, or built for another torch: write from the documented API
        return None, frozenset(USED)
    return str(getattr(torchao, "__version__", "?")), frozenset(dir(tq))


def torchao_config(bits: Bits, kind: str | None, group_size: int | None,
                   available: frozenset[str]) -> tuple[str | None, str | None]:
    """(Python expression of the closest torchao config or None, note on why it is approximate/absent)."""
    w, a = bits.w, bits.a
    if w == HIGH_PRECISION:
        return (None, None) if a == HIGH_PRECISION else (None, f"{bits}: torchao has no activation-only config")
    gran = f"PerGroup({group_size})" if group_size else "PerAxis(0)"
    weight_only = (f"Int8WeightOnlyConfig(granularity={gran})" if group_size else "Int8WeightOnlyConfig()") \
        if w == 8 and kind != "conv" else f"IntxWeightOnlyConfig(weight_dtype=torch.int{w}, granularity={gran})"
    note = None
    if a == HIGH_PRECISION:
        expr = weight_only
    elif kind == "conv":
        expr, note = weight_only, f"{bits}: weights only, activations stay high precision (no torchao conv activation config)"
    else:
        if w == 8 and not group_size:
            expr = "Int8DynamicActivationInt8WeightConfig()"
        else:
            expr = f"Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int{w}, weight_granularity={gran})"
        if a != 8:
            note = f"{bits}: activations at 8 bits (torchao's smallest dynamic activation config)"
    name = expr.split("(")[0]
    if name not in available:
        return None, f"{bits}: {name} is not in the installed torchao"
    return expr, note


@EXPORTERS.register("torchao")
def export(config: BitConfig, layers: Layers = None, group: int | None = None) -> str:
    """The snippet: defines `config` (an FqnToConfig) and `apply(model)`; run it, then `apply(denoiser)`."""
    g = one_group(config, group, "torchao")
    bits = per_layer(config, layers, g, "torchao")
    kinds = layer_kinds(layers) or {}
    version, available = installed()
    mapped: dict[str, str] = {}
    approx: list[str] = []
    missing: list[str] = []
    for fqn, b in bits.items():
        expr, note = torchao_config(b, kinds.get(fqn), config.weight_group_size, available)
        if expr is not None:
            mapped[fqn] = expr
        if note:
            (approx if expr is not None else missing).append(f"#   {fqn}  {note}")
    exprs = sorted(set(mapped.values()))
    var = {e: f"c{i}" for i, e in enumerate(exprs)}
    imports = sorted({"FqnToConfig", *(e.split("(")[0] for e in exprs)})
    gran = sorted({x for x in ("PerAxis", "PerGroup") if any(f"{x}(" in e for e in exprs)})
    groups = config.groups
    lines = [
        "# bitsearch export for torchao.quantization.quantize_ "
        + (f"(torchao {version})" if version else "(torchao not installed where exported: documented API assumed)"),
        f"# timestep group {g} of {len(groups)} ({groups}): torchao runs one config per layer for every step",
        "# torchao quantizes activations dynamically per token; bitsearch calibrates static ranges",
    ]
    if not kinds or any(k is None for k in kinds.values()):
        lines.append("# layer kinds unknown: every layer assumed nn.Linear (export with the model's inventory "
                     "to map convolutions)")
    if approx:
        lines += [f"# approximated ({len(approx)} layers):", *approx]
    if missing:
        lines += [f"# NOT quantized: no torchao equivalent ({len(missing)} layers, left in high precision):", *missing]
    lines += [
        "import torch",
        f"from torchao.quantization import {', '.join(imports)}, quantize_",
    ]
    if gran:
        lines.append(f"from torchao.quantization.granularity import {', '.join(gran)}")
    lines.append("")
    lines += [f"{var[e]} = {e}" for e in exprs]
    lines.append("config = FqnToConfig({")
    lines += [f"    {json.dumps(fqn)}: {var[e]}," for fqn, e in mapped.items()]
    lines += [
        "})",
        "",
        "",
        "def apply(model: torch.nn.Module) -> torch.nn.Module:",
        '    """Quantize the denoiser (e.g. pipe.unet) in place; FqnToConfig needs filter_fn=None."""',
        "    quantize_(model, config, filter_fn=None)",
        "    return model",
        "",
    ]
    return "\n".join(lines)


def exported_layers(snippet_globals: dict[str, Any]) -> list[str]:
    """The FQNs the executed snippet's config quantizes (for tests and tooling)."""
    return list(snippet_globals["config"].fqn_to_config)
