from __future__ import annotations

import pytest

from quant.budget import Budget
from quant.config import ConfigError
from quant.cost import Costs
from search.front import (
    FrontPoint,
    best_within,
    default_objectives,
    dominated_by,
    pareto,
    prediction_error,
)


def point(cid: int, psnr: float, latency: float | None, memory: float, origin: str = "ilp",
          predicted: float | None = None) -> FrontPoint:
    costs = {"wbits": 8.0, "memory": memory, "memory_predicted": memory,
             **({"latency": latency} if latency is not None else {}),
             **({"latency_predicted": predicted} if predicted is not None else {})}
    return FrontPoint(cid, origin, {"psnr_db": psnr}, costs, True, {})


REFERENCE = Costs(16.0, 2_000_000, 4_000_000, 1e9, 0.010)  # fastest float: 4 MB, 10 ms per call


def test_measured_studies_rank_quality_against_measured_latency_and_memory() -> None:
    assert default_objectives([point(1, 30, 12, 2)]) == ("psnr_db", "latency", "memory")
    assert default_objectives([point(1, 30, None, 2)]) == ("psnr_db", "wbits")  # a run that measured nothing


def test_dominance_and_the_front_read_directions_from_the_catalogue() -> None:
    best, worse, faster = point(1, 32, 12, 2), point(2, 30, 13, 2, "uniform"), point(3, 29, 9, 2, "uniform")
    objectives = ("psnr_db", "latency", "memory")
    assert dominated_by(worse, [best, faster], objectives) == [best]  # higher PSNR is better, lower latency
    assert dominated_by(best, [worse, faster], objectives) == []
    assert {p.candidate_id for p in pareto([best, worse, faster], objectives)} == {1, 3}


def test_best_within_a_budget_uses_measured_costs_and_relative_limits_against_the_fastest_float() -> None:
    inside, too_big, too_slow = point(1, 30, 11, 1.9), point(2, 35, 11, 2.1), point(3, 36, 16, 1.0)
    budget = Budget.parse("memory=0.5x,latency=1.5x")  # <= 2 MB and <= 15 ms
    assert best_within([inside, too_big, too_slow], budget, REFERENCE).candidate_id == 1
    with pytest.raises(ConfigError, match="meets the budget"):
        best_within([too_big, too_slow], budget, REFERENCE)


def test_prediction_error_is_relative_to_the_prediction() -> None:
    assert prediction_error(point(1, 30, 12, 2, predicted=10)) == pytest.approx(0.2)
    assert prediction_error(point(1, 30, 12, 2)) is None


def test_measured_latency_is_the_side_by_side_ratio_on_the_tables_clock() -> None:
    from dataclasses import replace
    from datetime import datetime, timezone

    from quant.config import Bits
    from quant.cost import TargetTables
    from search.front import measured_latency
    from storage import EvaluationInfo

    now = datetime.now(timezone.utc)
    ev = EvaluationInfo(1, 1, 1, "cheap", {"psnr_db": 30.0}, 0.030, 0.040, 10, {"int8-kernel": 4}, 4, 0, "int8",
                        "host", True, None, 1.0, now, {}, "ilp")
    tables = TargetTables({"ff": {Bits(16, 16): 0.008}}, {"ff": {Bits(16, 16): 10}}, 0.002, 0, "bf16", 0.006, 10,
                          loaded_latency_s=0.012)
    # timed on a loaded machine: 30 ms quantized beside 40 ms float -> 0.75 x the tables' 12 ms fp32 call
    assert measured_latency(ev, tables) == pytest.approx(0.009)
    assert measured_latency(replace(ev, float_latency_s=None), tables) == pytest.approx(0.030)  # timed alone
    assert measured_latency(ev, None) == pytest.approx(0.030)
    # tables stored before loaded_latency_s: their fp32 call is the rest plus the layers' float entries
    assert measured_latency(ev, replace(tables, loaded_latency_s=None)) == pytest.approx(0.75 * 0.010)
