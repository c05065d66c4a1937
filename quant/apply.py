"""Timestep-aware application of a BitConfig to a model.

`apply(model, config, backend, ranges)` swaps every Linear/Conv2d that the config quantizes for a
`QuantLayer` holding one kernel per distinct bit pair (weights quantized once, up front). The
sampler tells the model which step it is on (`QuantizedModel.set_step`); each layer then runs the
kernel of that step's timestep group. Nothing is re-quantized during sampling.

After applying, the layers that really run quantized are counted per backend and compared with
the config: a mismatch raises `VerificationError` (the candidate is INVALID, not scored).
`restore()` puts the original modules back, leaving the model exactly as it was.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

# Importing the backend modules registers them.
from quant.backends import fake as _fake  # noqa: F401
from quant.backends import int8 as _int8  # noqa: F401
from quant.backends.base import Backend, LayerKernel, Quantizable, RunLabel, get_backend, storage_bytes
from quant.calibrate import ActivationRanges
from quant.config import HIGH_PRECISION, BitConfig, Bits, ConfigError, TimestepGroups
from quant.errors import BitsearchError, UnsupportedBits
from quant.layers import quantizable_modules
from quant.quantizers import activation_scale


class VerificationError(BitsearchError, RuntimeError):
    """The quantized model does not run what the config asked for."""


@dataclass
class StepContext:
    """Shared by all QuantLayers of one model: the sampler step being run."""

    groups: TimestepGroups
    step: int | None = None
    # while set, every QuantLayer runs its original float module: the same model, timed unquantized
    # beside its quantized calls (QuantizedModel.float_reference)
    reference: bool = False

    @property
    def group(self) -> int:
        if self.step is None:
            if len(self.groups) == 1:
                return 0
            raise RuntimeError(
                f"this config has {len(self.groups)} timestep groups but no step was set; "
                "call QuantizedModel.set_step(i) before each denoiser call"
            )
        return self.groups.group_of(self.step)


_SHAPE_ATTRS = ("in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride",
                "padding", "dilation", "groups")


class QuantLayer(nn.Module):
    """Runs `kernels[plan[group]]` for the current timestep group and records how it ran."""

    def __init__(
        self,
        original: nn.Module,
        plan: tuple[Bits, ...],
        kernels: dict[Bits, LayerKernel],
        act_scales: tuple[float | None, ...],
        ctx: StepContext,
    ) -> None:
        super().__init__()
        self.original = [original]  # a list keeps it out of this module's children and state_dict
        self.plan = plan
        self.kernels = kernels
        self.act_scales = act_scales
        self.ctx = ctx
        self.ran: dict[int, RunLabel] = {}
        # Pipelines read shape attributes of layers (SDXL: add_embedding.linear_1.in_features).
        for attr in _SHAPE_ATTRS:
            if hasattr(original, attr):
                setattr(self, attr, getattr(original, attr))

    def forward(self, x: Tensor) -> Tensor:
        if self.ctx.reference:
            return cast(Tensor, self.original[0](x))
        g = self.ctx.group
        kernel = self.kernels[self.plan[g]]
        self.ran[g] = kernel.label
        return kernel.run(x, self.act_scales[g])

    def held_bytes(self) -> int:
        """Bytes of the tensors this layer's kernels keep alive, each storage counted once."""
        return storage_bytes(t for k in self.kernels.values() for t in k.held)

    def extra_repr(self) -> str:
        return " ".join(f"g{g}:{b}" for g, b in enumerate(self.plan))


class QuantizedModel:
    """A model with QuantLayers in place; call it like the model, set the step before each call."""

    def __init__(self, model: nn.Module, config: BitConfig, backend: Backend, ctx: StepContext,
                 layers: dict[str, QuantLayer]) -> None:
        self.model = model
        self.config = config
        self.backend = backend
        self.ctx = ctx
        self.layers = layers
        self.restorable = True

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self.model(*args, **kwargs)

    def set_step(self, step: int) -> None:
        self.ctx.groups.group_of(step)  # validates the step
        self.ctx.step = step

    def planned_labels(self) -> dict[str, tuple[RunLabel, ...]]:
        """How each quantized layer will run in each group (from its kernels)."""
        return {n: tuple(q.kernels[b].label for b in q.plan) for n, q in self.layers.items()}

    def executed_labels(self) -> dict[str, dict[int, RunLabel]]:
        """How each layer really ran, per group, in the calls since apply (or reset_record)."""
        return {n: dict(q.ran) for n, q in self.layers.items() if q.ran}

    def reset_record(self) -> None:
        for q in self.layers.values():
            q.ran.clear()

    def label_counts(self) -> Counter[str]:
        return Counter(lbl for labels in self.planned_labels().values() for lbl in labels)

    @property
    def simulated(self) -> bool:
        """True if any layer's numerics are simulated: then latency/memory are estimates, not measured."""
        return "simulated" in self.label_counts()

    @property
    def measurement_note(self) -> str:
        """How a run of this model may be reported: real kernels are measured; simulated ones are not."""
        return "numerics simulated, latency estimated" if self.simulated else "measured on real kernels"

    def held_weight_bytes(self) -> int:
        return sum(q.held_bytes() for q in self.layers.values())

    @contextmanager
    def float_reference(self) -> Iterator[None]:
        """Inside the block the model runs its original float layers (nothing re-applied): the float
        model, to time side by side with the quantized one on the same inputs."""
        if not self.restorable:
            raise RuntimeError("drop_originals() released the float modules: there is no float reference to run")
        self.ctx.reference = True
        try:
            yield
        finally:
            self.ctx.reference = False

    def drop_originals(self) -> None:
        """Release the float modules kept for `restore()`, so only the kernels' weights stay in
        memory (deployment view). The model can no longer be restored afterwards."""
        for q in self.layers.values():
            q.original.clear()
        self.restorable = False

    def restore(self) -> nn.Module:
        """Put the original modules back; the model is exactly as before `apply`."""
        if not self.restorable:
            raise RuntimeError("drop_originals() released the float modules: this model cannot be restored")
        for name, q in self.layers.items():
            _set_submodule(self.model, name, q.original[0])
        self.layers = {}
        return self.model


def apply(
    model: nn.Module,
    config: BitConfig,
    backend: str | Backend = "int8",
    ranges: ActivationRanges | None = None,
) -> QuantizedModel:
    """Quantize `model` in place per `config`; returns the handle that switches steps and restores."""
    be = get_backend(backend)
    modules = quantizable_modules(model)
    plans = config.resolve(modules)
    if ranges is not None:
        ranges = ranges.regroup(config.groups)  # raises a clear error when it cannot
    ctx = StepContext(config.groups)
    layers: dict[str, QuantLayer] = {}
    # Build every kernel before swapping anything, so a bad config leaves the model untouched.
    for name, (module, kind) in modules.items():
        plan = plans[name]
        if all(b.is_full_precision for b in plan):
            continue
        for b in set(plan):
            if not be.supports(b, kind, config.weight_group_size):
                raise UnsupportedBits(
                    f"backend {be.name!r} has no kernel for {b} on {kind} layer {name!r}; "
                    f"choose bits it supports or use backend 'fake' (simulated)"
                )
        scales = tuple(_act_scale(name, g, b, ranges) for g, b in enumerate(plan))
        with torch.no_grad():
            kernels = be.kernels(cast(Quantizable, module), kind, set(plan), config.weight_group_size)
        layers[name] = QuantLayer(module, plan, kernels, scales, ctx)
    for name, q in layers.items():
        _set_submodule(model, name, q)
    qm = QuantizedModel(model, config, be, ctx, layers)
    verify(qm, modules.keys())
    return qm


def verify(qm: QuantizedModel, layer_names: Iterable[str]) -> None:
    """Count what really runs quantized and compare it with the config; raise on any mismatch."""
    expected = {n for n, plan in qm.config.resolve(layer_names).items()
                if any(not b.is_full_precision for b in plan)}
    swapped = {n for n, m in qm.model.named_modules() if isinstance(m, QuantLayer)}
    if swapped != expected:
        missing, extra = sorted(expected - swapped), sorted(swapped - expected)
        raise VerificationError(f"quantized layers differ from the config: missing {missing[:3]}, extra {extra[:3]}")
    for name, q in qm.layers.items():
        for g, b in enumerate(q.plan):
            label = q.kernels[b].label
            if b.is_full_precision != (label == "float"):
                raise VerificationError(f"{name} group {g}: config {b} but kernel runs as {label}")
            if label == "int8-kernel" and qm.backend.name == "int8" and b.a == HIGH_PRECISION:
                raise VerificationError(f"{name} group {g}: int8 kernel without activation quantization")
    if qm.backend.name != "fake":
        simulated = [n for n, labels in qm.planned_labels().items() if "simulated" in labels]
        if simulated:
            raise VerificationError(f"backend {qm.backend.name} simulated layers {simulated[:3]}")


def _act_scale(name: str, group: int, bits: Bits, ranges: ActivationRanges | None) -> float | None:
    if bits.a == HIGH_PRECISION:
        return None
    if ranges is None:
        raise ConfigError(
            f"{name} quantizes activations ({bits}) but no activation ranges were given; "
            "run quant.calibrate.calibrate_activations first"
        )
    return activation_scale(ranges.absmax(name, group), bits.a)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@contextmanager
def quantized(model: nn.Module, config: BitConfig, backend: str | Backend = "int8",
              ranges: ActivationRanges | None = None) -> Iterator[QuantizedModel]:
    """`with quantized(model, cfg) as qm:` ... the model is restored on exit, even on error."""
    qm = apply(model, config, backend, ranges)
    try:
        yield qm
    finally:
        qm.restore()
