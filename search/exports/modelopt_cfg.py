"""`modelopt`: a ModelOpt-style quantization config (`{"quant_cfg": {...}, "algorithm": "max"}`).

ModelOpt puts a `weight_quantizer` and an `input_quantizer` in every quantized layer and configures
them by wildcard patterns over their names (`<fqn>.weight_quantizer`), later entries overriding
earlier ones; `"default": {"enable": False}` first leaves everything unlisted in high precision.
Keys are `*<fqn>.weight_quantizer`: the leading `*` allows a wrapper prefix, the `.` before the
quantizer name keeps `blocks.1` from matching `blocks.11`. Because the leading `*` lets
`a.proj` match `b.a.proj`, entries are ordered shortest FQN first, so the longer (exact) name is
applied last and wins. 16 bits -> `{"enable": False}`. One-way: ModelOpt configs are not imported.
"""

from __future__ import annotations

from typing import Any

from quant.config import HIGH_PRECISION, BitConfig
from search.exports._common import Layers, per_layer


def export(config: BitConfig, layers: Layers = None, group: int | None = None) -> dict[str, Any]:
    bits = per_layer(config, layers, group, "modelopt")
    gs = config.weight_group_size
    cfg: dict[str, Any] = {"default": {"enable": False}}
    order = {n: i for i, n in enumerate(bits)}
    for fqn in sorted(bits, key=lambda n: (len(n), order[n])):
        b = bits[fqn]
        if b.w == HIGH_PRECISION:
            cfg[f"*{fqn}.weight_quantizer"] = {"enable": False}
        elif gs:
            cfg[f"*{fqn}.weight_quantizer"] = {"num_bits": b.w, "block_sizes": {-1: gs}, "enable": True}
        else:
            cfg[f"*{fqn}.weight_quantizer"] = {"num_bits": b.w, "axis": 0, "enable": True}
        if b.a == HIGH_PRECISION:
            cfg[f"*{fqn}.input_quantizer"] = {"enable": False}
        else:
            cfg[f"*{fqn}.input_quantizer"] = {"num_bits": b.a, "axis": None, "enable": True}
    return {"quant_cfg": cfg, "algorithm": "max"}
