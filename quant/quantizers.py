"""Quantizers: symmetric integer grids for weights (per output channel or group-wise) and
activations (per tensor, from calibrated ranges), and bit-packing of low-bit weights.

A b-bit symmetric grid holds the integers -(2^(b-1)-1) .. 2^(b-1)-1 (the most negative code is
left unused so the grid is symmetric and zero is exact). Values on any grid of <= 8 bits are held
as int8 for the kernels, and packed b bits per value for storage.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def qmax(bits: int) -> int:
    """Largest code of the symmetric `bits`-bit grid."""
    if not 2 <= bits <= 8:
        raise ValueError(f"integer grids are 2..8 bits, got {bits}")
    return 2 ** (bits - 1) - 1


@dataclass(frozen=True)
class QuantizedWeight:
    """Integer codes (int8 tensor, the weight's shape) and float32 scales.

    `scales` has shape [out, 1] (per output channel) or [out, in_flat // group_size] (group-wise,
    along the flattened input dimension in_channels*kh*kw).
    """

    codes: Tensor
    scales: Tensor
    bits: int
    group_size: int | None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        out = self.codes.shape[0]
        flat = self.codes.reshape(out, -1).to(torch.float32)
        if self.group_size is None:
            w = flat * self.scales
        else:
            w = (flat.reshape(out, -1, self.group_size) * self.scales.unsqueeze(-1)).reshape(out, -1)
        return w.reshape(self.codes.shape).to(dtype)

    def per_channel_scales(self) -> Tensor:
        """[out] scales; only defined for per-output-channel quantization."""
        if self.group_size is not None:
            raise ValueError("group-wise weights have no single per-channel scale")
        return self.scales.reshape(-1)


def quantize_weight(weight: Tensor, bits: int, group_size: int | None = None) -> QuantizedWeight:
    """Round-to-nearest symmetric quantization of a Linear/Conv weight (absmax scales)."""
    out = weight.shape[0]
    flat = weight.detach().reshape(out, -1).to(torch.float32)
    q = qmax(bits)
    if group_size is None:
        absmax = flat.abs().amax(dim=1, keepdim=True)
        scales = absmax.clamp_min(1e-12) / q
        codes = torch.round(flat / scales)
    else:
        if flat.shape[1] % group_size:
            raise ValueError(
                f"group_size {group_size} does not divide the layer's input size {flat.shape[1]}; "
                "choose a divisor or use per-channel scales (group_size=None)"
            )
        grouped = flat.reshape(out, -1, group_size)
        scales = grouped.abs().amax(dim=2).clamp_min(1e-12) / q
        codes = torch.round(grouped / scales.unsqueeze(-1)).reshape(out, -1)
    codes = codes.clamp_(-q, q).to(torch.int8).reshape(weight.shape)
    return QuantizedWeight(codes, scales, bits, group_size)


@dataclass(frozen=True)
class PackedWeight:
    """Codes packed `bits` bits per value (offset to unsigned), plus their scales: what is stored."""

    data: Tensor  # uint8, ceil(numel * bits / 8) bytes
    scales: Tensor
    shape: tuple[int, ...]
    bits: int
    group_size: int | None

    @property
    def nbytes(self) -> int:
        return self.data.numel() + self.scales.numel() * self.scales.element_size()


def pack(qw: QuantizedWeight) -> PackedWeight:
    """Pack codes into a dense bit stream: two 4-bit values per byte, four 2-bit values, etc."""
    offset = 2 ** (qw.bits - 1)
    unsigned = (qw.codes.reshape(-1).to(torch.int16) + offset).numpy().astype(np.uint8)
    # One row of `bits` bit-planes per value, most significant bit first, then one dense stream.
    planes = np.unpackbits(unsigned[:, None], axis=1)[:, 8 - qw.bits :]
    data = torch.from_numpy(np.packbits(planes.reshape(-1)))
    return PackedWeight(data, qw.scales.clone(), tuple(qw.codes.shape), qw.bits, qw.group_size)


def unpack(pw: PackedWeight) -> QuantizedWeight:
    numel = int(np.prod(pw.shape))
    bitstream = np.unpackbits(pw.data.numpy())[: numel * pw.bits].reshape(numel, pw.bits)
    padded = np.zeros((numel, 8), dtype=np.uint8)
    padded[:, 8 - pw.bits :] = bitstream
    unsigned = torch.from_numpy(np.packbits(padded, axis=1).reshape(-1).astype(np.int16))
    codes = (unsigned - 2 ** (pw.bits - 1)).to(torch.int8).reshape(pw.shape)
    return QuantizedWeight(codes, pw.scales.clone(), pw.bits, pw.group_size)


def activation_scale(absmax: float, bits: int) -> float:
    """Per-tensor symmetric scale that maps the calibrated range onto the `bits`-bit grid."""
    return max(float(absmax), 1e-8) / qmax(bits)


ACT_ZERO_POINT = 128

# quantize_per_tensor (deprecated in torch 2.13, which pyproject pins) is the one-pass rounding op
# that oneDNN's integer kernels pair with; replace it when the pin moves.
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.*deprecated", category=UserWarning)


def activation_codes_u8(x: Tensor, scale: float, bits: int) -> Tensor:
    """x rounded onto the symmetric `bits`-bit grid, as uint8 codes with zero point 128.

    uint8 is oneDNN's fast input type (its signed-int8 input takes a reference path thousands of
    times slower on this CPU). `quantize_per_tensor` rounds in one pass; its uint8 storage is then
    viewed, not copied (`int_repr()` would copy), and clamped onto the symmetric grid.
    """
    q = qmax(bits)
    qt = torch.quantize_per_tensor(x.float(), scale, ACT_ZERO_POINT, torch.quint8)
    codes = torch.empty(0, dtype=torch.uint8).set_(qt.untyped_storage(), 0, qt.shape, qt.stride())
    return codes.clamp_(ACT_ZERO_POINT - q, ACT_ZERO_POINT + q)


def fake_quantize_activation(x: Tensor, scale: float, bits: int) -> Tensor:
    """Round x onto the grid and back: the reference for the integer kernels, sharing their rounding."""
    codes = activation_codes_u8(x, scale, bits)
    return ((codes.float() - ACT_ZERO_POINT) * scale).to(x.dtype)
