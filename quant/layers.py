"""The layer inventory: every quantizable layer of a denoiser, addressed by fully qualified name."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

# torch is imported inside the functions that need it: `Layer` is a core type that solvers, storage
# and the CLI import without wanting torch's start-up cost.
if TYPE_CHECKING:
    from torch import Tensor, nn

LayerKind = Literal["linear", "conv"]


@dataclass(frozen=True)
class Layer:
    """One quantizable layer. Always addressed by its FQN, never by index.

    `macs` is multiply-accumulates of one denoiser forward at the input shape the inventory was
    taken with (measured with forward hooks, so it counts every call of the layer in that forward).
    """

    fqn: str
    kind: LayerKind
    weight_shape: tuple[int, ...]
    params: int
    macs: int

    @property
    def out_channels(self) -> int:
        return self.weight_shape[0]


def layer_kind(module: nn.Module) -> LayerKind | None:
    """The inventory kind of `module`, or None if it is not a quantizable layer.

    Subclasses count too, so wrappers of nn.Linear / nn.Conv2d are listed under their own FQN.
    """
    from torch import nn

    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv"
    return None


def quantizable_modules(model: nn.Module) -> dict[str, tuple[nn.Module, LayerKind]]:
    """Every Linear and Conv2d of `model` by FQN, in module order (the one definition of
    "quantizable layer", shared by the inventory and by `quant.apply`)."""
    return {name: (module, kind) for name, module in model.named_modules() if (kind := layer_kind(module))}


def _macs(module: nn.Module, output: Tensor) -> int:
    # Counted from the output so it does not matter how the input was passed (positional or keyword):
    # linear: tokens * in_features * out_features == output.numel() * in_features.
    from torch import nn

    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    assert isinstance(module, nn.Conv2d)
    kh, kw = module.kernel_size
    return output.numel() * (module.in_channels // module.groups) * kh * kw


def inventory(model: nn.Module, example_inputs: Mapping[str, Any]) -> list[Layer]:
    """Every nn.Linear / nn.Conv2d of `model`, in `named_modules()` order, with its MACs per forward.

    MACs are measured with forward hooks during ONE `model(**example_inputs)` call, so a layer called
    several times in that forward is counted every time and a layer never called gets macs=0. Works on
    the meta device (model built under `torch.device("meta")`, meta inputs): only shapes are needed.
    """
    import torch

    found = quantizable_modules(model)
    macs = dict.fromkeys(found, 0)

    def counter(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            macs[name] += _macs(module, output)

        return hook

    handles = [module.register_forward_hook(counter(name)) for name, (module, _) in found.items()]
    try:
        with torch.no_grad():
            model(**example_inputs)
    finally:
        for handle in handles:
            handle.remove()

    layers = []
    for name, (module, kind) in found.items():
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        layers.append(Layer(name, kind, tuple(weight.shape), weight.numel(), macs[name]))
    return layers


def totals(layers: Sequence[Layer]) -> dict[str, int | float]:
    """Summary counts of an inventory (what `bitsearch inspect` prints under the table)."""
    macs = sum(layer.macs for layer in layers)
    return {
        "layers": len(layers),
        "linear": sum(layer.kind == "linear" for layer in layers),
        "conv": sum(layer.kind == "conv" for layer in layers),
        "params": sum(layer.params for layer in layers),
        "macs": macs,
        "gmacs": round(macs / 1e9, 3),
    }
