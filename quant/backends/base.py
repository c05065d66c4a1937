"""The Backend contract: how one layer runs at given (weight, activation) bits.

A backend turns a Linear/Conv2d module into `LayerKernel`s, one per bit pair the config asks
for; `quant.apply` wires them into the model and switches between them per timestep group.

Contract for implementations (checked by `quant.backends.testing` for every registered name):
- `supports(bits, kind, group_size)` is exact: `kernels` succeeds for every supported pair and is
  never asked for another.
- Each kernel's `label` says how it REALLY runs: `int8-kernel` (integer GEMM/conv on int8 codes),
  `weight-only-kernel` (integer weights consumed by a mixed-dtype kernel), `dequantize-float`
  (integer weights expanded to float at each call), `simulated` (fake-quant numerics on float
  weights), or `float` (unquantized).
- Weights are quantized once per distinct weight bit-width, never per call or per step; kernels of
  the same layer share prepared weights. `held` lists the tensors a kernel keeps alive so memory
  can be counted honestly.
- Kernels take the input and the activation scale of the current timestep group (None for A16)
  and return the output in the input's dtype.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from torch import Tensor, nn

from quant.config import Bits
from quant.layers import LayerKind
from quant.registry import Registry

Quantizable = nn.Linear | nn.Conv2d
"""The module types a backend quantizes (the same set as `quant.layers.quantizable_modules`)."""

RunLabel = Literal["int8-kernel", "weight-only-kernel", "dequantize-float", "simulated", "float"]
REAL_LABELS: tuple[RunLabel, ...] = ("int8-kernel", "weight-only-kernel", "dequantize-float")
SIMULATED: RunLabel = "simulated"  # the one label whose layer did not run its bits for real


@dataclass
class LayerKernel:
    label: RunLabel
    run: Callable[[Tensor, float | None], Tensor]
    held: list[Tensor] = field(default_factory=list)


class Backend(ABC):
    name: ClassVar[str]
    # a reference simulation: none of its runs is measured, even one whose layers all ran as `float`
    simulates: ClassVar[bool] = False

    @abstractmethod
    def supports(self, bits: Bits, kind: LayerKind, group_size: int | None = None) -> bool:
        """Whether `kernels` can run this pair on this kind of layer."""

    @abstractmethod
    def kernels(
        self, module: Quantizable, kind: LayerKind, bits: set[Bits], group_size: int | None = None
    ) -> dict[Bits, LayerKernel]:
        """One kernel per requested pair, sharing prepared weights between pairs."""


BACKENDS: Registry[Backend] = Registry("backend", "quant.backends")
register = BACKENDS.register


def backend_names() -> list[str]:
    return BACKENDS.names()


def get_backend(name: str | Backend) -> Backend:
    """The backend registered as `name` (an instance is passed through)."""
    return name if isinstance(name, Backend) else BACKENDS.create(name)


def float_forward(module: Quantizable, x: Tensor, weight: Tensor) -> Tensor:
    """The module's own float op (padding, stride, groups...) with a substitute weight."""
    bias = module.bias.to(x.dtype) if module.bias is not None else None
    if isinstance(module, nn.Conv2d):
        return module._conv_forward(x, weight.to(x.dtype), bias)
    return nn.functional.linear(x, weight.to(x.dtype), bias)


def weightless_op(module: Quantizable) -> tuple[Callable[[Tensor, Tensor], Tensor], list[Tensor]]:
    """The module's float op as a function of (input, weight) that keeps its bias but not its weight (a
    kernel that brings its own weight must not keep the float one alive), and the tensors it holds."""
    bias = module.bias.detach() if module.bias is not None else None
    held = [] if bias is None else [bias]
    if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":  # the module's own padding op
        return (lambda x, w: float_forward(module, x, w)), [module.weight, *held]
    if isinstance(module, nn.Conv2d):
        args = (module.stride, module.padding, module.dilation, module.groups)
        return (lambda x, w: nn.functional.conv2d(x, w.to(x.dtype), _cast(bias, x), *args)), held  # type: ignore[arg-type]
    return (lambda x, w: nn.functional.linear(x, w.to(x.dtype), _cast(bias, x))), held


def _cast(t: Tensor | None, like: Tensor) -> Tensor | None:
    return None if t is None else t.to(like.dtype)


def storage_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of the storages behind `tensors`, each counted once; oneDNN's prepacked tensors are
    opaque: their elements are counted."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        try:
            seen["ptr", t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        except NotImplementedError:
            seen["id", id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def float_kernel(module: Quantizable) -> LayerKernel:
    """Run the layer unquantized (W16A16), in the input's dtype."""
    weight = module.weight
    return LayerKernel("float", lambda x, _scale: float_forward(module, x, weight), [weight])


@dataclass(frozen=True)
class Measurement:
    """How a run may be reported, judged from the labels its layers ran with (see `measurement`)."""

    layers_simulated: int
    why_not: str | None  # why latency and memory are estimates; None: they were measured

    @property
    def measured(self) -> bool:
        return self.why_not is None

    def flag(self, claimed: bool | None = None) -> bool:
        """The measured flag to record: this rule's verdict, or `claimed` (an evaluator's own word) where
        the rule allows it; claiming a measurement the run cannot have made is a ValueError."""
        if claimed and self.why_not:
            raise ValueError(f"{self.why_not}; latency and memory cannot be reported as measured")
        return self.measured if claimed is None else claimed


def measurement(backend: str, run_labels: Mapping[str, int]) -> Measurement:
    """Whether a run's latency and memory were measured rather than estimated: only when some layer ran,
    none ran `simulated`, and the backend is not a simulation (`Backend.simulates`). A backend name not
    registered in this process (a test's stand-in) is judged by its labels alone."""
    simulated = int(run_labels.get(SIMULATED, 0))
    simulates = backend in backend_names() and get_backend(backend).simulates
    why_not = (f"{simulated} layers ran simulated" if simulated else
               "no run labels say how the layers ran" if not run_labels else
               f"backend {backend!r} simulates every layer" if simulates else None)
    return Measurement(simulated, why_not)
