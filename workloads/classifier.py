"""A small CNN image classifier for any labelled image set: the judge of class-conditional samples.

``ImageClassifier`` takes images in [0, 1], shape (B, C, H, W) (resized to its ``resolution`` when H, W
differ) and returns logits; ``features`` gives the penultimate vector (for a Frechet distance). It is
the built-in digit classifier's network (``workloads.builtin._nets.ConvEncoder`` + a linear head) made
generic in channels, resolution and classes.

On disk a classifier is a directory with ``config.json`` and ``model.safetensors`` (fp16 on disk,
float32 in memory; never pickle). ``train_classifier`` is seeded and runs on the CPU: AdamW with a
cosine learning rate, label smoothing and random 1-pixel shifts (background = black).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .builtin._nets import ConvEncoder, load_weights, save_weights, shift_augment

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_ARCH_KEYS = ("in_channels", "resolution", "num_classes", "width", "feat_dim")


class ImageClassifier(nn.Module):
    """(B, C, H, W) in [0, 1] -> logits (B, num_classes); ``features`` -> penultimate (B, feat_dim)."""

    def __init__(self, in_channels: int, resolution: int, num_classes: int, width: int = 32, feat_dim: int = 128) -> None:
        super().__init__()
        if in_channels < 1 or resolution < 4 or num_classes < 2:
            raise ValueError(
                f"ImageClassifier needs in_channels >= 1, resolution >= 4 and num_classes >= 2, "
                f"got {in_channels}, {resolution}, {num_classes}"
            )
        self.in_channels, self.resolution, self.num_classes = in_channels, resolution, num_classes
        self.width, self.feat_dim = width, feat_dim
        self.encoder = ConvEncoder(width, feat_dim, in_channels=in_channels, resolution=resolution)
        self.head = nn.Linear(feat_dim, num_classes)

    def config(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in _ARCH_KEYS}

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"expected images of shape (B, {self.in_channels}, H, W) in [0, 1], got {tuple(images.shape)}"
            )
        if images.shape[-2:] != (self.resolution, self.resolution):
            images = F.interpolate(images.float(), size=(self.resolution, self.resolution), mode="bilinear",
                                   antialias=True, align_corners=False)
        return images.float() * 2 - 1

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._prepare(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def save_classifier(model: ImageClassifier, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` (architecture + optional ``metadata``) and ``model.safetensors`` (fp16)."""
    directory = Path(directory)
    save_weights(model, directory / WEIGHTS_FILE)
    config = {**(metadata or {}), **model.config()}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def load_classifier(directory: str | Path) -> ImageClassifier:
    """Load a directory written by ``save_classifier`` (safetensors only), in eval mode, frozen."""
    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"classifier {name} missing in {directory}: write it with save_classifier()")
    config = json.loads((directory / CONFIG_FILE).read_text())
    missing = [k for k in _ARCH_KEYS[:3] if k not in config]
    if missing:
        raise ValueError(f"{directory / CONFIG_FILE} lacks {', '.join(missing)}: re-save it with save_classifier()")
    model = ImageClassifier(**{k: int(config[k]) for k in _ARCH_KEYS if k in config})
    return load_weights(model, directory / WEIGHTS_FILE).requires_grad_(False)


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: float,
    seed: int,
    num_classes: int | None = None,
    width: int = 32,
    feat_dim: int = 128,
    batch_size: int = 128,
    lr: float = 2e-3,
    log: Callable[[str], None] | None = print,
) -> ImageClassifier:
    """Train an ``ImageClassifier`` on ``images`` (N, C, R, R) in [0, 1] with int ``labels`` (N,).

    ``epochs`` may be fractional (steps = epochs * N / batch_size). Deterministic for a seed on the
    CPU with one thread. ``num_classes`` defaults to ``labels.max() + 1``.
    """
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be (N, C, R, R) in [0, 1], got shape {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be ({images.shape[0]},) to match the images, got {tuple(labels.shape)}")
    if epochs <= 0:
        raise ValueError(f"epochs must be > 0, got {epochs}")
    labels = labels.long()
    classes = int(labels.max()) + 1 if num_classes is None else num_classes
    torch.manual_seed(seed)  # the weight initialisation
    gen = torch.Generator().manual_seed(seed)  # batches and augmentation
    model = ImageClassifier(images.shape[1], images.shape[-1], classes, width, feat_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = max(1, round(epochs * len(images) / batch_size))
    x = images.float() * 2 - 1  # shift_augment pads with -1, i.e. black in [0, 1]
    t0 = time.time()
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(len(x), (batch_size,), generator=gen)
        xb = (shift_augment(x[idx], gen) + 1) / 2
        loss = F.cross_entropy(model(xb), labels[idx], label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log is not None and (step % 250 == 0 or step == steps - 1):
            log(f"  classifier step {step:5d}/{steps} loss {loss.item():.3f} [{time.time() - t0:.0f}s]")
    return model.eval()


@torch.no_grad()
def accuracy(model: ImageClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Share of ``images`` whose argmax logit equals ``labels``."""
    hits = sum(int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
               for i in range(0, len(images), batch_size))
    return hits / max(1, len(images))
