"""Train the built-in text-to-image denoiser and write the shipped weights (seeded, CPU, 1 thread).

    python -m workloads.builtin.train --kind unet      # ~20 min on one CPU core
    python -m workloads.builtin.train --kind dit

Stages:
1. Encode every TRAIN prompt wording once with the frozen MiniLM (the encoder never changes).
2. Pretrain the conditioner's text head (a tiny CLIP text tower) contrastively against a throwaway
   image CNN, so that prompts of one digit land together whatever their wording; then freeze it.
3. Train denoiser + context projections with the epsilon-prediction DDPM loss; 10% of prompts are
   replaced by the empty prompt for classifier-free guidance; an EMA of the weights is shipped.
Only TRAIN wordings are seen here; HELDOUT wordings are for ``workloads.builtin.evaluate``.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _nets
from .data import load_split, stroke_thickness
from .model import (
    CONDITIONER_CONFIG,
    DIT_CONFIG,
    SCHEDULER_CONFIG,
    UNET_CONFIG,
    TextConditioner,
    build_denoiser,
    denoise,
)
from .text import TextEmbeddings, get_encoder, prompt_table


class PromptSampler:
    """Draws, for each training image, one TRAIN wording of its digit (style-matched half the time)."""

    def __init__(self, labels: np.ndarray, styles: list[str]) -> None:
        table = prompt_table(heldout=False)
        self.prompts = [p for p, _, _ in table] + [""]
        self.empty = len(table)
        by: dict[tuple[int, str], list[int]] = {}
        for i, (_, d, s) in enumerate(table):
            by.setdefault((d, s), []).append(i)
        self.by = {k: torch.tensor(v) for k, v in by.items()}
        self.labels, self.styles = labels, styles

    def draw(self, idx: torch.Tensor, gen: torch.Generator, drop: float = 0.0) -> torch.Tensor:
        out = torch.empty(len(idx), dtype=torch.long)
        u = torch.rand(len(idx), generator=gen)
        for j, i in enumerate(idx.tolist()):
            d, s = int(self.labels[i]), self.styles[i]
            pool = self.by[(d, s)] if (s and u[j] < 0.5) else self.by[(d, "")]
            out[j] = pool[torch.randint(len(pool), (1,), generator=gen)]
        if drop > 0:
            out[torch.rand(len(idx), generator=gen) < drop] = self.empty
        return out


def style_labels(images: np.ndarray, source: np.ndarray) -> list[str]:
    """'thick' / 'thin' for the top / bottom third of ink within each source, '' otherwise."""
    ink = stroke_thickness(images)
    out = [""] * len(ink)
    for src in np.unique(source):
        sel = np.where(source == src)[0]
        lo, hi = np.percentile(ink[sel], [33, 67])
        for i in sel:
            out[i] = "thick" if ink[i] > hi else "thin" if ink[i] < lo else ""
    return out


def pretrain_text_head(head: nn.Module, x: torch.Tensor, labels: torch.Tensor, emb: TextEmbeddings,
                       sampler: PromptSampler, gen: torch.Generator, steps: int, log: bool = True) -> None:
    """Stage 2: CLIP-style contrastive training of ``head`` against a throwaway image tower."""
    out_features = int(head.net[-1].out_features)  # type: ignore[index, union-attr]
    tower = nn.Sequential(_nets.ConvEncoder(32, 128), nn.Linear(128, out_features))
    scale = nn.Parameter(torch.tensor(math.log(10.0)))
    opt = torch.optim.AdamW([*head.parameters(), *tower.parameters(), scale], lr=2e-3, weight_decay=0.01)
    for step in range(steps):
        idx = torch.randint(len(x), (256,), generator=gen)
        p = sampler.draw(idx, gen)
        img = F.normalize(tower(_nets.shift_augment(x[idx], gen)), dim=-1)
        loss = _nets.contrastive_loss(img, head(emb.pooled[p]), labels[idx], scale.exp().clamp(max=100))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log and (step % 100 == 0 or step == steps - 1):
            print(f"  text-head step {step:4d} loss {loss.item():.3f}", flush=True)


def warmup_cosine(step: int, steps: int, lr: float) -> float:
    """Linear warmup over min(200, steps/10) steps, then cosine decay to 10% of ``lr``."""
    warmup = max(1, min(200, steps // 10))
    return lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))


def epsilon_loss(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
                 abar: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """DDPM epsilon-prediction loss: noise ``x0`` to a random timestep, ``predict(xt, t)`` the noise."""
    t = torch.randint(0, len(abar), (x0.shape[0],), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    a = abar[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    return F.mse_loss(predict(xt, t), noise)


def train_with_ema(modules: Sequence[nn.Module], batch_loss: Callable[[int], torch.Tensor], *, steps: int,
                   lr: float, ema: float, ckpt_every: int = 0,
                   checkpoint: Callable[[int, list[nn.Module]], None] | None = None) -> list[nn.Module]:
    """AdamW on the trainable parameters of ``modules`` (warmup + cosine, grad-norm clip 1) with an EMA.

    ``batch_loss(step)`` draws a batch and returns its loss. Returns the EMA copies of ``modules``
    (what is shipped); ``checkpoint(step, emas)`` is called every ``ckpt_every`` steps when given.
    """
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    emas = [copy.deepcopy(m).requires_grad_(False) for m in modules]
    t_loop, running = time.time(), 0.0
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(step, steps, lr)
        loss = batch_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(ema, (1 + step) / (10 + step))  # short memory early, while the weights move fast
        with torch.no_grad():
            for src, dst in zip(modules, emas, strict=True):
                for ps, pd in zip(src.parameters(), dst.parameters(), strict=True):
                    pd.lerp_(ps, 1 - decay)
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 50 == 0 or step == steps - 1:
            el = time.time() - t_loop
            print(f"step {step:5d} loss {running:.4f} lr {warmup_cosine(step, steps, lr):.2e} {el / (step + 1):.2f}s/step "
                  f"eta {el / (step + 1) * (steps - step - 1) / 60:.1f} min", flush=True)
        if checkpoint is not None and ckpt_every and step and step % ckpt_every == 0:
            checkpoint(step, emas)
    return emas


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["unet", "dit"], default="unet")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--cfg-drop", type=float, default=0.1)
    ap.add_argument("--head-steps", type=int, default=300)
    ap.add_argument("--guidance", type=float, default=1.5, help="guidance scale recorded in the config")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=_nets.WEIGHTS_DIR)
    ap.add_argument("--ckpt-every", type=int, default=0, help="also write EMA snapshots to OUT/ckpt-STEP/")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)  # with a busy neighbour, 2 OpenMP threads ran 50x slower than 1
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t_start = time.time()

    data = load_split("train")
    x = torch.from_numpy(data.images) * 2 - 1
    labels = torch.from_numpy(data.labels)
    sampler = PromptSampler(data.labels, style_labels(data.images, data.source))
    emb = get_encoder().encode(sampler.prompts)
    print(f"data {len(x)} images, {len(sampler.prompts)} prompts encoded in {time.time() - t_start:.0f}s", flush=True)

    cond = TextConditioner(**CONDITIONER_CONFIG)
    pretrain_text_head(cond.text_head, x, labels, emb, sampler, gen, args.head_steps)
    cond.text_head.requires_grad_(False)

    denoiser = build_denoiser(args.kind)
    n_params = sum(p.numel() for p in denoiser.parameters())
    print(f"{args.kind}: {n_params / 1e6:.2f} M parameters", flush=True)
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(SCHEDULER_CONFIG)
    abar = sched.alphas_cumprod.float()

    def save(out: Path, step: int, ema_d: nn.Module, ema_c: nn.Module) -> None:
        meta = dict(kind=args.kind, steps=step, params=n_params, seed=args.seed, batch=args.batch, lr=args.lr,
                    ema=args.ema, cfg_drop=args.cfg_drop, train_seconds=round(time.time() - t_start, 1))
        cfg = dict(meta, denoiser=UNET_CONFIG if args.kind == "unet" else DIT_CONFIG, scheduler=SCHEDULER_CONFIG,
                   conditioner=CONDITIONER_CONFIG, guidance_scale=args.guidance, image_shape=[1, 16, 16])
        _nets.save_module(ema_d, f"{args.kind}_denoiser", cfg, out)
        _nets.save_module(ema_c, f"{args.kind}_conditioner", dict(meta, **CONDITIONER_CONFIG), out)

    def batch_loss(step: int) -> torch.Tensor:
        idx = torch.randint(len(x), (args.batch,), generator=gen)
        p = sampler.draw(idx, gen, drop=args.cfg_drop)
        context, mask = cond(emb.index(p))
        return epsilon_loss(lambda xt, t: denoise(denoiser, xt, t, context, mask), x[idx], abar, gen)

    ema_d, ema_c = train_with_ema(
        [denoiser, cond], batch_loss, steps=args.steps, lr=args.lr, ema=args.ema, ckpt_every=args.ckpt_every,
        checkpoint=lambda step, emas: save(args.out / f"ckpt-{step}", step, *emas),
    )
    save(args.out, args.steps, ema_d, ema_c)
    print(f"done: {args.steps} steps, total {(time.time() - t_start) / 60:.1f} min -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
