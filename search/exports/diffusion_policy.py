"""`diffusion-step-policy`: a config's per-step part as `quantization_config.runtime.diffusion_step_policy`.

The cross-runtime schema read by diffusers (`diffusers/pipelines/cosmos/mixed_precision.py`,
`parse_diffusion_step_policy`), vLLM-Omni and SGLang: schema_version 1, type `first_last_n`, steps
indexed by `denoising_loop_iteration` (0 = the first, noisiest step), `scope` ["transformer"],
`default_mode` "native" (the checkpoint's own quantized forward) and `first_steps` / `last_steps`
`{count, mode: "a16"}`: those steps run with activations unquantized (e.g. W8A16 instead of W8A8).

A config fits when its groups are: some leading steps and/or some trailing steps where every layer
runs at its native weight bits with A16, and the rest where every layer runs its native bits (the
same weight bits in every group; the same activation bits in every native group). Anything else
(weights that change per step, a few layers switching alone, an A16 window in the middle) is refused
with the reason: the schema cannot say it. `overlap` is "a16" (a step in both windows is A16);
`reasoner` (Cosmos' reasoner path) is written "native": the config says nothing about one. The
native bits themselves are not in the policy; they live in the checkpoint (export them with
`modelopt` or `json` for the middle group). One-way.
"""

from __future__ import annotations

from typing import Any

from quant.config import HIGH_PRECISION, BitConfig, ConfigError
from search.exports._common import EXPORTERS, Layers, layer_kinds


@EXPORTERS.register("diffusion-step-policy")
def export(config: BitConfig, layers: Layers = None) -> dict[str, Any]:
    """{"quantization_config": {"runtime": {"diffusion_step_policy": {...}}}} to merge into the
    denoiser's config.json, or ConfigError naming why the schedule does not fit the schema."""
    kinds = layer_kinds(layers)
    table = config.resolve(kinds) if kinds is not None else dict(config.rules)
    if not table:
        raise ConfigError("the config has no rules: nothing to schedule")
    n_groups = len(config.groups)
    native_groups = [g for g in range(n_groups) if not all(v[g].a == HIGH_PRECISION for v in table.values())]
    if not native_groups:
        raise ConfigError("every step runs A16: no native (quantized-activation) steps for default_mode 'native'; "
                          "export this config with `modelopt` or `json` instead")
    ref = native_groups[0]
    for name, v in table.items():
        if len({b.w for b in v}) > 1:
            raise ConfigError(f"weights change across steps (e.g. {name!r}: {', '.join(str(b) for b in v)}); "
                              "a diffusion_step_policy switches activations only: export with `step-policy`")
        for g in range(n_groups):
            if g in native_groups and v[g] != v[ref]:
                raise ConfigError(f"{name!r} runs {v[g]} in steps {_span(config, g)} but {v[ref]} in steps "
                                  f"{_span(config, ref)}: native steps must share one bit config; "
                                  "export with `step-policy`")
    a16 = [g for g in range(n_groups) if g not in native_groups]
    first = [g for g in a16 if g < ref]
    last = [g for g in a16 if g > native_groups[-1]]
    middle = sorted(set(a16) - set(first) - set(last))
    if middle:
        raise ConfigError(f"steps {_span(config, middle[0])} run A16 between native steps; the schema has A16 "
                          "windows only at the first and last steps: export with `step-policy`")
    sizes = config.groups.sizes()
    policy = {
        "schema_version": 1,
        "type": "first_last_n",
        "index_space": "denoising_loop_iteration",
        "scope": ["transformer"],
        "default_mode": "native",
        "first_steps": {"count": sum(sizes[g] for g in first), "mode": "a16"},
        "last_steps": {"count": sum(sizes[g] for g in last), "mode": "a16"},
        "overlap": "a16",
        "reasoner": "native",
    }
    return {"quantization_config": {"runtime": {"diffusion_step_policy": policy}}}


def _span(config: BitConfig, g: int) -> str:
    lo, hi = config.groups.spans[g]
    return f"{lo}-{hi}"
