"""Latency tables: every layer timed at every bit-width with the backend's kernels, model left intact."""

from __future__ import annotations

import torch

from quant.calibrate import calibrate_activations
from quant.config import Bits, TimestepGroups
from quant.latency import layer_inputs, measure_latency


def test_latency_table_covers_every_layer_and_bit_width_and_restores_the_model(tiny, tiny_input) -> None:
    groups = TimestepGroups(1)
    ranges = calibrate_activations(tiny, groups, lambda set_step: (set_step(0), tiny(tiny_input)))
    before = tiny(tiny_input)
    table = measure_latency(tiny, lambda: tiny(tiny_input), ["W8A8", "W4A16"], "int8", ranges, repeats=3)
    assert set(table) == {"conv_in", "proj", "ff", "conv_out"}
    for per in table.values():
        assert set(per) == {Bits(8, 8), Bits(4, 16), Bits(16, 16)}
        assert all(0 < s < 1 for s in per.values())
    assert isinstance(tiny.proj, torch.nn.Linear)  # the float layers are back
    assert torch.equal(tiny(tiny_input), before)


def test_layer_inputs_records_every_call(tiny, tiny_input) -> None:
    def twice() -> None:
        tiny(tiny_input)
        tiny(tiny_input[:1])

    seen = layer_inputs(tiny, twice)
    assert [x.shape[0] for x in seen["conv_in"]] == [2, 1]
    assert seen["proj"][0].shape == (2, 64, 32)
