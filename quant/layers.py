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


# Text-conditioning length each family is run with: CLIP's 77 tokens for the SD UNets, the 120 T5
# tokens the PixArt-alpha pipeline pads prompts to.
CLIP_TOKENS = 77
T5_TOKENS = 120


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


# --- example inputs for diffusers denoisers ----------------------------------------------------------
# One builder per family. `size` is the denoiser's own spatial input size (latent pixels for latent
# models): (height, width). Models are typed Any: diffusers' `config` attributes are dynamic.

_Builder = Callable[[Any, int, tuple[int, int]], dict[str, Any]]


class _Factory:
    """Makes tensors on the model's device and dtype (meta in, meta out)."""

    def __init__(self, model: nn.Module) -> None:
        import torch

        param = next(model.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    def randn(self, *shape: int) -> Tensor:
        import torch

        return torch.randn(shape, device=self.device, dtype=self.dtype)

    def rows(self, batch: int, *values: float) -> Tensor:
        """A (batch, len(values)) tensor, every row `values`."""
        import torch

        return torch.tensor([values], device=self.device, dtype=self.dtype).expand(batch, -1)

    def long(self, shape: tuple[int, ...], value: int) -> Tensor:
        import torch

        return torch.full(shape, value, device=self.device, dtype=torch.long)


def _unet_condition_inputs(model: Any, batch: int, size: tuple[int, int]) -> dict[str, Any]:
    cfg, t = model.config, _Factory(model)
    inputs: dict[str, Any] = {
        "sample": t.randn(batch, cfg.in_channels, *size),
        "timestep": t.long((batch,), 500),
    }
    if cfg.encoder_hid_dim_type not in (None, "text_proj"):
        raise ValueError(
            f"encoder_hid_dim_type={cfg.encoder_hid_dim_type!r} is not supported (None, 'text_proj')"
        )
    text_dim = cfg.encoder_hid_dim if cfg.encoder_hid_dim_type == "text_proj" else cfg.cross_attention_dim
    inputs["encoder_hidden_states"] = t.randn(batch, CLIP_TOKENS, text_dim)
    inputs.update(_class_labels(model, batch))
    if cfg.addition_embed_type == "text_time":
        # SDXL: pooled text embedding + 6 micro-conditioning ids (original size, crop, target size),
        # each id embedded to addition_time_embed_dim; the concatenation feeds add_embedding.
        text_embeds = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {
            "text_embeds": t.randn(batch, text_embeds),
            "time_ids": t.randn(batch, 6),
        }
    elif cfg.addition_embed_type is not None:
        raise ValueError(
            f"addition_embed_type={cfg.addition_embed_type!r} is not supported (None, 'text_time')"
        )
    return inputs


def _class_labels(model: Any, batch: int) -> dict[str, Tensor]:
    """`class_labels` for UNets with a class embedding, in the form that embedding consumes."""
    cfg, t = model.config, _Factory(model)
    kind = cfg.get("class_embed_type")
    if kind is None and cfg.get("num_class_embeds") is None:
        return {}
    if kind in (None, "timestep", "identity"):  # an nn.Embedding index, or a timestep-like scalar
        return {"class_labels": t.long((batch,), 0)}
    if kind in ("projection", "simple_projection"):
        return {"class_labels": t.randn(batch, cfg.projection_class_embeddings_input_dim)}
    raise ValueError(f"class_embed_type={kind!r} is not supported")


def _unet_inputs(model: Any, batch: int, size: tuple[int, int]) -> dict[str, Any]:
    t = _Factory(model)
    inputs = {"sample": t.randn(batch, model.config.in_channels, *size), "timestep": t.long((batch,), 500)}
    return inputs | _class_labels(model, batch)


def _dit_inputs(model: Any, batch: int, size: tuple[int, int]) -> dict[str, Any]:
    t = _Factory(model)
    return {
        "hidden_states": t.randn(batch, model.config.in_channels, *size),
        "timestep": t.long((batch,), 500),
        "class_labels": t.long((batch,), 0),
    }


def _pixart_inputs(model: Any, batch: int, size: tuple[int, int]) -> dict[str, Any]:
    cfg, t = model.config, _Factory(model)
    # The T5 embeddings go through caption_projection when the model has one, else straight to attn2.
    text_dim = cfg.caption_channels or cfg.cross_attention_dim
    cond: dict[str, Tensor | None] = {"resolution": None, "aspect_ratio": None}
    if model.use_additional_conditions:  # PixArt-alpha 1024: image size and aspect ratio are embedded too
        h, w = (8 * s for s in size)  # in pixels, through the 8x VAE
        cond = {"resolution": t.rows(batch, h, w), "aspect_ratio": t.rows(batch, h / w)}
    return {
        "hidden_states": t.randn(batch, cfg.in_channels, *size),
        "encoder_hidden_states": t.randn(batch, T5_TOKENS, text_dim),
        "timestep": t.long((batch,), 500),
        "added_cond_kwargs": cond,
    }


def _transformer_inputs(model: Any, batch: int, size: tuple[int, int]) -> dict[str, Any]:
    cfg, t = model.config, _Factory(model)
    inputs: dict[str, Any] = {}
    if cfg.num_vector_embeds is not None:  # discrete (VQ-Diffusion style): one token index per pixel
        inputs["hidden_states"] = t.long((batch, size[0] * size[1]), 0)
    else:
        inputs["hidden_states"] = t.randn(batch, cfg.in_channels, *size)
    if cfg.cross_attention_dim is not None:
        inputs["encoder_hidden_states"] = t.randn(batch, CLIP_TOKENS, cfg.cross_attention_dim)
    if cfg.num_embeds_ada_norm is not None:
        inputs["timestep"] = t.long((batch,), 500)
    return inputs


def _builders() -> dict[type, _Builder]:
    # Imported here: diffusers is slow to import and only needed once a model exists.
    from diffusers import (
        DiTTransformer2DModel,
        PixArtTransformer2DModel,
        Transformer2DModel,
        UNet2DConditionModel,
        UNet2DModel,
    )

    return {
        UNet2DConditionModel: _unet_condition_inputs,
        UNet2DModel: _unet_inputs,
        DiTTransformer2DModel: _dit_inputs,
        PixArtTransformer2DModel: _pixart_inputs,
        Transformer2DModel: _transformer_inputs,
    }


def example_inputs(model: nn.Module, batch: int = 1, resolution: int | None = None) -> dict[str, Any]:
    """Dummy keyword inputs for one forward of a diffusers denoiser, on the model's device and dtype.

    `resolution` is the denoiser's own input height = width (latent pixels for latent models, e.g. 64
    for SD-1.5 at 512 px); default: the model's `config.sample_size`.
    """
    builders = _builders()
    builder = next((b for cls, b in builders.items() if isinstance(model, cls)), None)
    if builder is None:
        names = ", ".join(cls.__name__ for cls in builders)
        raise ValueError(f"no example inputs for {type(model).__name__}; supported: {names}")
    if resolution is not None:
        size = (resolution, resolution)
    else:
        config: Any = model.config
        sample_size = config.sample_size
        size = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
    return builder(model, batch, size)
