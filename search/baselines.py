"""The baselines a user would otherwise pick, evaluated in every study beside the solver's proposals,
in the same run and on the same kernels:

- `uniform`: every bit pair the study may use, on every layer and step (each a format of the target);
  a pair like `W8A8` names one of them alone.
- `float-ends`: the first and last quantizable layers and the timestep-embedding layers kept in float,
  every other layer at the target's int format (W8A8: int8 kernels) — the common hand-made recipe.
- `first-last-N` (e.g. `first-last-3`): activations at 16 bits on the first and last N sampler steps,
  the int format elsewhere (the per-step policy NVIDIA's Cosmos FP8 checkpoints ship with N = 3,
  `diffusion_step_policy`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from quant.config import FULL_PRECISION, BitConfig, Bits, ConfigError, TimestepGroups
from quant.layers import Layer
from search.origins import HEURISTIC, UNIFORM
from workloads.denoisers import TIME_EMBEDDING

FLOAT_ENDS = "float-ends"
_FIRST_LAST = re.compile(r"first-last-(\d+)")
INT_FORMAT = Bits(8, 8)  # the int8 backend's fastest integer format
INT_WEIGHTS_FLOAT_ACTIVATIONS = Bits(8, 16)


def check_baseline(name: str) -> None:
    """ConfigError unless `name` is a baseline this module builds or a bit pair."""
    first_last = _FIRST_LAST.fullmatch(name)
    if name in (UNIFORM, FLOAT_ENDS) or (first_last and int(first_last.group(1)) >= 1):
        return
    try:
        Bits.parse(name)
    except ConfigError:
        raise ConfigError(f"unknown baseline {name!r}; valid: {UNIFORM}, {FLOAT_ENDS}, first-last-N (e.g. "
                          "first-last-3), or a bit pair like W8A8") from None


def baseline_origin(name: str) -> str:
    """The origin a baseline's candidates are stored with: `uniform` for bit pairs, `heuristic` otherwise."""
    return HEURISTIC if name == FLOAT_ENDS or _FIRST_LAST.fullmatch(name) else UNIFORM


def baseline_configs(names: Sequence[str], bits: Sequence[Bits], groups: TimestepGroups,
                     layers: Sequence[Layer]) -> list[BitConfig]:
    """The configs of baselines `names` for a study of `bits` and `groups` on `layers`."""
    out: list[BitConfig] = []
    for name in names:
        first_last = _FIRST_LAST.fullmatch(name)
        if name == UNIFORM:
            out += [BitConfig.uniform(groups, b) for b in bits]
        elif name == FLOAT_ENDS:
            kept = {layers[0].fqn, layers[-1].fqn, *(x.fqn for x in layers if TIME_EMBEDDING.search(x.fqn))}
            out.append(BitConfig(groups, {"_default": str(INT_FORMAT), **dict.fromkeys(kept, str(FULL_PRECISION))}))
        elif first_last:
            out.append(first_last_n(int(first_last.group(1)), groups.num_steps))
        else:
            out.append(BitConfig.uniform(groups, Bits.parse(name)))
    return out


def first_last_n(n: int, num_steps: int) -> BitConfig:
    """16-bit activations on the first and last `n` steps, W8A8 between (one group when they cover all)."""
    if 2 * n >= num_steps:
        return BitConfig.uniform(num_steps, INT_WEIGHTS_FLOAT_ACTIVATIONS)
    groups = TimestepGroups.from_spans([(0, n - 1), (n, num_steps - n - 1), (num_steps - n, num_steps - 1)])
    ends = str(INT_WEIGHTS_FLOAT_ACTIVATIONS)
    return BitConfig(groups, {"_default": [ends, str(INT_FORMAT), ends]})
