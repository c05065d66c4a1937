"""`mixdq`: MixDQ's flat mixed-precision YAML, one file for weights and one for activations.

Each file maps `model.<fqn>` (MixDQ wraps the UNet as `model`) to a bit-width, keys sorted as
MixDQ's own `yaml.dump` writes them (thu-nics/MixDQ, `mixed_precision_scripts/mixed_percision_config/
sdxl_turbo/final_config/weight/weight_4.08.yaml`). MixDQ's kernel loader (`kernels/quantize_sdxl.py`,
`bw_to_dtype`) knows the keys 2, 4 and 8 (2 runs as 4); a layer a file does not list keeps that
operand in fp16. So 16 bits are written by omission: W16 layers are left out of the weights file and
A16 layers out of the activations file, as MixDQ's released act files do. Other widths (3, 5, 6) are
written as they are: MixDQ's simulation code (`QuantModel.load_bitwidth_config`) takes any width, its
kernels do not.

**Protected layers.** MixDQ's act files omit a few "extremely sensitive" layers (the `--act_protect`
list, `act_sensitivie_a8_1%.pt`). A layer in the weights file but not in the activations file is
read according to `protected=`:

- `"weights-only"` (default): W{x}A16. This is what MixDQ's released code does with them: its kernel
  loader leaves activations unlisted in fp16, and `scripts/quant_txt2img.py --act_protect` calls
  `set_layer_quant(..., weight_quant=True, act_quant=False)` on the protected list.
- `"w16a16"`: the whole layer in high precision (the reading of "kept in FP16" in MixDQ's write-up).

Without an activations file, activations stay in high precision; a layer listed in neither file
runs W16A16. MixDQ has one bit-width per layer for all timesteps, so a config whose bits change
across timestep groups is exported one group at a time (`group=`) or refused.
"""

from __future__ import annotations

from typing import Any

import yaml

from quant.config import HIGH_PRECISION, BitConfig, Bits, ConfigError, TimestepGroups
from search.exports._common import (
    EXPORTERS,
    IMPORTERS,
    Layers,
    layer_kinds,
    load_yaml_mapping,
    make_groups,
    per_layer,
    read_bits,
    strip_prefix,
)

PREFIX = "model."
PROTECTED = ("weights-only", "w16a16")
KERNEL_BITS = (2, 4, 8)


@EXPORTERS.register("mixdq")
def export(config: BitConfig, layers: Layers = None, group: int | None = None,
           prefix: str = PREFIX) -> dict[str, str]:
    """{"weights": yaml text, "activations": yaml text}; 16-bit operands are omitted (see above)."""
    bits = per_layer(config, layers, group, "mixdq")
    weights = {prefix + n: b.w for n, b in bits.items() if b.w != HIGH_PRECISION}
    acts = {prefix + n: b.a for n, b in bits.items() if b.a != HIGH_PRECISION}
    return {"weights": yaml.safe_dump(weights, sort_keys=True), "activations": yaml.safe_dump(acts, sort_keys=True)}


@IMPORTERS.register("mixdq")
def import_config(text: str, activations: str | None = None, protected: str = "weights-only",
                  groups: TimestepGroups | None = None, num_steps: int | None = None, layers: Layers = None,
                  prefix: str = PREFIX) -> BitConfig:
    """A BitConfig with one exact rule per listed layer, the same bits in every timestep group."""
    if protected not in PROTECTED:
        raise ConfigError(f"protected={protected!r} is not a reading of MixDQ's protected layers; "
                          f"choose one of {', '.join(PROTECTED)}")
    g = make_groups(groups, num_steps, "mixdq")
    w = _read(text, "weights", prefix)
    a = _read(activations, "activations", prefix) if activations is not None else {}
    rules: dict[str, Any] = {}
    for fqn in [*w, *(k for k in a if k not in w)]:
        wb = w.get(fqn, HIGH_PRECISION)
        if activations is not None and fqn not in a and protected == "w16a16":
            wb = HIGH_PRECISION
        try:
            rules[fqn] = Bits(wb, a.get(fqn, HIGH_PRECISION))
        except ConfigError as e:
            raise ConfigError(f"mixdq layer {prefix}{fqn}: {e}") from None
    config = BitConfig(g, rules)
    kinds = layer_kinds(layers)
    if kinds is not None:
        config.resolve(kinds)  # names this model lacks -> a clear error, before anything runs
    return config


def protected_layers(weights: str, activations: str, prefix: str = PREFIX) -> list[str]:
    """The layers a MixDQ pair leaves out of its activations file but quantizes the weights of."""
    w, a = _read(weights, "weights", prefix), _read(activations, "activations", prefix)
    return [n for n in w if n not in a]


def _read(text: str, what: str, prefix: str) -> dict[str, int]:
    data = load_yaml_mapping(text, f"mixdq {what} file ('model.<fqn>: bits')")
    return {strip_prefix(str(k), prefix): read_bits(v, f"mixdq {what} file: {k!r}") for k, v in data.items()}
