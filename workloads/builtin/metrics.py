"""Metrics specific to the built-in workload; each says what it measures. Images are (B, 1, 16, 16) in [0, 1].

Fidelity to full precision (SQNR, PSNR, SSIM) is shared by every workload: see ``workloads.metrics``.
Here: distribution quality, ``frechet_classifier_distance`` (FCD), with ``fcd_noise_floor`` measured
real-vs-real. Text alignment: ``prompt_accuracy`` and its continuous form ``prompt_probabilities`` (independent
classifier), ``clip_score``/``clip_scores`` (the shipped CLIP-style pair), or ``hf_clip_score`` with a
real CLIP model the user has on disk. Quality and alignment are separate numbers on purpose: the decoupled
sensitivity estimator needs both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# The fewest images per set FCD is defined for: a covariance of one sample is undefined (NaN, and
# numpy's eigh then raises LinAlgError). Studies check full_samples against it (Workload.min_images).
FCD_MIN_IMAGES = 2


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2), float64, via symmetric eigendecompositions."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if min(len(a), len(b)) < FCD_MIN_IMAGES:
        raise ValueError(f"the Frechet distance needs at least {FCD_MIN_IMAGES} samples per set, "
                         f"got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ sb @ root_a), 0, None)).sum()  # Tr (S_a^1/2 S_b S_a^1/2)^1/2
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * cross)


@torch.no_grad()
def classifier_features(images: torch.Tensor, classifier: Any | None = None) -> np.ndarray:
    """The shipped digit classifier's 128-d penultimate features (Inception's role in FID)."""
    from .metric_models import load_classifier

    clf = classifier or load_classifier()
    return clf.features(images.float()).double().numpy()


def frechet_classifier_distance(images_a: torch.Tensor, images_b: torch.Tensor, classifier: Any | None = None) -> float:
    """FCD: the Frechet distance between two image sets in digit-classifier feature space.

    Not FID: the features come from a 16x16 digit classifier, so values are comparable only with
    each other and with ``fcd_noise_floor`` at the same sample count.
    """
    from .metric_models import load_classifier

    clf = classifier or load_classifier()
    return frechet_distance(classifier_features(images_a, clf), classifier_features(images_b, clf))


def real_images(n: int, offset: int = 0) -> torch.Tensor:
    """n real TEST-split digits starting at ``offset`` (a fixed shuffle mixes both sources)."""
    from .data import load_split

    te = load_split("test")
    order = np.random.default_rng(0).permutation(len(te))
    if offset + n > len(order):
        raise ValueError(f"only {len(order)} real test images; asked for {offset}..{offset + n}")
    return torch.from_numpy(te.images[order[offset : offset + n]])


def fcd_noise_floor(n: int = 500, classifier: Any | None = None) -> float:
    """FCD between two disjoint sets of n real test digits: differences below this are noise (n <= 648)."""
    return frechet_classifier_distance(real_images(n), real_images(n, n), classifier)


@torch.no_grad()
def prompt_accuracy(images: torch.Tensor, digits: Sequence[int], classifier: Any | None = None) -> float:
    """Share of images that the independent classifier assigns to the prompted digit."""
    from .metric_models import load_classifier

    clf = classifier or load_classifier()
    return float((clf(images.float()).argmax(1) == torch.as_tensor(list(digits))).float().mean().item())


@torch.no_grad()
def prompt_probabilities(images: torch.Tensor, digits: Sequence[int], classifier: Any | None = None) -> torch.Tensor:
    """Per image, the independent classifier's probability (softmax) of the prompted digit: a continuous
    prompt accuracy (their mean is ``prompt_probability``), which moves with every image instead of in
    steps of 1/len(images). Shape (B,), float64."""
    from .metric_models import load_classifier

    clf = classifier or load_classifier()
    probs = clf(images.float()).double().softmax(1)
    return probs[torch.arange(len(probs)), torch.as_tensor(list(digits))]


@torch.no_grad()
def clip_scores(images: torch.Tensor, prompts: Sequence[str], clip: Any | None = None) -> torch.Tensor:
    """Per image, 100 * max(cos(image, prompt), 0) with the shipped CLIP-style pair. Shape (B,), float64."""
    from .metric_models import load_clip

    model = clip or load_clip()
    cos = (model.embed_images(images.float()) * model.embed_prompts(list(prompts))).sum(-1)
    return (100 * cos.clamp(min=0)).double()


def clip_score(images: torch.Tensor, prompts: Sequence[str], clip: Any | None = None) -> float:
    """CLIPScore with the shipped CLIP-style pair: the mean over images of ``clip_scores``."""
    return float(clip_scores(images, prompts, clip).mean())


@torch.no_grad()
def hf_clip_score(images: torch.Tensor, prompts: Sequence[str], model_path: str | Path) -> float:
    """CLIPScore with a real CLIP model from a LOCAL directory (``transformers`` CLIPModel; no download)."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(model_path), local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(str(model_path), local_files_only=True)
    rgb = [(im.expand(3, -1, -1).permute(1, 2, 0).numpy() * 255).astype(np.uint8) for im in images.float()]
    batch = proc(text=list(prompts), images=rgb, return_tensors="pt", padding=True, truncation=True)
    out = model(**batch)
    cos = F.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
    return float((100 * cos.clamp(min=0)).mean().item())
