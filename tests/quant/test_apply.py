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
    @register
    class LazyBackend(FakeBackend):  # claims support, silently runs float
        name = "lazy-test"

        def kernels(self, module, kind, bits, group_size=None):  # type: ignore[no-untyped-def]
            w = module.weight
            return {b: LayerKernel("float", lambda x, s: nn.functional.linear(x, w), [w]) for b in bits}

    with pytest.raises(VerificationError, match="kernel runs as float"):
        apply(tiny, BitConfig.uniform(GROUPS, "W8A16"), "lazy-test")
