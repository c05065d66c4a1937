"""`modelopt`: a ModelOpt quantization config (`{"quant_cfg": [...], "algorithm": "max"}`).

ModelOpt puts a `weight_quantizer` and an `input_quantizer` in every quantized layer and configures
them by wildcard patterns over their names, later entries overriding earlier ones. Since ModelOpt
0.44 `quant_cfg` is a list of `{"quantizer_name": pattern, "cfg": {...}, "enable": bool}` entries
(`modelopt/torch/quantization/config.py`, `QuantizerCfgEntry`); the legacy dict
(`{"<pattern>": {...}}`) still works but warns "Passing quant_cfg in the legacy dict format is
deprecated" at every call. `legacy=None` writes the list unless the installed ModelOpt is older
than 0.44 (or absent: the list); `legacy=True/False` forces one.

The first entry disables every quantizer (`"*"`); each layer then gets two entries named
`*<fqn>.weight_quantizer` / `*<fqn>.input_quantizer`: the leading `*` allows a wrapper prefix, the
`.` before the quantizer name keeps `blocks.1` from matching `blocks.11`. Because the leading `*`
lets `a.proj` match `b.a.proj`, entries are ordered shortest FQN first, so the longer (exact) name
is applied last and wins. 16 bits -> `"enable": False`. One-way: ModelOpt configs are not imported.
"""

from __future__ import annotations

from typing import Any

from quant.config import HIGH_PRECISION, BitConfig
from search.exports._common import EXPORTERS, Layers, per_layer

LIST_FORMAT_SINCE = (0, 44)


@EXPORTERS.register("modelopt")
def export(config: BitConfig, layers: Layers = None, group: int | None = None,
           legacy: bool | None = None) -> dict[str, Any]:
    bits = per_layer(config, layers, group, "modelopt")
    gs = config.weight_group_size
    entries: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
    order = {n: i for i, n in enumerate(bits)}
    for fqn in sorted(bits, key=lambda n: (len(n), order[n])):
        b = bits[fqn]
        if b.w == HIGH_PRECISION:
            w: dict[str, Any] = {"enable": False}
        elif gs:
            w = {"cfg": {"num_bits": b.w, "block_sizes": {-1: gs}}, "enable": True}
        else:
            w = {"cfg": {"num_bits": b.w, "axis": 0}, "enable": True}
        a: dict[str, Any] = {"enable": False} if b.a == HIGH_PRECISION else \
            {"cfg": {"num_bits": b.a, "axis": None}, "enable": True}
        entries.append({"quantizer_name": f"*{fqn}.weight_quantizer", **w})
        entries.append({"quantizer_name": f"*{fqn}.input_quantizer", **a})
    if legacy is None:
        version = installed_version()
        legacy = version is not None and version < LIST_FORMAT_SINCE
    if legacy:
        # ModelOpt < 0.44: {pattern: {attributes..., "enable": bool}}; "default" was its catch-all key.
        cfg = {("default" if e["quantizer_name"] == "*" else e["quantizer_name"]):
               {**e.get("cfg", {}), "enable": e["enable"]} for e in entries}
        return {"quant_cfg": cfg, "algorithm": "max"}
    return {"quant_cfg": entries, "algorithm": "max"}


def installed_version() -> tuple[int, int] | None:
    """(major, minor) of the installed nvidia-modelopt, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        parts = version("nvidia-modelopt").split(".")
    except PackageNotFoundError:
        return None
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None
