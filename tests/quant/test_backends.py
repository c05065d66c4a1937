"""Every registered backend through the shipped conformance suite, and the int8 backend's own checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quant.backends.base import Backend, backend_names, get_backend
from quant.backends.testing import BackendSuite, layer_and_input
from quant.config import Bits
from quant.errors import UnknownNameError
from quant.quantizers import activation_scale


class TestEveryRegisteredBackend(BackendSuite):
    @pytest.fixture(params=backend_names())
    def backend(self, request: pytest.FixtureRequest) -> Backend:
        return get_backend(request.param)


def test_unknown_backend_lists_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="valid backends: fake, int8"):
        get_backend("tensorrt")


def test_int8_backend_runs_integer_kernels_on_integer_weights() -> None:
    backend = get_backend("int8")
    module, x = layer_and_input("linear")
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
    # int4 packing needs out_features a multiple of 16 (24 crashed `_convert_weight_to_int4pack_cpu`)
    odd = backend.kernels(nn.Linear(64, 24), "linear", {Bits(4, 16)})[Bits(4, 16)]
    assert odd.label == "dequantize-float" and odd.run(torch.randn(2, 64), None).shape == (2, 24)
    assert not backend.supports(Bits(16, 8), "linear")
    assert not backend.supports(Bits(8, 8), "linear", group_size=32)


def test_weight_only_kernels_take_strided_inputs() -> None:
    """Attention and transposed activations reach linear layers as non-contiguous views (seen on a
    diffusers UNet2DModel: `_weight_int4pack_mm_cpu : expect A to be contiguous`)."""
    import torch
    from torch import nn

    from quant.backends.base import get_backend
    from quant.config import Bits

    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    x = torch.randn(64, 5).t()  # a (5, 64) view with strides (1, 5)
    assert not x.is_contiguous()
    kernels = get_backend("int8").kernels(layer, "linear", {Bits(4, 16), Bits(8, 16)})
    for bits, kernel in kernels.items():
        assert kernel.label == "weight-only-kernel", bits
        out = kernel.run(x, None)
        assert out.shape == (5, 32) and torch.allclose(out, layer(x), atol=0.3), bits
