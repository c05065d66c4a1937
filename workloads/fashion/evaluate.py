"""Sample the Fashion-MNIST UNet with a plain diffusers DDIM loop and grade the samples with the classifier.

    python -m workloads.fashion.evaluate --grid docs/fashion_samples.png   # under a minute on one CPU core

Reports the classifier's held-out accuracy on the 10,000 test images (when the data is installed) and
the label accuracy of the samples: the share the classifier assigns to the class they were asked
for. Image j of class c uses seed ``base + 1000 c + j``; guidance runs the null-class and the class
halves as one batched UNet call per step.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from ..builtin.sampling import initial_noise
from ..classifier import ImageClassifier, accuracy, load_classifier
from . import data
from .train import NULL_CLASS, WEIGHTS_DIR

if TYPE_CHECKING:
    from diffusers.models import UNet2DModel


def load_unet(directory: Path = WEIGHTS_DIR / "unet") -> tuple[UNet2DModel, dict[str, Any]]:
    """The shipped UNet (float32, eval) and its scheduler config."""
    from diffusers.models import UNet2DModel

    path = directory / "scheduler_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run `python -m workloads.fashion.train` to write the weights")
    unet = UNet2DModel.from_pretrained(str(directory), use_safetensors=True, low_cpu_mem_usage=False).eval().requires_grad_(False)
    return unet, dict(json.loads(path.read_text()))


@torch.no_grad()
def sample(unet: UNet2DModel, scheduler_config: dict[str, Any], labels: Sequence[int], seeds: Sequence[int], *,
           num_steps: int = 20, guidance_scale: float = 2.0, null_class: int = NULL_CLASS) -> torch.Tensor:
    """One image per (label, seed), in [0, 1], shape (B, 1, 16, 16); guidance 1 is the plain conditional model."""
    from diffusers import DDIMScheduler

    if len(labels) != len(seeds):
        raise ValueError(f"got {len(labels)} labels for {len(seeds)} seeds: give one seed per image")
    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(num_steps)
    x = initial_noise(seeds)
    cond = torch.tensor(list(labels), dtype=torch.long)
    guided = guidance_scale != 1.0
    classes = torch.cat([torch.full_like(cond, null_class), cond]) if guided else cond
    for t in sched.timesteps:
        eps = unet(torch.cat([x, x]) if guided else x, t, class_labels=classes).sample
        if guided:
            uncond, conditional = eps.chunk(2)
            eps = uncond + guidance_scale * (conditional - uncond)
        x = sched.step(eps, t, x).prev_sample
    return ((x + 1) / 2).clamp(0, 1)


def save_grid(images: torch.Tensor, rows: int, path: Path) -> None:
    """Images (rows * cols, 1, H, W) as a gray grid, one class per row, labelled with the class names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(images) // rows
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.45 + 1.1, rows * 0.45), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.imshow(images[i, 0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if i % cols == 0:
            ax.set_ylabel(data.CLASS_NAMES[i // cols], rotation=0, ha="right", va="center", fontsize=6)
    fig.subplots_adjust(left=0.17, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def label_accuracy(unet: UNet2DModel, scheduler_config: dict[str, Any], classifier: ImageClassifier, *,
                   per_class: int, num_steps: int, guidance_scale: float, base: int = 0,
                   batch: int = 50) -> tuple[float, list[float], torch.Tensor]:
    """(overall, per-class label accuracy, images ordered class-major) of ``per_class`` samples per class."""
    labels = [c for c in range(10) for _ in range(per_class)]
    seeds = [base + 1000 * c + j for c in range(10) for j in range(per_class)]
    images = torch.cat([sample(unet, scheduler_config, labels[i : i + batch], seeds[i : i + batch],
                               num_steps=num_steps, guidance_scale=guidance_scale)
                        for i in range(0, len(labels), batch)])
    y = torch.tensor(labels)
    with torch.no_grad():
        hit = (classifier(images).argmax(1) == y).float()
    return hit.mean().item(), [hit[y == c].mean().item() for c in range(10)], images


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, nargs="+", default=[2.0])
    ap.add_argument("--base", type=int, default=0, help="seed of image 0 of class 0")
    ap.add_argument("--grid", type=Path, default=None, help="write a PNG of 10 samples per class (first guidance)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    classifier = load_classifier(args.weights / "classifier")
    if data.available():
        test = data.load_split("test")
        acc = accuracy(classifier, torch.from_numpy(test.images), torch.from_numpy(test.labels))
        print(f"classifier held-out accuracy {acc:.4f} on {len(test)} test images", flush=True)
    unet, sched_cfg = load_unet(args.weights / "unet")
    for i, g in enumerate(args.guidance):
        t0 = time.time()
        overall, per, images = label_accuracy(unet, sched_cfg, classifier, per_class=args.per_class,
                                              num_steps=args.steps, guidance_scale=g, base=args.base)
        print(f"guidance {g}: label accuracy {overall:.4f} on {len(images)} samples ({args.steps} DDIM steps) "
              f"[{time.time() - t0:.0f}s]", flush=True)
        print("  per class: " + ", ".join(f"{n} {a:.2f}" for n, a in zip(data.CLASS_NAMES, per, strict=True)))
        if i == 0 and args.grid is not None:
            cols = min(10, args.per_class)
            pick = torch.cat([images[c * args.per_class : c * args.per_class + cols] for c in range(10)])
            save_grid(pick, 10, args.grid)
            print(f"grid -> {args.grid}")


if __name__ == "__main__":
    main()
