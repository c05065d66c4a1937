"""`int8`: real integer kernels on the CPU (oneDNN through PyTorch's `onednn::` ops).

- W<=8 with A<=8, Linear and Conv2d: int8 GEMM / conv (`onednn::qlinear_pointwise`,
  `onednn::qconv_pointwise`). Weights of any width <= 8 are codes on their b-bit grid held as
  int8, prepacked once; activations are rounded per tensor onto their a-bit grid and fed as uint8
  with zero point 128 (oneDNN's fast input type). The kernel dequantizes into the input's dtype.
- Linear W8A16: `aten._weight_int8pack_mm` (in_features a multiple of 16: other widths crash it);
  Linear W4A16: `aten._weight_int4pack_mm_for_cpu` (in_features a multiple of 32, out_features of 16) (weight-only
  kernels: real integer weights, float activations; they save memory, not time).
- Other W<16 with A16: integer codes held, expanded to float at every call (`dequantize-float`).
- W16 with A<16 is not offered: no CPU kernel takes float weights with integer activations.

Group-wise weight scales are not supported by these kernels (per-output-channel only).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from quant.backends.base import Backend, LayerKernel, Quantizable, float_kernel, register, weightless_op
from quant.config import HIGH_PRECISION, Bits
from quant.errors import UnsupportedBits
from quant.layers import LayerKind
from quant.quantizers import ACT_ZERO_POINT, QuantizedWeight, activation_codes_u8, quantize_weight

_onednn: Any = torch.ops.onednn  # PyTorch's oneDNN int8 ops (the x86 PT2E quantization kernels)
_aten: Any = torch.ops.aten
_INT4_GROUP_SIZES = (256, 128, 64, 32)  # what _weight_int4pack_mm_for_cpu accepts


@register("int8")
class Int8Backend(Backend):
    def supports(self, bits: Bits, kind: LayerKind, group_size: int | None = None) -> bool:
        if bits.is_full_precision:
            return True
        if group_size is not None or bits.w == HIGH_PRECISION:
            return False
        return kind in ("linear", "conv")

    def kernels(
        self, module: Quantizable, kind: LayerKind, bits: set[Bits], group_size: int | None = None
    ) -> dict[Bits, LayerKernel]:
        bad = [b for b in bits if not self.supports(b, kind, group_size)]
        if bad:
            raise UnsupportedBits(f"int8 backend cannot run {bad[0]} on a {kind} layer (group_size={group_size})")
        codes = {b.w: quantize_weight(module.weight, b.w) for b in bits if b.w != HIGH_PRECISION}
        prepacked: dict[int, Tensor] = {}
        out: dict[Bits, LayerKernel] = {}
        for b in sorted(bits):
            if b.is_full_precision:
                out[b] = float_kernel(module)
            elif b.a != HIGH_PRECISION:
                if b.w not in prepacked:
                    prepacked[b.w] = _prepack(module, codes[b.w])
                out[b] = _int8_kernel(module, codes[b.w], prepacked[b.w], b.a)
            else:
                out[b] = _weight_only_kernel(module, kind, codes[b.w])
        return out


def _prepack(module: Quantizable, qw: QuantizedWeight) -> Tensor:
    if isinstance(module, nn.Conv2d):
        # The activation scale passed here only seeds oneDNN's packing; each call passes its own.
        stride, padding, dilation = (list(v) for v in (module.stride, module.padding, module.dilation))
        return _onednn.qconv_prepack(
            qw.codes, qw.per_channel_scales(), 1.0, ACT_ZERO_POINT, stride, padding, dilation, module.groups, None
        )
    return _onednn.qlinear_prepack(qw.codes, None)


def _int8_kernel(module: Quantizable, qw: QuantizedWeight, packed: Tensor, a_bits: int) -> LayerKernel:
    w_scales = qw.per_channel_scales().contiguous()
    w_zeros = torch.zeros_like(w_scales, dtype=torch.long)
    bias = module.bias.detach().float() if module.bias is not None else None
    conv_args: tuple[Any, ...] | None = None
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise ValueError("int8 conv kernel needs numeric zero padding")
        conv_args = (list(module.stride), list(module.padding), list(module.dilation), module.groups)

    def run(x: Tensor, scale: float | None) -> Tensor:
        assert scale is not None, "activation scale missing: calibrate before quantizing activations"
        xq = activation_codes_u8(x, scale, a_bits)
        if conv_args is not None:
            return _onednn.qconv_pointwise(
                xq, scale, ACT_ZERO_POINT, packed, w_scales, w_zeros, bias, *conv_args,
                1.0, 0, x.dtype, "none", [], None,
            )
        return _onednn.qlinear_pointwise(
            xq, scale, ACT_ZERO_POINT, packed, w_scales, w_zeros, bias, 1.0, 0, x.dtype, "none", [], ""
        )

    return LayerKernel("int8-kernel", run, [packed, w_scales, *([] if bias is None else [bias])])


def _weight_only_kernel(module: Quantizable, kind: LayerKind, qw: QuantizedWeight) -> LayerKernel:
    out_features, in_features = qw.codes.shape[0], qw.codes[0].numel()
    if kind == "linear" and qw.bits == 8 and in_features % 16 == 0:  # other widths crash the kernel (torch 2.13)
        return _int8pack_kernel(module, qw)
    # the int4 packing needs out_features a multiple of 16 and in_features of a group size (torch 2.13)
    if kind == "linear" and qw.bits == 4 and out_features % 16 == 0 and any(in_features % g == 0 for g in _INT4_GROUP_SIZES):
        return _int4pack_kernel(module, qw)
    # No integer kernel for this width: keep the codes, expand them at each call.
    scales = qw.per_channel_scales()
    codes = qw.codes
    op, held = weightless_op(module)

    def run(x: Tensor, _scale: float | None) -> Tensor:
        return op(x, codes.to(x.dtype) * scales.to(x.dtype).view(-1, *([1] * (codes.dim() - 1))))

    return LayerKernel("dequantize-float", run, [codes, scales, *held])


def _int8pack_kernel(module: Quantizable, qw: QuantizedWeight) -> LayerKernel:
    codes = qw.codes.contiguous()
    scales = qw.per_channel_scales().to(torch.bfloat16)
    bias = module.bias.detach() if module.bias is not None else None

    def run(x: Tensor, _scale: float | None) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()  # the kernel refuses strided inputs
        y = _aten._weight_int8pack_mm(x2, codes, scales).reshape(*x.shape[:-1], -1).to(x.dtype)
        return y + bias.to(x.dtype) if bias is not None else y

    return LayerKernel("weight-only-kernel", run, [codes, scales, *([] if bias is None else [bias])])


def _int4pack_kernel(module: Quantizable, qw: QuantizedWeight) -> LayerKernel:
    # The kernel computes (q - 8) * scale + zero per group of inputs with q in 0..15: symmetric
    # per-channel codes map onto it with q = code + 8, zero = 0, and the channel scale repeated.
    out_features, in_features = qw.codes.shape
    group = next(g for g in _INT4_GROUP_SIZES if in_features % g == 0)
    unsigned = (qw.codes.to(torch.int32) + 8).contiguous()
    packed = _aten._convert_weight_to_int4pack_for_cpu(unsigned, 1)
    scale = qw.per_channel_scales().to(torch.bfloat16)
    scales_zeros = torch.zeros(in_features // group, out_features, 2, dtype=torch.bfloat16)
    scales_zeros[..., 0] = scale
    bias = module.bias.detach() if module.bias is not None else None

    def run(x: Tensor, _scale: float | None) -> Tensor:
        x2 = x.reshape(-1, in_features).to(torch.bfloat16).contiguous()  # the kernel refuses strided inputs
        y = _aten._weight_int4pack_mm_for_cpu(x2, packed, group, scales_zeros)
        y = y.reshape(*x.shape[:-1], out_features).to(x.dtype)
        return y + bias.to(x.dtype) if bias is not None else y

    return LayerKernel("weight-only-kernel", run, [packed, scales_zeros, *([] if bias is None else [bias])])
