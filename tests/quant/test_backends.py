"""Conformance suite: every registered backend is run through the same contract checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quant.backends.base import backend_names, get_backend
from quant.config import ACTIVATION_BITS, WEIGHT_BITS, Bits
from quant.quantizers import activation_scale

ALL_PAIRS = [Bits(w, a) for w in WEIGHT_BITS for a in ACTIVATION_BITS]
LABELS = {"int8-kernel", "weight-only-kernel", "dequantize-float", "simulated", "float"}


def _layers() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    return {
        "linear": (nn.Linear(64, 48), torch.randn(3, 10, 64)),
        "conv": (nn.Conv2d(16, 24, 3, padding=1, stride=2), torch.randn(2, 16, 9, 9)),
    }


@pytest.mark.parametrize("name", backend_names())
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_backend_contract(name: str, kind: str) -> None:
    backend = get_backend(name)
    module, x = _layers()[kind]
    pairs = {b for b in ALL_PAIRS if backend.supports(b, kind)}  # type: ignore[arg-type]
    assert Bits(16, 16) in pairs and Bits(8, 8) in pairs
    ref_kernels = get_backend("fake").kernels(module, kind, pairs)  # type: ignore[arg-type]
    kernels = backend.kernels(module, kind, pairs)  # type: ignore[arg-type]
    assert set(kernels) == pairs
    before = {k: v.clone() for k, v in module.state_dict().items()}
    for b, kernel in kernels.items():
        assert kernel.label in LABELS
        assert (kernel.label == "float") == b.is_full_precision
        scale = None if b.a == 16 else activation_scale(float(x.abs().max()), b.a)
        with torch.no_grad():
            y = kernel.run(x, scale)
            ref = ref_kernels[b].run(x, scale)
        assert y.shape == ref.shape and y.dtype == x.dtype
        assert torch.isfinite(y).all()
        # Same numerics as the reference simulation, up to float rounding (bf16 in weight-only kernels).
        tol = 2e-2 if kernel.label in ("weight-only-kernel", "dequantize-float") else 1e-4
        assert float((y - ref).norm() / ref.norm()) < tol, (b, kernel.label)
    for k, v in module.state_dict().items():  # the float module is never modified
        assert torch.equal(v, before[k])


def test_unknown_backend_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid backends: fake, int8"):
        get_backend("tensorrt")


def test_int8_backend_runs_integer_kernels_on_integer_weights() -> None:
    backend = get_backend("int8")
    module, x = _layers()["linear"]
    kernels = backend.kernels(module, "linear", {Bits(4, 8), Bits(8, 8), Bits(8, 16), Bits(4, 16), Bits(6, 16)})
    assert kernels[Bits(8, 8)].label == "int8-kernel"
    assert kernels[Bits(4, 8)].label == "int8-kernel"
    assert kernels[Bits(8, 16)].label == "weight-only-kernel"
    assert kernels[Bits(4, 16)].label == "weight-only-kernel"
    assert kernels[Bits(6, 16)].label == "dequantize-float"
    for b in (Bits(8, 8), Bits(4, 8), Bits(8, 16), Bits(6, 16)):
        assert kernels[b].held[0].dtype == torch.int8  # integer codes, not float weights
    assert kernels[Bits(4, 16)].held[0].dtype == torch.uint8  # two 4-bit codes per byte
    # W4 codes held for the int8 kernel really sit on the 4-bit grid: the kernel's output equals a
    # float GEMM with the dequantized 4-bit weight, and differs from the W8 kernel's.
    scale = activation_scale(float(x.abs().max()), 8)
    assert not torch.allclose(kernels[Bits(4, 8)].run(x, scale), kernels[Bits(8, 8)].run(x, scale))
    # Widths the weight-only kernels cannot take (W8: in_features % 16, crashes natively) fall back.
    narrow = backend.kernels(nn.Linear(8, 4), "linear", {Bits(8, 16), Bits(4, 16)})
    assert {k.label for k in narrow.values()} == {"dequantize-float"}
    assert torch.isfinite(narrow[Bits(8, 16)].run(torch.randn(2, 8), None)).all()
    assert not backend.supports(Bits(16, 8), "linear")
    assert not backend.supports(Bits(8, 8), "linear", group_size=32)
