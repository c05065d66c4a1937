"""`fake`: the reference simulation. Every supported bit pair, float arithmetic, labelled `simulated`.

Weights are quantized once and held dequantized; activations are rounded onto their grid at each
call. Numerics match integer kernels up to float rounding; speed and memory say nothing about them.
"""

from __future__ import annotations

from torch import Tensor

from quant.backends.base import Backend, LayerKernel, Quantizable, float_forward, float_kernel, register
from quant.config import HIGH_PRECISION, Bits
from quant.layers import LayerKind
from quant.quantizers import fake_quantize_activation, quantize_weight


@register("fake")
class FakeBackend(Backend):
    simulates = True

    def supports(self, bits: Bits, kind: LayerKind, group_size: int | None = None) -> bool:
        return True

    def kernels(
        self, module: Quantizable, kind: LayerKind, bits: set[Bits], group_size: int | None = None
    ) -> dict[Bits, LayerKernel]:
        weights: dict[int, Tensor] = {}  # one dequantized copy per weight bit-width
        for b in bits:
            if b.w not in weights:
                weights[b.w] = (
                    module.weight
                    if b.w == HIGH_PRECISION
                    else quantize_weight(module.weight, b.w, group_size).dequantize(module.weight.dtype)
                )
        return {b: float_kernel(module) if b.is_full_precision else _simulated(module, weights[b.w], b.a)
                for b in bits}


def _simulated(module: Quantizable, weight: Tensor, a_bits: int) -> LayerKernel:
    def run(x: Tensor, scale: float | None) -> Tensor:
        if a_bits != HIGH_PRECISION:
            assert scale is not None, "activation scale missing: calibrate before quantizing activations"
            x = fake_quantize_activation(x, scale, a_bits)
        return float_forward(module, x, weight)

    return LayerKernel("simulated", run, [weight])
