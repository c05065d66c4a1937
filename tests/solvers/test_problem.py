from __future__ import annotations

import pytest

from quant.config import Bits, ConfigError, TimestepGroups
from quant.layers import Layer
from quant.scores import Scores
from solvers.problem import Problem, remap_scores
from tests.solvers.conftest import BITS, GROUPS, make_scores


def problem(layers: list[Layer], scores: Scores, **kw: object) -> Problem:
    return Problem(layers, GROUPS, scores, kw.pop("budget", "wbits=6"), candidates=BITS, **kw)  # type: ignore[arg-type]


def test_units_candidates_and_relative_caps(layers: list[Layer], scores: Scores) -> None:
    p = problem(layers, scores, budget="bops=0.25x")
    assert len(p.units) == len(layers)
    assert p.caps["bops"] == pytest.approx(0.25 * p.reference.bops)
    assert all(c == tuple(sorted(BITS)) for u in p.units for c in u.candidates)


def test_default_candidates_come_from_the_backend(layers: list[Layer]) -> None:
    s = make_scores(layers, bits=tuple(Bits(w, a) for w in (2, 3, 4, 5, 6, 8, 16) for a in (4, 6, 8, 16)))
    p = Problem(layers, GROUPS, s, "wbits=6", backend="int8")
    cands = p.units[0].candidates[0]
    assert Bits(16, 16) in cands and Bits(16, 8) not in cands and Bits(4, 8) in cands  # int8: no W16A8
    with pytest.raises(ConfigError, match="cannot run W16A8"):
        Problem(layers, GROUPS, s, "wbits=6", backend="int8", candidates=["W16A8", "W8A8"])


def test_pin_errors_name_the_fix(layers: list[Layer], scores: Scores) -> None:
    with pytest.raises(ConfigError, match="unknown layer 'conv_inn' \\(did you mean 'conv_in'\\?\\)"):
        problem(layers, scores, pins={"conv_inn": "W8A8"})
    with pytest.raises(ConfigError, match="W6A8, which is not a candidate.*add W6A8 to the candidates"):
        problem(layers, scores, pins={"conv_in": "W6A8"})
    with pytest.raises(ConfigError, match="matches no layer"):
        problem(layers, scores, pins={"re:nothing.*": "W8A8"})
    with pytest.raises(ConfigError, match="pinned to different bits"):
        problem(layers, scores, pins={"conv_in": "W8A8", "conv_out": "W4A8"}, ties=[["conv_in", "conv_out"]])


def test_pins_exact_beats_regex_and_per_group(layers: list[Layer], scores: Scores) -> None:
    p = problem(layers, scores, pins={"re:conv_.*": "W8A8", "conv_out": ["W8A16", "W4A16"]})
    by = {u.fqns[0]: u.candidates for u in p.units}
    assert by["conv_in"] == ((Bits(8, 8),), (Bits(8, 8),))
    assert by["conv_out"] == ((Bits(8, 16),), (Bits(4, 16),))


def test_regex_tie_with_capture_group_ties_per_block(layers: list[Layer], scores: Scores) -> None:
    p = problem(layers, scores, ties=[r"re:(blocks\.\d+)\.attn1\.to_[qkv]"])
    tied = sorted(u.fqns for u in p.units if len(u.fqns) > 1)
    assert tied == [tuple(f"blocks.{i}.attn1.to_{c}" for c in "qkv") for i in range(2)]


def test_scores_for_other_groups_are_rejected_and_remap_keeps_totals(layers: list[Layer], scores: Scores) -> None:
    other = TimestepGroups.uniform(20, 4)
    with pytest.raises(ConfigError, match="remap"):
        Problem(layers, other, scores, "wbits=6", candidates=BITS)
    moved = remap_scores(scores, other)
    b = Bits(4, 8)
    before = sum(scores.get("conv_in", g, b) for g in range(2))
    after = sum(moved.get("conv_in", g, b) for g in range(4))
    assert after == pytest.approx(before)
    Problem(layers, other, moved, "wbits=6", candidates=BITS)  # valid now


def test_metric_weights_and_constraints_are_checked(layers: list[Layer], scores: Scores) -> None:
    with pytest.raises(ConfigError, match="no Scores for metric 'alignment'"):
        problem(layers, scores, max_degradation={"alignment": 1.0})
    with pytest.raises(ConfigError, match="needs the target.s tables"):
        problem(layers, scores, budget="latency=0.5x")
