"""The metric models of the built-in workload, trained on real digits and shipped with the weights.

    python -m workloads.builtin.metric_models      # about 2 minutes on one CPU core

* ``DigitClassifier``: a small CNN trained on the TRAIN split (with 1-pixel shift augmentation); it
  is independent of the denoisers. Its logits judge prompt-following; its 128-d penultimate
  features feed the Frechet distance (FCD: Inception's role, played by a digit classifier).
* ``ClipScorer``: a CLIP-style pair: an image tower trained contrastively against FROZEN MiniLM
  pooled embeddings of TRAIN caption wordings (through a small text head). Zero-shot accuracy is
  reported on HELDOUT wordings over TEST images. It is trained separately from (and seeded
  differently than) the text head inside the denoiser's conditioner, so it does not grade its
  own conditioning.
Both take images in [0, 1], shape (B, 1, 16, 16).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _nets
from .text import EMBED_DIM, TextEmbeddings, heldout_prompt, prompt_table

CLASSIFIER_CONFIG = dict(width=32, feat_dim=128, num_classes=10)
CLIP_CONFIG = dict(width=32, feat_dim=128, embed_dim=64, text_hidden=256)


class DigitClassifier(nn.Module):
    """16x16 digit CNN: ``forward`` -> logits (B, 10); ``features`` -> penultimate (B, 128)."""

    def __init__(self, width: int = 32, feat_dim: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        self.encoder = _nets.ConvEncoder(width, feat_dim)
        self.head = nn.Linear(feat_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class ClipScorer(nn.Module):
    """Image tower + text head into a shared 64-d space; cosine similarity measures text alignment."""

    def __init__(self, width: int = 32, feat_dim: int = 128, embed_dim: int = 64, text_hidden: int = 256) -> None:
        super().__init__()
        self.image_tower = nn.Sequential(_nets.ConvEncoder(width, feat_dim), nn.Linear(feat_dim, embed_dim))
        self.text_head = _nets.TextHead(EMBED_DIM, text_hidden, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_tower(images * 2 - 1), dim=-1)

    def embed_text(self, emb: TextEmbeddings | torch.Tensor) -> torch.Tensor:
        return self.text_head(emb.pooled if isinstance(emb, TextEmbeddings) else emb)

    def embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        from .text import get_encoder

        return self.embed_text(get_encoder().encode(prompts))


def load_classifier() -> DigitClassifier:
    cfg = _nets.load_config("classifier")
    return _nets.load_state(DigitClassifier(**{k: cfg[k] for k in CLASSIFIER_CONFIG}), "classifier").requires_grad_(False)


def load_clip() -> ClipScorer:
    cfg = _nets.load_config("clip")
    clip = _nets.load_state(ClipScorer(**{k: cfg[k] for k in CLIP_CONFIG}), "clip")
    clip.requires_grad_(False)
    return clip


@torch.no_grad()
def zero_shot_accuracy(clip: ClipScorer, images: torch.Tensor, labels: torch.Tensor, wordings: int = 16) -> list[float]:
    """Per held-out wording i: accuracy of argmax_d cos(image, text(heldout_prompt(d, i)))."""
    img = clip.embed_images(images)
    accs = []
    for i in range(wordings):
        txt = clip.embed_prompts([heldout_prompt(d, i) for d in range(10)])
        accs.append(((img @ txt.T).argmax(1) == labels).float().mean().item())
    return accs


def train_classifier(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, steps: int = 1500) -> DigitClassifier:
    model = DigitClassifier(**CLASSIFIER_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(len(x), (128,), generator=gen)
        xb = (_nets.shift_augment(x[idx] * 2 - 1, gen) + 1) / 2
        loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0:
            print(f"  classifier step {step:4d} loss {loss.item():.3f}", flush=True)
    return model.eval()


def train_clip(x: torch.Tensor, y: torch.Tensor, emb: TextEmbeddings, by_digit: list[torch.Tensor],
               gen: torch.Generator, steps: int = 600) -> ClipScorer:
    model = ClipScorer(**CLIP_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    for step in range(steps):
        idx = torch.randint(len(x), (256,), generator=gen)
        p = torch.stack([by_digit[int(d)][torch.randint(len(by_digit[int(d)]), (1,), generator=gen)][0] for d in y[idx]])
        img = model.embed_images((_nets.shift_augment(x[idx] * 2 - 1, gen) + 1) / 2)
        loss = _nets.contrastive_loss(img, model.embed_text(emb.pooled[p]), y[idx], model.logit_scale.exp().clamp(max=100))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"  clip step {step:4d} loss {loss.item():.3f}", flush=True)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=_nets.WEIGHTS_DIR)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    from .data import load_split
    from .text import get_encoder

    t0 = time.time()
    tr, te = load_split("train"), load_split("test")
    x, y = torch.from_numpy(tr.images), torch.from_numpy(tr.labels)
    xt, yt = torch.from_numpy(te.images), torch.from_numpy(te.labels)

    clf = train_classifier(x, y, gen)
    with torch.no_grad():
        acc = (clf(xt).argmax(1) == yt).float().mean().item()
        acc_src = {s: (clf(xt[te.source == i]).argmax(1) == yt[te.source == i]).float().mean().item()
                   for i, s in enumerate(("mnist", "sklearn"))}
    print(f"classifier held-out accuracy {acc:.4f} on {len(yt)} test images "
          f"(mnist {acc_src['mnist']:.4f}, sklearn {acc_src['sklearn']:.4f}) [{time.time() - t0:.0f}s]", flush=True)
    _nets.save_module(clf, "classifier", dict(CLASSIFIER_CONFIG, heldout_accuracy=round(acc, 4), seed=args.seed,
                                              test_images=len(yt)), args.out)

    # Caption wordings: TRAIN templates only (style suffixes are irrelevant to the digit).
    table = [(p, d) for p, d, s in prompt_table(heldout=False) if not s]
    emb = get_encoder().encode([p for p, _ in table])
    by_digit = [torch.tensor([i for i, (_, d) in enumerate(table) if d == k]) for k in range(10)]
    clip = train_clip(x, y, emb, by_digit, gen)
    accs = zero_shot_accuracy(clip, xt, yt)
    zs = sum(accs) / len(accs)
    print(f"clip zero-shot accuracy on held-out wordings {zs:.4f} (min {min(accs):.4f} over {len(accs)} wordings, "
          f"{len(yt)} test images) [{time.time() - t0:.0f}s]", flush=True)
    _nets.save_module(clip, "clip", dict(CLIP_CONFIG, zero_shot_heldout=round(zs, 4), seed=args.seed), args.out)


if __name__ == "__main__":
    main()
