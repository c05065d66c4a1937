"""Diffusers denoisers: loading one (UNet or transformer) from a local directory or a built-in config
name, and the example inputs of one forward of each supported family.

This is the only place that knows diffusers' model families; `quant` stays model-agnostic and takes
any `nn.Module` plus example inputs (`quant.layers.inventory`).

Loading never touches the network (`local_files_only=True`) and only reads safetensors weights. A
model with no weights (a bare config.json, a built-in name, or `device="meta"`) is built on the meta
device: every shape is right and nothing is allocated, which is all the layer inventory needs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant.errors import BitsearchError
from quant.layers import layer_kind

if TYPE_CHECKING:
    from torch import Tensor, nn

BUILTIN_CONFIGS = Path(__file__).parent / "model_configs"

# Where a pipeline keeps its denoiser, in the order we look.
DENOISER_SUBFOLDERS = ("unet", "transformer")
# The timestep-embedding layers of diffusers' UNets (time_embedding), DiT/PixArt (timestep_embedder,
# t_embedder) and the built-in model: kept in float by the `float-ends` baseline.
TIME_EMBEDDING = re.compile(r"time_?emb|timestep_?emb|t_embedder")

_WEIGHTS_STEM = "diffusion_pytorch_model"


class ModelLoadError(BitsearchError, ValueError):
    """The path or name does not lead to a loadable diffusers denoiser; the message says what was expected."""


def builtin_names() -> list[str]:
    """Names accepted by `load_denoiser` without a path: the configs shipped in workloads/model_configs/."""
    return sorted(p.stem for p in BUILTIN_CONFIGS.glob("*.json"))


def load_denoiser(path_or_name: str, device: str = "cpu", random_weights: bool = False) -> nn.Module:
    """The denoiser of a pipeline directory, a model directory, or a built-in config name.

    - pipeline directory (has model_index.json): its `unet/` or `transformer/` subfolder;
    - model directory (has config.json): loaded with its safetensors weights, or built on the meta
      device when the directory holds no weights;
    - built-in name (see `builtin_names()`): an architecture with no weights: built on the meta device,
      or, with `random_weights`, with seeded random ones on `device` (to time its kernels, never to sample).

    `device="meta"` skips the weights of any model (fast, for inspection only).
    Raises ModelLoadError with a one-line message on anything else.
    """
    if path_or_name in builtin_names() and not Path(path_or_name).exists():
        config = _read_json(BUILTIN_CONFIGS / f"{path_or_name}.json")
        return _checked(_build(config, path_or_name, device if random_weights else "meta"), path_or_name)

    path = Path(path_or_name)
    expected = (
        "expected a diffusers pipeline directory (model_index.json), a model directory (config.json) "
        f"or a built-in name ({', '.join(builtin_names())})"
    )
    if not path.is_dir():
        raise ModelLoadError(f"{path_or_name}: not a directory; {expected}")
    if (path / "model_index.json").is_file():
        return _checked(_load_model_dir(_pipeline_denoiser_dir(path), device), path_or_name)
    if (path / "config.json").is_file():
        return _checked(_load_model_dir(path, device), path_or_name)
    raise ModelLoadError(f"{path_or_name}: has neither model_index.json nor config.json; {expected}")


def _pipeline_denoiser_dir(pipeline: Path) -> Path:
    index = _read_json(pipeline / "model_index.json")
    for sub in DENOISER_SUBFOLDERS:
        if sub in index and (pipeline / sub / "config.json").is_file():
            return pipeline / sub
    raise ModelLoadError(
        f"{pipeline}: pipeline has no denoiser; expected a '{DENOISER_SUBFOLDERS[0]}' or "
        f"'{DENOISER_SUBFOLDERS[1]}' component with a config.json"
    )


def _load_model_dir(directory: Path, device: str) -> nn.Module:
    config = _read_json(directory / "config.json")
    variant = None if device == "meta" else _weights_variant(directory)
    if variant is None:
        return _build(config, str(directory), "meta")
    cls = _model_class(config, str(directory))
    try:
        model = cls.from_pretrained(
            directory, local_files_only=True, use_safetensors=True, variant=variant or None
        )
    except Exception as err:  # diffusers raises many types for a broken checkpoint; report one line
        raise ModelLoadError(
            f"{directory}: could not load {cls.__name__} weights: {_first_line(err)}"
        ) from err
    return model.to(device)


def _weights_variant(directory: Path) -> str | None:
    """'' for plain safetensors weights, the variant name (e.g. 'fp16') if only a variant exists,
    None if there are no weights at all. Pickled weights alone are refused, not silently ignored."""
    names = {p.name for p in directory.iterdir()}
    if {f"{_WEIGHTS_STEM}.safetensors", f"{_WEIGHTS_STEM}.safetensors.index.json"} & names:
        return ""
    for name in sorted(names):  # diffusion_pytorch_model.<variant>.safetensors[.index.json]
        parts = name.split(".")
        if parts[0] == _WEIGHTS_STEM and len(parts) >= 3 and parts[2] == "safetensors":
            return parts[1]
    if any(name.endswith((".bin", ".ckpt", ".pt", ".pth")) for name in names):
        raise ModelLoadError(f"{directory}: only pickled weights found; expected {_WEIGHTS_STEM}.safetensors")
    return None


def _build(config: dict[str, Any], source: str, device: str) -> nn.Module:
    """The model of `config`: on the meta device (no memory), or initialised with seed 0 elsewhere."""
    import torch

    cls = _model_class(config, source)
    try:
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(0)
            model = cls.from_config(config)
    except Exception as err:  # a config the class rejects; report one line
        raise ModelLoadError(
            f"{source}: could not build {cls.__name__} from its config: {_first_line(err)}"
        ) from err
    assert isinstance(model, torch.nn.Module)
    return model


def _model_class(config: dict[str, Any], source: str) -> Any:
    import diffusers

    name = config.get("_class_name")
    if not isinstance(name, str):
        raise ModelLoadError(f'{source}: config.json has no "_class_name"; expected a diffusers model config')
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise ModelLoadError(f"{source}: {name!r} is not a diffusers model class")
    return cls


def _checked(model: nn.Module, source: str) -> nn.Module:
    if not any(layer_kind(m) for m in model.modules()):
        raise ModelLoadError(
            f"{source}: {type(model).__name__} has no nn.Linear or nn.Conv2d layer to quantize"
        )
    return model


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path}: unreadable JSON: {_first_line(err)}") from err
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# Text-conditioning length each family is run with: CLIP's 77 tokens for the SD UNets, the 120 T5
# tokens the PixArt-alpha pipeline pads prompts to.
CLIP_TOKENS = 77
T5_TOKENS = 120


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
