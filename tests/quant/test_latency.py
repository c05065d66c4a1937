"""Latency tables: every layer timed at every bit-width with the backend's kernels, model left intact."""

from __future__ import annotations

import torch

from quant.apply import QuantizedModel, apply
from quant.calibrate import calibrate_activations
from quant.config import BitConfig, Bits, TimestepGroups
from quant.latency import (
    REPLAY_ROUNDS,
    TABLE_MIN_ROUNDS,
    in_context,
    measure_latency,
    side_by_side,
    timed_pairs,
)
from quant.layers import quantizable_modules


def test_latency_table_covers_every_layer_and_bit_width_and_restores_the_model(tiny, tiny_input) -> None:
    groups = TimestepGroups(1)
    ranges = calibrate_activations(tiny, groups, lambda set_step: (set_step(0), tiny(tiny_input)))
    before = tiny(tiny_input)
    table, rest = measure_latency(tiny, lambda: tiny(tiny_input), ["W8A8", "W4A16"], "int8", ranges, repeats=3)
    assert rest >= 0
    assert set(table) == {"conv_in", "proj", "ff", "conv_out"}
    for per in table.values():
        assert set(per) == {Bits(8, 8), Bits(4, 16), Bits(16, 16)}
        assert all(0 < s < 1 for s in per.values())
    assert isinstance(tiny.proj, torch.nn.Linear)  # the float layers are back
    assert torch.equal(tiny(tiny_input), before)


def test_in_context_times_every_layer_inside_whole_calls(tiny, tiny_input) -> None:
    (layers, whole), = in_context(tiny, [lambda: tiny(tiny_input)], repeats=3)
    assert set(layers) == {"conv_in", "proj", "ff", "conv_out"}
    assert all(s > 0 for s in layers.values()) and sum(layers.values()) < whole

def test_in_context_stops_at_the_fewest_rounds_once_the_calls_took_enough_seconds(tiny, tiny_input) -> None:
    """A big model's calls are steady: its windows stop at TABLE_MIN_ROUNDS once they took `enough_s`."""
    calls = [0]

    def run() -> object:
        calls[0] += 1
        return tiny(tiny_input)

    for enough_s, rounds in ((0.0, TABLE_MIN_ROUNDS), (float("inf"), 5)):
        calls[0] = 0
        in_context(tiny, [run], repeats=5, enough_s=enough_s)
        assert calls[0] == 2 * (1 + rounds)  # a warm-up, then each round clocked and plain


class _BigAndTiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.big = torch.nn.Linear(2048, 2048)  # x 256 tokens: 1.1 GMAC a call
        self.tiny = torch.nn.Linear(16, 16)  # x 4 tokens: 1 kMAC

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the big layer's work (the tiny one is timed apart)
        return self.big(x)


def test_latency_table_measures_the_work() -> None:
    """The table must rank real work: a GEMM of a million times the MACs takes longer at the same bits,
    and the int8 W8A8 kernel beats the float forward on it. Measured (1 thread, CPU time): big/tiny
    52-98x at W8A8 and ~3500x in float; float/W8A8 on the big layer 4.6-5.2x on AMD EPYC (oneDNN int8 is
    ~2.8x faster than fp32 on Intel Xeon, bench/kernels.py: 3.4-4.8x for linear layers here)."""
    torch.manual_seed(0)
    model = _BigAndTiny().eval()
    xb, xt = torch.randn(256, 2048), torch.randn(4, 16)

    def run() -> None:
        model.big(xb)
        model.tiny(xt)

    ranges = calibrate_activations(model, TimestepGroups(1), lambda set_step: (set_step(0), run()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thread_time counts this thread only: keep every kernel's work on it
    try:
        table, _ = measure_latency(model, run, ["W8A8"], "int8", ranges, repeats=3)
    finally:
        torch.set_num_threads(threads)
    w8a8, full = Bits(8, 8), Bits(16, 16)
    for b in (w8a8, full):
        assert table["big"][b] > 10 * table["tiny"][b], (b, table)
    assert table["big"][w8a8] < table["big"][full] / 1.5, table


def _big_w8a8() -> tuple[_BigAndTiny, torch.Tensor, QuantizedModel]:
    torch.manual_seed(0)
    model = _BigAndTiny().eval()
    x = torch.randn(256, 2048)
    groups = TimestepGroups(2, [0, 1])
    ranges = calibrate_activations(model, groups, lambda set_step: [(set_step(i), model(x)) for i in range(2)])
    config = BitConfig(groups, {"big": "W8A8", "_default": "W16A16"})
    return model, x, apply(model, config, "int8", ranges)


def test_the_float_reference_runs_the_original_layers_of_the_quantized_model() -> None:
    model, x, qm = _big_w8a8()
    with torch.no_grad():
        qm.set_step(0)
        quantized_out = qm.model(x)
        with qm.float_reference():
            reference_out = qm.model(x)
        qm.restore()
        expected = model(x)
    assert torch.equal(reference_out, expected)  # exactly the float layer, not a re-quantized one
    assert not torch.equal(quantized_out, expected)


def test_side_by_side_replays_one_call_per_timestep_group_quantized_then_float() -> None:
    """The call runs at the first step of each timestep group (both groups run quantized), each quantized
    run followed by a float one, after a warm-up of each; on a GEMM of 1 GMAC the int8 kernel beats the
    float layer timed beside it (bench/kernels.py: 2.8-5x)."""
    model, x, qm = _big_w8a8()
    layer = qm.layers["big"]
    float_calls: list[int] = []
    handle = layer.original[0].register_forward_hook(lambda *_: float_calls.append(1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        layer.ran.clear()
        quantized_s, float_s = side_by_side(qm, {"x": x}, TimestepGroups(2, [0, 1]))
    finally:
        torch.set_num_threads(threads)
        handle.remove()
    rounds = (len(float_calls) - 1) // 2
    assert 1 <= rounds <= REPLAY_ROUNDS and len(float_calls) == 2 * rounds + 1  # a float call per group and round
    assert set(layer.ran) == {0, 1}  # replayed at each group's step
    assert 0 < quantized_s < float_s / 1.3, (quantized_s, float_s)


def test_a_pair_whose_kernels_were_all_timed_is_not_timed_again(tiny, tiny_input) -> None:
    """W4A8 and W8A8 run one int8 kernel on int8 codes in every layer: the second costs the table no call."""
    ranges = calibrate_activations(tiny, TimestepGroups(1), lambda set_step: (set_step(0), tiny(tiny_input)))
    calls = {"W8A8": 0, "W8A8,W4A8": 0}
    for bits in calls:
        def run(bits: str = bits) -> object:
            calls[bits] += 1
            return tiny(tiny_input)
        table, _ = measure_latency(tiny, run, bits.split(","), "int8", ranges, repeats=2)
    assert calls["W8A8"] == calls["W8A8,W4A8"] > 0
    assert table["proj"][Bits(4, 8)] == table["proj"][Bits(8, 8)]


def test_pairs_that_run_the_same_kernel_on_the_same_tensors_share_one_timing(tiny, tiny_input) -> None:
    """W4A8 and W8A8 both run the int8 kernel on int8 codes: one timing, so noise cannot rank them apart;
    W4A16 and W8A16 on linears hold int4-packed and int8 weights: timed apart."""
    ranges = calibrate_activations(tiny, TimestepGroups(1), lambda set_step: (set_step(0), tiny(tiny_input)))
    table, _ = measure_latency(tiny, lambda: tiny(tiny_input), ["W8A8", "W4A8", "W8A16", "W4A16"], "int8", ranges,
                            repeats=2)
    assert table["proj"][Bits(4, 8)] == table["proj"][Bits(8, 8)]
    assert table["proj"][Bits(4, 16)] != table["proj"][Bits(8, 16)]


def test_timed_pairs_says_which_pairs_the_table_times(tiny, tiny_input) -> None:
    """What the plan prices: judged on a layer of each kind and shape, the pairs `measure_latency` times
    (each: 4 calls a round, beside the float model; no float pass of its own)."""
    bits = ["W8A8", "W6A8", "W4A8", "W8A16", "W4A16"]
    ranges = calibrate_activations(tiny, TimestepGroups(1), lambda set_step: (set_step(0), tiny(tiny_input)))
    calls = [0]

    def run() -> object:
        calls[0] += 1
        return tiny(tiny_input)

    measure_latency(tiny, run, bits, "int8", ranges, repeats=1)
    shapes = {(kind, tuple(m.weight.shape)): (m, kind) for m, kind in quantizable_modules(tiny).values()}
    timed = timed_pairs(list(shapes.values()), bits)
    assert sum(b.a == 8 for b in timed) == 1  # W4A8, W6A8, W8A8: one int8 kernel on int8 codes, timed once
    assert calls[0] == 4 * 2 * len(timed) and not any(b.is_full_precision for b in timed)
    assert timed_pairs(list(shapes.values()), ["W16A16"]) == [Bits(16, 16)]  # no pair: the float model alone
