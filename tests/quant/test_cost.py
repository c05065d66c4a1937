from __future__ import annotations

import pytest

from quant.budget import Budget, Limit
from quant.config import BitConfig, ConfigError, TimestepGroups
from quant.cost import TargetTables, costs, full_precision_costs, packed_weight_bytes
from quant.layers import Layer

LAYERS = [
    Layer("conv_in", "conv", (320, 4, 3, 3), 11520, 11520 * 4096),
    Layer("attn.to_q", "linear", (320, 320), 102400, 102400 * 4096),
    Layer("ff.proj", "linear", (1280, 320), 409600, 409600 * 4096),
]
GROUPS = TimestepGroups.from_spans([(0, 4), (5, 19)])  # 5 and 15 steps


def test_packed_bytes_are_bits_over_eight_plus_scales() -> None:
    ff = LAYERS[2]
    assert packed_weight_bytes(ff, 4) == 409600 // 2 + 1280 * 4
    assert packed_weight_bytes(ff, 3) == 409600 * 3 // 8 + 1280 * 4
    assert packed_weight_bytes(ff, 4, group_size=64) == 409600 // 2 + 409600 // 64 * 4
    assert packed_weight_bytes(ff, 16) == 409600 * 2


def test_step_weighted_bits_and_bops() -> None:
    cfg = BitConfig(GROUPS, {"_default": ["W8A8", "W4A8"]})
    c = costs(cfg, LAYERS)
    assert c.avg_weight_bits == pytest.approx(8 * 5 / 20 + 4 * 15 / 20)
    macs = sum(layer.macs for layer in LAYERS)
    assert c.bops == pytest.approx(macs * (0.25 * 64 + 0.75 * 32))
    fp = full_precision_costs(LAYERS)
    assert fp.avg_weight_bits == 16 and fp.bops == pytest.approx(macs * 256)


def test_every_distinct_weight_precision_is_a_resident_copy() -> None:
    per_step = BitConfig(GROUPS, {"_default": ["W8A8", "W4A8"]})
    single = BitConfig(GROUPS, {"_default": "W8A8"})
    both = sum(packed_weight_bytes(layer, 8) + packed_weight_bytes(layer, 4) for layer in LAYERS)
    assert costs(per_step, LAYERS).resident_weight_bytes == both
    assert costs(per_step, LAYERS).weight_bytes == both
    assert costs(single, LAYERS).resident_weight_bytes == sum(packed_weight_bytes(la, 8) for la in LAYERS)


def _tables() -> TargetTables:
    from quant.config import Bits

    return TargetTables(latency={la.fqn: {Bits(8, 8): 1.0, Bits(4, 8): 0.5} for la in LAYERS},
                        memory={la.fqn: {Bits(8, 8): 100, Bits(4, 8): 100} for la in LAYERS}, rest_latency_s=0.2, rest_bytes=7,
                        float_format="bf16", float_latency_s=4.0, float_bytes=1000)


def test_latency_and_memory_from_the_targets_measured_tables() -> None:
    tables = _tables()
    cfg = BitConfig(GROUPS, {"_default": ["W8A8", "W4A8"]})
    c = costs(cfg, LAYERS, tables)
    assert c.latency_s == pytest.approx(0.2 + 3 * (0.25 * 1.0 + 0.75 * 0.5))  # the rest of the call + the layers
    # two weight precisions are two resident copies, held as the kernels hold them (W4 in int8 containers:
    # the same bytes as W8), plus every parameter outside the quantizable layers
    assert c.resident_weight_bytes == 7 + 3 * (100 + 100)
    assert c.weight_bytes == costs(cfg, LAYERS).weight_bytes  # size at rest stays packed
    # relative budgets are relative to the fastest float format, measured
    ref = full_precision_costs(LAYERS, tables=tables)
    assert (ref.latency_s, ref.resident_weight_bytes) == (4.0, 1000)
    assert Budget.parse("memory=0.5x,latency=0.6x").violations(c, ref) == ["memory 607 > 500 (memory=0.5x)"]
    assert TargetTables.from_dict(tables.to_dict()) == tables
    with pytest.raises(KeyError, match="no entry for conv_in at W16"):
        costs(BitConfig(GROUPS), LAYERS, tables)


def test_budget_parsing_and_violations() -> None:
    budget = Budget.parse(["wbits=4.5", "size=0.3x,bops=0.2x"])
    assert [str(lim) for lim in budget.limits] == ["wbits=4.5", "size=0.3x", "bops=0.2x"]
    assert Limit.parse("memory=1.5GB").value == 1.5e9
    ref = full_precision_costs(LAYERS)
    w4 = costs(BitConfig(GROUPS, {"_default": "W4A8"}), LAYERS)
    w8 = costs(BitConfig(GROUPS, {"_default": "W8A8"}), LAYERS)
    assert budget.violations(w4, ref) == []
    bad = budget.violations(w8, ref)
    assert [v.split()[0] for v in bad] == ["wbits", "size", "bops"]  # W8A8: 0.5x size, 0.25x bops
    for text, msg in [("wbits", "METRIC=VALUE"), ("speed=2", "unknown budget metric"),
                      ("size=12parsecs", "unknown unit"), ("wbits=-1", "must be positive"),
                      ("wbits=0.5x", "ratio-free")]:
        with pytest.raises(ConfigError, match=msg):
            Budget.parse(text)
    with pytest.raises(ConfigError, match="given twice"):
        Budget.parse("wbits=4,wbits=5")
