from __future__ import annotations

import pytest

from quant.config import BitConfig, Bits, ConfigError, TimestepGroups

LAYERS = ["conv_in", "down.0.attn1.to_q", "down.0.attn1.to_k", "down.0.attn2.to_k", "mid.ff.proj", "conv_out"]


def test_bits_parse_and_validation() -> None:
    assert Bits.parse("w4a8") == Bits(4, 8)
    assert str(Bits(16, 16)) == "W16A16"
    with pytest.raises(ConfigError, match="weight bits 7 not supported"):
        Bits(7, 8)
    with pytest.raises(ConfigError, match="activation bits 5"):
        Bits(8, 5)
    with pytest.raises(ConfigError, match="write them like 'W4A8'"):
        Bits.parse("int4")


def test_timestep_groups_spans_and_lookup() -> None:
    g = TimestepGroups.from_spans([(0, 2), (3, 16), (17, 19)])
    assert g.num_steps == 20 and len(g) == 3 and str(g) == "[0-2] [3-16] [17-19]"
    assert [g.group_of(s) for s in (0, 2, 3, 16, 17, 19)] == [0, 0, 1, 1, 2, 2]
    assert TimestepGroups.uniform(20, 3).sizes() == [7, 6, 7]
    with pytest.raises(ConfigError, match="gap or overlap at step 3"):
        TimestepGroups.from_spans([(0, 2), (4, 19)])
    with pytest.raises(ConfigError, match="extend the last span to 24"):
        TimestepGroups.from_spans([(0, 2), (3, 19)], num_steps=25)
    with pytest.raises(ConfigError, match="outside the sampler's steps"):
        g.group_of(20)
    with pytest.raises(ConfigError, match="past the last step"):
        TimestepGroups(10, (0, 10))


def test_precedence_exact_over_regex_over_default() -> None:
    cfg = BitConfig(TimestepGroups(10), {
        "_default": "W8A8",
        "re:.*attn1\\.to_[qk]": "W4A8",
        "down.0.attn1.to_k": "W6A16",
        "re:.*to_[qk]": "W2A8",  # later regex: loses to the earlier one for attn1, wins for attn2
    })
    assert cfg.bits("down.0.attn1.to_k", 0) == Bits(6, 16)
    assert cfg.bits("down.0.attn1.to_q", 0) == Bits(4, 8)
    assert cfg.bits("down.0.attn2.to_k", 0) == Bits(2, 8)
    assert cfg.bits("conv_in", 0) == Bits(8, 8)
    assert BitConfig(TimestepGroups(10)).bits("conv_in", 0) == Bits(16, 16)


def test_validation_errors_name_the_fix() -> None:
    g = TimestepGroups.uniform(20, 2)
    with pytest.raises(ConfigError, match="gives 3 bit pairs but there are 2 timestep groups"):
        BitConfig(g, {"conv_in": ["W8A8", "W8A8", "W8A8"]})
    with pytest.raises(ConfigError, match="invalid regular expression"):
        BitConfig(g, {"re:(": "W8A8"})
    with pytest.raises(ConfigError, match="did you mean 'conv_out'"):
        BitConfig(g, {"conv_ou": "W8A8"}).resolve(LAYERS)
    with pytest.raises(ConfigError, match="matches no layer"):
        BitConfig(g, {"re:up\\..*": "W8A8"}).resolve(LAYERS)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_round_trip(tmp_path, suffix: str) -> None:
    cfg = BitConfig(TimestepGroups.from_spans([(0, 2), (3, 16), (17, 19)]), {
        "_default": "W8A8", "re:.*attn2.*": ["W4A8", "W8A8", "W8A16"], "conv_in": "W16A16",
    }, weight_group_size=None)
    path = tmp_path / f"cfg{suffix}"
    cfg.save(path)
    back = BitConfig.load(path)
    assert back == cfg
    assert back.resolve(LAYERS) == cfg.resolve(LAYERS)


def test_version_and_format_checked() -> None:
    d = BitConfig.uniform(5, "W8A8").to_dict()
    with pytest.raises(ConfigError, match="version 99 is not supported"):
        BitConfig.from_dict({**d, "version": 99})
    with pytest.raises(ConfigError, match="not a bitsearch bit config"):
        BitConfig.from_dict({**d, "format": "other"})
