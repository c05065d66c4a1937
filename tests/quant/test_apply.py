from __future__ import annotations

import pytest
import torch
from torch import nn

from quant.apply import QuantLayer, VerificationError, apply, quantized
from quant.backends.base import LayerKernel, register
from quant.backends.fake import FakeBackend
from quant.calibrate import ActivationRanges, calibrate_activations
from quant.config import BitConfig, Bits, ConfigError, TimestepGroups

GROUPS = TimestepGroups.uniform(4, 2)  # steps 0-1 and 2-3


def _calibrate(model: nn.Module, x: torch.Tensor, groups: TimestepGroups = GROUPS) -> ActivationRanges:
    def run(set_step):  # type: ignore[no-untyped-def]
        for step in range(groups.num_steps):
            set_step(step)
            model(x * (1 + step))  # activations grow along the trajectory, like a real sampler's
    return calibrate_activations(model, groups, run)


def test_ranges_are_per_group(tiny, tiny_input) -> None:
    ranges = _calibrate(tiny, tiny_input)
    lo, hi = ranges.absmax("conv_in", 0), ranges.absmax("conv_in", 1)
    assert hi == pytest.approx(4 * float(tiny_input.abs().max()), rel=1e-5)
    assert lo == pytest.approx(2 * float(tiny_input.abs().max()), rel=1e-5)
    assert ActivationRanges.from_dict(ranges.to_dict()) == ranges


def test_per_step_ranges_regroup_exactly_as_calibrating_with_the_groups(tiny, tiny_input) -> None:
    per_step = _calibrate(tiny, tiny_input, TimestepGroups.uniform(4, 4))
    for groups in (GROUPS, TimestepGroups(4, (0, 3)), TimestepGroups(4, (0,))):
        direct = _calibrate(tiny, tiny_input, groups)
        merged = per_step.regroup(groups)
        assert merged.groups == groups and merged.values.keys() == direct.values.keys()
        for fqn, v in direct.values.items():
            assert merged.values[fqn] == pytest.approx(v, rel=1e-6)
    with pytest.raises(ConfigError, match="calibrate per step"):
        _calibrate(tiny, tiny_input).regroup(TimestepGroups(4, (0, 3)))  # [0-1][2-3] cannot make [0-2][3]
    with quantized(tiny, BitConfig.uniform(TimestepGroups(4, (0, 3)), "W8A8"), "fake", per_step) as qm:
        assert qm is not None  # apply accepts ranges of a finer grouping


@pytest.mark.parametrize("bits", ["W8A8", "W4A8", "W8A6"])
def test_int8_matches_fake_on_the_same_config(tiny, tiny_input, bits: str) -> None:
    ranges = _calibrate(tiny, tiny_input)
    cfg = BitConfig.uniform(GROUPS, bits)
    outs = {}
    for backend in ("fake", "int8"):
        with quantized(tiny, cfg, backend, ranges) as qm, torch.no_grad():
            qm.set_step(0)
            outs[backend] = qm(tiny_input)
            assert set(qm.planned_labels()) == {"conv_in", "proj", "ff", "conv_out"}
    with torch.no_grad():
        ref = tiny(tiny_input)
    err_int8_vs_fake = float((outs["int8"] - outs["fake"]).norm() / outs["fake"].norm())
    err_fake_vs_fp = float((outs["fake"] - ref).norm() / ref.norm())
    assert err_int8_vs_fake < 1e-4 < err_fake_vs_fp  # same numerics, and quantization really happened


def test_per_timestep_switching_changes_the_layers_bits(tiny, tiny_input) -> None:
    ranges = _calibrate(tiny, tiny_input)
    mixed = BitConfig(GROUPS, {"_default": ["W8A8", "W2A8"]})
    qm = apply(tiny, mixed, "int8", ranges)
    with torch.no_grad():
        qm.set_step(1)
        early = qm(tiny_input)
        qm.set_step(2)
        late = qm(tiny_input)
    layer = qm.layers["proj"]
    assert layer.plan == (Bits(8, 8), Bits(2, 8))
    assert qm.executed_labels()["proj"] == {0: "int8-kernel", 1: "int8-kernel"}
    qm.restore()
    # Each step's output equals a uniform config at that group's bits.
    for step, out, bits in ((1, early, "W8A8"), (2, late, "W2A8")):
        with quantized(tiny, BitConfig(GROUPS, {"_default": bits}), "int8", ranges) as ref, torch.no_grad():
            ref.set_step(step)
            assert torch.allclose(ref(tiny_input), out, atol=1e-6)
    assert not torch.allclose(early, late, atol=1e-3)


def test_weights_quantized_once_not_per_step(tiny, tiny_input, monkeypatch) -> None:
    import quant.backends.int8 as int8_mod

    calls = []
    real = int8_mod.quantize_weight
    monkeypatch.setattr(int8_mod, "quantize_weight", lambda *a, **k: calls.append(1) or real(*a, **k))
    ranges = _calibrate(tiny, tiny_input)
    qm = apply(tiny, BitConfig(GROUPS, {"_default": ["W8A8", "W4A8"]}), "int8", ranges)
    n_at_apply = len(calls)
    assert n_at_apply == 2 * 4  # two weight widths x four layers
    with torch.no_grad():
        for step in range(4):
            qm.set_step(step)
            qm(tiny_input)
    assert len(calls) == n_at_apply


def test_restore_leaves_model_exactly_as_found(tiny, tiny_input) -> None:
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    modules_before = dict(tiny.named_modules())
    with torch.no_grad():
        ref = tiny(tiny_input)
    qm = apply(tiny, BitConfig.uniform(GROUPS, "W4A8"), "int8", _calibrate(tiny, tiny_input))
    assert sum(isinstance(m, QuantLayer) for m in tiny.modules()) == 4
    qm.restore()
    assert dict(tiny.named_modules()) == modules_before
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())
    with torch.no_grad():
        assert torch.equal(tiny(tiny_input), ref)


def test_missing_step_and_missing_ranges_are_clear_errors(tiny, tiny_input) -> None:
    with pytest.raises(ConfigError, match="no activation ranges were given"):
        apply(tiny, BitConfig.uniform(GROUPS, "W8A8"), "int8")
    assert not any(isinstance(m, QuantLayer) for m in tiny.modules())  # nothing half-applied
    qm = apply(tiny, BitConfig.uniform(GROUPS, "W8A16"), "int8")
    with pytest.raises(RuntimeError, match="call QuantizedModel.set_step"):
        qm(tiny_input)
    qm.restore()
    with pytest.raises(ConfigError, match="has no kernel for W16A8"):
        apply(tiny, BitConfig.uniform(GROUPS, "W16A8"), "int8", _calibrate(tiny, tiny_input))


def test_mixed_config_only_quantizes_what_it_names(tiny, tiny_input) -> None:
    cfg = BitConfig(GROUPS, {"re:conv_.*": "W16A16", "proj": ["W8A8", "W4A16"], "ff": "W8A16"})
    qm = apply(tiny, cfg, "int8", _calibrate(tiny, tiny_input))
    assert set(qm.layers) == {"proj", "ff"}
    assert qm.planned_labels() == {"proj": ("int8-kernel", "weight-only-kernel"),
                                   "ff": ("weight-only-kernel", "weight-only-kernel")}
    assert not qm.simulated and qm.measurement_note == "measured on real kernels"
    qm.restore()
    qm = apply(tiny, cfg, "fake", _calibrate(tiny, tiny_input))
    assert qm.simulated and qm.measurement_note == "numerics simulated, latency estimated"
    qm.restore()


def test_verification_rejects_a_backend_that_does_not_quantize(tiny) -> None:
    @register("lazy-test")
    class LazyBackend(FakeBackend):  # claims support, silently runs float
        def kernels(self, module, kind, bits, group_size=None):  # type: ignore[no-untyped-def]
            w = module.weight
            return {b: LayerKernel("float", lambda x, s: nn.functional.linear(x, w), [w]) for b in bits}

    with pytest.raises(VerificationError, match="kernel runs as float"):
        apply(tiny, BitConfig.uniform(GROUPS, "W8A16"), "lazy-test")


class _OpsPerLayer:
    """Records every ATen/oneDNN op a forward dispatches, with its tensor arguments' dtypes, under
    the name of the QuantLayer that ran it (the ops themselves, not the kernels' own labels)."""

    def __init__(self, qm) -> None:  # type: ignore[no-untyped-def]
        from torch.utils._python_dispatch import TorchDispatchMode

        self.ops: dict[str, list[tuple[str, list[torch.dtype | None]]]] = {}
        self.current: str | None = None
        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                if outer.current is not None:
                    dtypes = [a.dtype if isinstance(a, torch.Tensor) else None for a in args]
                    outer.ops.setdefault(outer.current, []).append((str(func.overloadpacket), dtypes))
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        self.handles = []
        for name, layer in qm.layers.items():
            self.handles.append(layer.register_forward_pre_hook(lambda _m, _a, n=name: setattr(self, "current", n)))
            self.handles.append(layer.register_forward_hook(lambda *_: setattr(self, "current", None)))

    def __enter__(self) -> _OpsPerLayer:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.mode.__exit__(*exc)
        for h in self.handles:
            h.remove()


FLOAT_COMPUTE = {"aten.convolution", "aten.linear", "aten.addmm", "aten.mm", "aten.bmm", "aten.matmul"}


@pytest.mark.parametrize(("bits", "linear_op", "linear_weight"), [
    ("W8A8", "onednn.qlinear_pointwise", torch.int8),
    ("W4A8", "onednn.qlinear_pointwise", torch.int8),
    ("W8A16", "aten._weight_int8pack_mm", torch.int8),
    ("W4A16", "aten._weight_int4pack_mm_for_cpu", torch.uint8),  # two 4-bit codes per byte
])
def test_int8_layers_really_run_integer_ops_on_integer_inputs(tiny, tiny_input, bits: str, linear_op: str,
                                                               linear_weight: torch.dtype) -> None:
    """What ran, seen by the dispatcher: each int8-kernel layer called oneDNN's integer GEMM/conv on
    uint8 activations and int8 weights, each weight-only layer the mixed-dtype kernel on integer
    weights, and none of them a float GEMM/conv; a kernel swapped for float maths fails here even
    if it keeps its label."""
    ranges = _calibrate(tiny, tiny_input)
    cfg = BitConfig(GROUPS, {"re:proj|ff": bits, "_default": "W8A8" if bits.endswith("A8") else "W16A16"})
    with quantized(tiny, cfg, "int8", ranges) as qm, torch.no_grad():
        qm.set_step(0)
        labels = {n: q.kernels[q.plan[0]].label for n, q in qm.layers.items()}
        with _OpsPerLayer(qm) as rec:
            qm(tiny_input)
    a8 = bits.endswith("A8")
    expected = {"conv_in": "int8-kernel", "proj": "int8-kernel", "ff": "int8-kernel", "conv_out": "int8-kernel"}
    assert labels == (expected if a8 else {"proj": "weight-only-kernel", "ff": "weight-only-kernel"})
    for name, layer in {n: getattr(tiny, n) for n in labels}.items():
        ops = rec.ops.get(name, [])
        names = [op for op, _ in ops]
        assert not FLOAT_COMPUTE & set(names), (name, labels[name], names)
        if isinstance(layer, nn.Conv2d):
            want, dtypes = "onednn.qconv_pointwise", {0: torch.uint8, 3: torch.int8}
        else:
            want, dtypes = linear_op, ({0: torch.uint8, 3: linear_weight} if a8 else {1: linear_weight})
        calls = [d for op, d in ops if op == want]
        assert len(calls) == 1, (name, names)
        assert all(calls[0][i] == dt for i, dt in dtypes.items()), (name, want, calls[0])
