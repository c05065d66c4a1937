from __future__ import annotations

import pytest

from quant.config import BitConfig, Bits, ConfigError, TimestepGroups
from quant.layers import Layer
from search.baselines import baseline_configs, check_baseline, first_last_n

LAYERS = [Layer(n, "linear", (8, 8), 64, 64) for n in
          ("conv_in", "time_embedding.linear_1", "down.0.attn.to_q", "up.0.ff", "conv_out")]
GROUPS = TimestepGroups.uniform(20, 2)


def test_float_ends_keeps_the_first_last_and_timestep_embedding_layers_in_float() -> None:
    (config,) = baseline_configs(["float-ends"], [Bits(8, 8)], GROUPS, LAYERS)
    plans = config.resolve([x.fqn for x in LAYERS])
    floats = {f for f, plan in plans.items() if all(b == Bits(16, 16) for b in plan)}
    assert floats == {"conv_in", "time_embedding.linear_1", "conv_out"}
    assert {plans[f] for f in plans if f not in floats} == {(Bits(8, 8), Bits(8, 8))}


def test_first_last_n_runs_16_bit_activations_on_the_end_steps_only() -> None:
    config = first_last_n(3, 20)
    assert config.groups.spans == [(0, 2), (3, 16), (17, 19)]
    assert config.layer_bits("any.layer") == (Bits(8, 16), Bits(8, 8), Bits(8, 16))
    assert first_last_n(10, 20) == BitConfig.uniform(20, Bits(8, 16))  # the ends cover every step


def test_uniform_is_every_pair_and_names_are_checked() -> None:
    configs = baseline_configs(["uniform", "W6A8"], [Bits(8, 8), Bits(4, 8)], GROUPS, LAYERS)
    assert [c.layer_bits("conv_in")[0] for c in configs] == [Bits(8, 8), Bits(4, 8), Bits(6, 8)]
    for bad in ("first-last-0", "nope", "W3A3"):
        with pytest.raises(ConfigError, match="baseline|bits"):
            check_baseline(bad)
