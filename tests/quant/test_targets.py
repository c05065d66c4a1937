from __future__ import annotations

import pytest
import torch
from torch import nn

from quant.apply import QuantLayer, quantized
from quant.calibrate import ActivationRanges, SetStep, calibrate_activations
from quant.config import BitConfig, Bits, TimestepGroups
from quant.cost import TargetTables
from quant.errors import UnsupportedBits
from quant.targets import (
    BF16,
    FP32,
    describe,
    formats,
    loaded_format,
    measure_memory,
    measure_tables,
    resident_bytes,
    storage_bytes,
)

GROUPS = TimestepGroups(1)
FULL = Bits(16, 16)
BITS = [Bits(8, 8), Bits(6, 8), Bits(4, 8), Bits(8, 16), Bits(6, 16), Bits(4, 16)]


class Net(nn.Module):
    """Linears with in_features multiples of 32 (the int4 weight-only kernel's), a conv, a LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 32, 3, padding=1)
        self.norm = nn.LayerNorm(32)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.norm(self.conv(x).flatten(2).transpose(1, 2))
        return self.fc2(nn.functional.silu(self.fc1(t)))


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def ranges(net: Net, x: torch.Tensor) -> ActivationRanges:
    def run(set_step: SetStep) -> None:
        set_step(0)
        net(x)

    return calibrate_activations(net, GROUPS, run)


def _held_independently(model: nn.Module) -> int:
    """Storages of the remaining parameters/buffers, plus each QuantLayer's kernels' held tensors."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in (*model.parameters(), *model.buffers())}
    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    return sum(storages.values()) + sum(q.held_bytes() for q in layers)


def test_formats_name_pairs_by_how_their_kernels_run() -> None:
    fs = {f.name: f for f in formats("int8", [*BITS, "W16A16"])}
    assert list(fs) == [FP32, BF16, "w4a8-int8-container", "int4-weight-only", "w6a8-int8-container",
                        "w6a16-dequantize", "int8", "int8-weight-only"]
    assert fs["int8"].bits == Bits(8, 8) and fs["int8"].label == "int8-kernel"
    assert fs["int4-weight-only"].label == "weight-only-kernel" and fs["int4-weight-only"].conv_label == "dequantize-float"
    assert "conv layers: dequantize-float" in fs["int8-weight-only"].description
    assert "memory and speed of W8A8" in fs["w4a8-int8-container"].description
    assert fs[FP32].bits == fs[BF16].bits == Bits(16, 16)
    assert [f.name for f in formats("fake", ["W4A8"])][2:] == ["w4a8-simulated"]
    with pytest.raises(UnsupportedBits, match="no linear kernel"):
        formats("int8", ["W16A8"])


def test_resident_bytes_are_the_tensors_really_held(net: Net, x: torch.Tensor, ranges: ActivationRanges) -> None:
    fp32 = resident_bytes(net)
    assert fp32 == sum(t.numel() * 4 for t in net.state_dict().values()) == _held_independently(net)
    held: dict[Bits, int] = {}
    for f in formats("int8", BITS)[2:]:
        with quantized(net, BitConfig.uniform(GROUPS, f.bits), "int8", ranges) as qm:
            assert set(qm.layers) == {"conv", "fc1", "fc2"}  # originals are in plain lists: not counted
            held[f.bits] = resident_bytes(qm)
            assert held[f.bits] == resident_bytes(net) == _held_independently(net)
        assert resident_bytes(net) == fp32  # restored
    assert held[Bits(8, 8)] < fp32
    assert held[Bits(4, 8)] == held[Bits(6, 8)] == held[Bits(8, 8)]  # sub-8-bit grids in an int8 container
    assert held[Bits(4, 16)] < held[Bits(8, 16)] < fp32  # int4 packs two codes per byte on the linears
    assert held[Bits(6, 16)] == held[Bits(4, 16)] + _int4_saving(net)


def _int4_saving(net: Net) -> int:
    """Dequantize holds int8 codes + fp32 scales; the int4 kernel half-byte codes + bf16 (scale, zero)
    per group of inputs (the largest of 256/128/64/32 dividing in_features); the conv dequantizes in both."""
    saving = 0
    for fc in (net.fc1, net.fc2):
        out, inp = fc.weight.shape
        group = next(g for g in (256, 128, 64, 32) if inp % g == 0)
        saving += out * inp + out * 4 - (out * inp // 2 + inp // group * out * 2 * 2)
    return saving


def test_every_format_runs_as_its_label_says(net: Net, x: torch.Tensor, ranges: ActivationRanges) -> None:
    for f in formats("int8", BITS):
        with quantized(net, BitConfig.uniform(GROUPS, f.bits), "int8", ranges) as qm, torch.no_grad():
            qm(x)
            ran = qm.executed_labels()
        if f.bits.is_full_precision:
            assert ran == {} and f.label == "float"
            continue
        assert ran == {"conv": {0: f.conv_label}, "fc1": {0: f.label}, "fc2": {0: f.label}}


def test_memory_table_holds_each_pairs_kernel_bytes(net: Net, ranges: ActivationRanges) -> None:
    table = measure_memory(net, BITS, "int8", ranges)
    assert set(table) == {"conv", "fc1", "fc2"} and all(set(per) == {FULL, *BITS} for per in table.values())
    assert table["fc1"][FULL] == (64 * 32 + 64) * 4
    for fqn in table:
        for b in BITS:
            with quantized(net, BitConfig.uniform(GROUPS, b), "int8", ranges) as qm:
                assert table[fqn][b] == qm.layers[fqn].held_bytes()
    # W4A16 on a linear layer is int4-packed: fewer bytes than the int8 container of W4A8
    assert table["fc1"][Bits(4, 16)] < table["fc1"][Bits(4, 8)]


def test_measure_tables_and_describe(net: Net, x: torch.Tensor, ranges: ActivationRanges) -> None:
    tables = measure_tables(net, {"x": x}, BITS, "int8", ranges, repeats=2)
    layers = {"conv", "fc1", "fc2"}
    assert set(tables.latency) == set(tables.memory) == layers
    assert all(set(per) == {*BITS, Bits(16, 16)} for per in tables.latency.values())
    assert all(s > 0 for per in tables.latency.values() for s in per.values())
    assert tables.rest_bytes == storage_bytes(net.norm.parameters()) == 2 * 32 * 4
    assert tables.rest_latency_s >= 0
    assert tables.float_format in (FP32, BF16)
    fp32_bytes = resident_bytes(net)
    assert tables.float_bytes == (fp32_bytes if tables.float_format == FP32 else fp32_bytes // 2)
    assert TargetTables.from_dict(tables.to_dict()) == tables
    assert all(t.dtype == torch.float32 for t in net.parameters())  # the bf16 copy left the model alone

    rows = {r["name"]: r for r in describe(tables, formats("int8", BITS))}
    fastest, other = rows[tables.float_format], rows[BF16 if tables.float_format == FP32 else FP32]
    assert fastest["latency_x"] == fastest["memory_x"] == 1.0
    assert fastest["latency_ms"] == pytest.approx(tables.float_latency_s * 1e3)
    if tables.float_format == BF16:  # fp32's row is its layers plus the rest: the measured call
        assert other["memory_mb"] == pytest.approx(fp32_bytes * 1e-6) and other["memory_x"] == pytest.approx(2.0)
        assert other["latency_x"] >= 1.0  # type: ignore[operator]
    else:
        assert other["latency_ms"] is None and other["memory_x"] is None
    int8 = rows["int8"]
    assert int8["memory_mb"] == pytest.approx((tables.rest_bytes + sum(m[Bits(8, 8)] for m in tables.memory.values())) * 1e-6)
    assert int8["latency_ms"] == pytest.approx(
        (tables.rest_latency_s + sum(per[Bits(8, 8)] for per in tables.latency.values())) * 1e3)
    # int4-packed linears: the int4 weight-only format holds less than W4 codes in int8 containers
    assert rows["int4-weight-only"]["memory_mb"] < rows["w4a8-int8-container"]["memory_mb"]  # type: ignore[operator]


def test_a_bf16_model_is_timed_as_loaded_and_is_its_own_reference(net: Net, x: torch.Tensor) -> None:
    """Its layers' W16A16 entries are bf16 layers, its call the reference; no fp32 copy is made or timed."""
    half, hx = net.to(torch.bfloat16), x.to(torch.bfloat16)
    ranges = calibrate_activations(half, GROUPS, lambda set_step: (set_step(0), half(hx)))
    tables = measure_tables(half, {"x": hx}, ["W8A8", "W4A16"], "int8", ranges, repeats=2)
    assert (tables.float_format, tables.loaded_format) == (BF16, BF16)
    assert tables.float_bytes == resident_bytes(half) and tables.memory["fc1"][FULL] == (64 * 32 + 64) * 2
    assert tables.loaded_call_s == tables.float_latency_s == pytest.approx(
        tables.rest_latency_s + sum(per[FULL] for per in tables.latency.values()))
    assert all(s > 0 for per in tables.latency.values() for s in per.values())
    assert TargetTables.from_dict(tables.to_dict()) == tables
    rows = {r["name"]: r for r in describe(tables, formats("int8", ["W8A8", "W4A16"]))}
    assert rows[BF16]["latency_x"] == 1.0 and rows[FP32]["latency_ms"] is None  # fp32 was not timed
    assert rows["int8"]["memory_x"] < 1.0  # type: ignore[operator]


def test_a_bf16_model_keeping_an_fp32_buffer_is_a_bf16_model() -> None:
    """diffusers loads PixArt in bf16 with its positional table (a buffer, cast in the forward) in fp32."""
    from diffusers import PixArtTransformer2DModel

    model = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                     num_layers=1, cross_attention_dim=16, sample_size=8,
                                     caption_channels=16).to(torch.bfloat16)
    model.pos_embed.pos_embed = model.pos_embed.pos_embed.float()
    assert loaded_format(model) == BF16
    model.proj_out.float()
    with pytest.raises(ValueError, match="holds bfloat16, float32"):
        loaded_format(model)


def test_measure_tables_refuses_a_float_format_it_cannot_time(net: Net, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="holds float16; load it in one of those"):
        measure_tables(net.to(torch.float16), {"x": x.half()}, ["W8A16"])
