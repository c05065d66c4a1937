from __future__ import annotations

import json
import math

import pytest

from quant.config import FULL_PRECISION, Bits, ConfigError, TimestepGroups
from quant.scores import Scores

G = TimestepGroups.uniform(10, 2)
W4A8 = Bits(4, 8)


def test_round_trip_through_json() -> None:
    s = Scores("hessian", "alignment", G, {("a.b", 0, W4A8): 0.5, ("a.b", 1, Bits(8, 8)): 0.0},
               stderr={("a.b", 0, W4A8): 0.1})
    d = json.loads(json.dumps(s.to_dict()))
    assert "a.b|0|W4A8" in d["values"]
    assert Scores.from_dict(d) == s


def test_get_and_implicit_full_precision() -> None:
    s = Scores("x", "quality", G, {("l", 0, W4A8): 2.0})
    assert s.get("l", 0, W4A8) == 2.0
    assert s.get("anything", 1, FULL_PRECISION) == 0.0
    with pytest.raises(KeyError, match=r"no entry for \('l', group 1, W4A8\)"):
        s.get("l", 1, W4A8)


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf])
def test_bad_values_name_the_entry(value: float) -> None:
    with pytest.raises(ConfigError, match=r"\('l', group 0, W4A8\).*finite and >= 0"):
        Scores("x", "quality", G, {("l", 0, W4A8): value})


def test_group_out_of_range_and_bad_metric_and_stray_stderr() -> None:
    with pytest.raises(ConfigError, match="group out of range"):
        Scores("x", "quality", G, {("l", 2, W4A8): 1.0})
    with pytest.raises(ConfigError, match="metric"):
        Scores("x", "speed", G, {})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="has no score"):
        Scores("x", "quality", G, {}, stderr={("l", 0, W4A8): 1.0})


def test_from_dict_rejects_other_formats_and_bad_keys() -> None:
    d = Scores("x", "quality", G, {("l", 0, W4A8): 1.0}).to_dict()
    with pytest.raises(ConfigError, match="version"):
        Scores.from_dict({**d, "version": 99})
    with pytest.raises(ConfigError, match="fqn|group|W4A8"):
        Scores.from_dict({**d, "values": {"l|W4A8": 1.0}})
