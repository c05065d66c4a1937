"""Small shared networks and math of the built-in workload (private: one place, not copied).

* ``ConvEncoder``: the 16x16 image CNN used by the digit classifier and by both image towers.
* ``TextHead``: an MLP over the pooled MiniLM sentence embedding (a tiny CLIP text tower).
* ``contrastive_loss``: CLIP's symmetric InfoNCE, with every same-digit pair in the batch counted as
  a positive (with 10 digits a batch holds many same-digit pairs; treating them as negatives would
  push apart what should match).
* fp16 safetensors save/load with a JSON config next to the weights; never pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class ConvEncoder(nn.Module):
    """(B, in_channels, R, R) in [-1, 1] -> (B, feat_dim) features (before any head); R = 16 by default."""

    def __init__(self, width: int = 32, feat_dim: int = 128, in_channels: int = 1, resolution: int = 16) -> None:
        super().__init__()
        if width % 8:
            raise ValueError(f"width {width} is not a multiple of 8: GroupNorm uses 8 groups, pick e.g. 32")
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.GroupNorm(8, w), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * w), nn.GELU(),  # R/2
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.GroupNorm(8, 2 * w), nn.GELU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * w), nn.GELU(),  # R/4
        )
        side = (resolution + 3) // 4  # two stride-2 convs with padding 1: ceil(ceil(R/2)/2) = ceil(R/4)
        self.fc = nn.Linear(4 * w * side * side, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.fc(self.body(x).flatten(1)))


class TextHead(nn.Module):
    """Pooled MiniLM embedding (B, 384) -> L2-normalised (B, out_dim)."""

    def __init__(self, in_dim: int = 384, hidden: int = 256, out_dim: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(pooled), dim=-1)


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE between normalised image and text embeddings."""
    logits = scale * img @ txt.T
    pos = (labels[:, None] == labels[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    return 0.5 * (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.T.log_softmax(1)).sum(1).mean())


def shift_augment(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Random translations by up to ``max_shift`` pixels (background is -1), per image."""
    b = x.shape[0]
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    h, w = x.shape[-2:]
    return torch.stack([pad[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def save_module(module: nn.Module, name: str, config: dict[str, Any], directory: Path = WEIGHTS_DIR) -> Path:
    """Write ``name.safetensors`` (fp16, contiguous) and ``name.json`` (config + metadata)."""
    path = directory / f"{name}.safetensors"
    save_weights(module, path)
    (directory / f"{name}.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def save_weights(module: nn.Module, path: Path) -> None:
    """Write the floating-point state of ``module`` to ``path`` as fp16 safetensors (contiguous)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items() if v.is_floating_point()}
    save_file(state, str(path))


def load_config(name: str, directory: Path = WEIGHTS_DIR) -> dict[str, Any]:
    path = directory / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `python -m workloads.builtin.train` (or metric_models) to create it")
    return dict(json.loads(path.read_text()))


M = TypeVar("M", bound=nn.Module)


def load_state(module: M, name: str, directory: Path = WEIGHTS_DIR) -> M:
    """Load ``name.safetensors`` into ``module`` (see ``load_weights``)."""
    return load_weights(module, directory / f"{name}.safetensors")


def load_weights(module: M, path: Path) -> M:
    """Load fp16 safetensors into ``module`` (kept in float32), strictly: every tensor must match."""
    from safetensors.torch import load_file

    state = {k: v.float() for k, v in load_file(str(path)).items()}
    module.load_state_dict(state, strict=True)
    module.float().eval()
    return module
