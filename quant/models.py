"""Load a diffusers denoiser (UNet or transformer) from a local directory or a built-in config name.

Never touches the network (`local_files_only=True`) and only reads safetensors weights. A model with no
weights (a bare config.json, a built-in name, or `device="meta"`) is built on the meta device: every
shape is right and nothing is allocated, which is all the layer inventory needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BitsearchError
from .layers import layer_kind

if TYPE_CHECKING:
    from torch import nn

BUILTIN_CONFIGS = Path(__file__).parent / "model_configs"

# Where a pipeline keeps its denoiser, in the order we look.
DENOISER_SUBFOLDERS = ("unet", "transformer")

_WEIGHTS_STEM = "diffusion_pytorch_model"


class ModelLoadError(BitsearchError, ValueError):
    """The path or name does not lead to a loadable diffusers denoiser; the message says what was expected."""


def builtin_names() -> list[str]:
    """Names accepted by `load_denoiser` without a path: the configs shipped in quant/model_configs/."""
    return sorted(p.stem for p in BUILTIN_CONFIGS.glob("*.json"))


def load_denoiser(path_or_name: str, device: str = "cpu") -> nn.Module:
    """The denoiser of a pipeline directory, a model directory, or a built-in config name.

    - pipeline directory (has model_index.json): its `unet/` or `transformer/` subfolder;
    - model directory (has config.json): loaded with its safetensors weights, or built on the meta
      device when the directory holds no weights;
    - built-in name (see `builtin_names()`): always built on the meta device.

    `device="meta"` skips the weights of any model (fast, for inspection only).
    Raises ModelLoadError with a one-line message on anything else.
    """
    if path_or_name in builtin_names() and not Path(path_or_name).exists():
        config = _read_json(BUILTIN_CONFIGS / f"{path_or_name}.json")
        return _checked(_build_on_meta(config, path_or_name), path_or_name)

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
        return _build_on_meta(config, str(directory))
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


def _build_on_meta(config: dict[str, Any], source: str) -> nn.Module:
    import torch

    cls = _model_class(config, source)
    try:
        with torch.device("meta"):
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
