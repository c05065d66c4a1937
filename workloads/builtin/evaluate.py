"""Prompt-following of a built-in model on HELD-OUT wordings, judged by the independent classifier.

    python -m workloads.builtin.evaluate --kind unet --n 500 [--grid docs/builtin_samples.png]

Sample j of digit d uses held-out wording ``heldout_prompt(d, j)`` and seed ``base + 1000*d + j``,
so the numbers are reproducible and every wording appears equally often.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from .metric_models import load_classifier
from .model import load_builtin
from .sampling import generate
from .text import heldout_prompt


def eval_prompts(n: int, seed: int = 0) -> tuple[list[str], list[int], list[int]]:
    """n prompts cycling over digits 0..9, their digits and seeds."""
    prompts, digits, seeds = [], [], []
    for k in range(n):
        d, j = k % 10, k // 10
        prompts.append(heldout_prompt(d, j))
        digits.append(d)
        seeds.append(seed + 1000 * d + j)
    return prompts, digits, seeds


def prompt_following(kind: str = "unet", n: int = 500, seed: int = 0, directory: Path | None = None,
                     guidance_scale: float | None = None, num_steps: int = 20, batch: int = 100) -> tuple[float, torch.Tensor]:
    """Share of n samples (held-out wordings) that the classifier assigns to the prompted digit."""
    model = load_builtin(kind, directory)
    clf = load_classifier()
    prompts, digits, seeds = eval_prompts(n, seed)
    images = torch.cat([
        generate(model, prompts[i : i + batch], seeds[i : i + batch], num_steps=num_steps, guidance_scale=guidance_scale)
        for i in range(0, n, batch)
    ])
    with torch.no_grad():
        pred = clf(images).argmax(1)
    return (pred == torch.tensor(digits)).float().mean().item(), pred


def save_grid(kind: str, path: Path, directory: Path | None = None, cols: int = 8, seed: int = 12345, scale: int = 4) -> None:
    """A 10 x cols grid: row d = digit d, column j = held-out wording j, one seed per cell."""
    from PIL import Image, ImageDraw

    model = load_builtin(kind, directory)
    prompts = [heldout_prompt(d, j) for d in range(10) for j in range(cols)]
    seeds = [seed + 100 * d + j for d in range(10) for j in range(cols)]
    img = generate(model, prompts, seeds).numpy()[:, 0]
    cell, pad, left = 16 * scale, 2, 16
    canvas = Image.new("L", (left + cols * (cell + pad), 10 * (cell + pad)), 40)
    draw = ImageDraw.Draw(canvas)
    for k, im in enumerate(img):
        d, j = divmod(k, cols)
        tile = Image.fromarray((im * 255).astype(np.uint8)).resize((cell, cell), Image.Resampling.NEAREST)
        canvas.paste(tile, (left + j * (cell + pad), d * (cell + pad)))
        if j == 0:
            draw.text((4, d * (cell + pad) + cell // 2 - 6), str(d), fill=255)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["unet", "dit"], default="unet")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", type=Path, default=None, help="weights directory (default: the shipped weights)")
    ap.add_argument("--guidance", type=float, nargs="*", default=[None])
    ap.add_argument("--grid", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for g in args.guidance:
        t0 = time.time()
        acc, pred = prompt_following(args.kind, args.n, args.seed, args.dir, g)
        per = [(pred[d::10] == d).float().mean().item() for d in range(10)]
        print(f"{args.kind} guidance {g}: prompt-following {acc:.4f} on {args.n} samples (held-out wordings, seeds from "
              f"{args.seed}); per digit " + " ".join(f"{p:.2f}" for p in per) + f" [{time.time() - t0:.0f}s]", flush=True)
    if args.grid:
        save_grid(args.kind, args.grid, args.dir)
        print(f"grid -> {args.grid}")


if __name__ == "__main__":
    main()
