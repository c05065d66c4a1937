from __future__ import annotations

import pytest
import torch

from quant.quantizers import pack, qmax, quantize_weight, unpack


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_per_channel_8bit_error_below_one_percent_and_decreasing_with_bits() -> None:
    w = torch.randn(320, 640, generator=torch.Generator().manual_seed(0))
    errors = {b: _rel_err(quantize_weight(w, b).dequantize(), w) for b in (2, 3, 4, 5, 6, 8)}
    assert errors[8] < 0.01
    bits = sorted(errors)
    assert all(errors[lo] > errors[hi] for lo, hi in zip(bits, bits[1:], strict=False)), errors


def test_codes_are_integers_on_the_grid() -> None:
    w = torch.randn(64, 8, 3, 3)
    for b in (2, 4, 8):
        q = quantize_weight(w, b)
        assert q.codes.dtype == torch.int8
        assert int(q.codes.abs().max()) == qmax(b)  # absmax scaling reaches the grid's edge
        assert q.scales.shape == (64, 1)


def test_group_wise_is_finer_than_per_channel() -> None:
    w = torch.randn(128, 512) * torch.logspace(-2, 1, 512)  # input channels with very different ranges
    per_channel = _rel_err(quantize_weight(w, 4).dequantize(), w)
    grouped = quantize_weight(w, 4, group_size=64)
    assert grouped.scales.shape == (128, 8)
    assert _rel_err(grouped.dequantize(), w) < per_channel
    with pytest.raises(ValueError, match="does not divide"):
        quantize_weight(w, 4, group_size=100)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_pack_round_trip_and_bytes(bits: int) -> None:
    w = torch.randn(96, 160)
    q = quantize_weight(w, bits)
    p = pack(q)
    assert p.data.dtype == torch.uint8
    assert p.data.numel() == -(-w.numel() * bits // 8)  # exactly `bits` bits per value
    back = unpack(p)
    assert torch.equal(back.codes, q.codes) and torch.equal(back.scales, q.scales)


def test_4bit_packed_with_scales_is_at_most_a_seventh_of_fp32() -> None:
    w = torch.randn(1280, 1280)
    for group_size in (None, 128):
        p = pack(quantize_weight(w, 4, group_size))
        assert p.nbytes <= w.numel() * 4 / 7, (group_size, p.nbytes)
