"""Fidelity metrics shared by every workload: how close a quantized run stays to full precision on
the same batch (same prompts, seeds and initial noise). Images are (B, C, H, W) in [0, 1].

- `sqnr_db`: signal-to-quantization-noise ratio of the denoiser outputs, all steps pooled. The most
  stable signal for ranking configs: it sees every step's error before the sampler averages it out.
- `psnr_db`, `ssim`: of the final images (torchmetrics' implementations).

- `label_accuracy`, `label_probability`: how often a classifier reads each image as the class it was
  asked for (class-conditional workloads with a user's classifier).

Workload-specific distribution and alignment metrics live with their workload (e.g. the built-in
model's classifier-based Fréchet distance and prompt accuracy).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from quant.quantities import Quantity, declare

if TYPE_CHECKING:
    from workloads.base import Generation


# Every metric a built-in workload returns (workloads with metrics of their own declare them the same way).
declare(
    Quantity("psnr_db", "dB", True, "PSNR of the final images to full precision (same seeds)"),
    Quantity("ssim", "", True, "structural similarity of the final images to full precision"),
    Quantity("sqnr_db", "dB", True, "SQNR of the per-step denoiser outputs to full precision"),
    Quantity("prompt_accuracy", "", True, "share of images the shipped classifier reads as their prompt"),
    Quantity("prompt_probability", "", True, "the classifier's probability of the prompted class"),
    Quantity("clip_score", "", True, "CLIP-style text-image score (the shipped pair)"),
    Quantity("clip_score_real", "", True, "CLIPScore with a real CLIP model"),
    Quantity("fcd", "", False, "Fréchet distance of classifier features to real images"),
    # class-conditional workloads, with the user's classifier (workloads.class_conditional)
    Quantity("label_accuracy", "", True, "share of images the user's classifier reads as their class label"),
    Quantity("label_probability", "", True, "the user's classifier's probability of the asked class"),
)
QUALITY = "psnr_db"  # the fidelity metric every workload returns: what promotion and the solvers rank by


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """10 log10(sum ref^2 / sum (ref - test)^2) over the whole tensor; inf when identical."""
    ref, tst = reference.double(), test.double()
    noise = float((ref - tst).pow(2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float(ref.pow(2).sum()) / noise)


def psnr_db(reference: torch.Tensor, test: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio of test vs reference images, MSE pooled over the batch; inf when identical."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    if torch.equal(reference, test):
        return math.inf
    return float(peak_signal_noise_ratio(test.double(), reference.double(), data_range=data_range))


def ssim(reference: torch.Tensor, test: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean structural similarity (Gaussian window; 7x7 when images are small, else 11x11)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    kernel = 7 if min(reference.shape[-2:]) < 32 else 11
    value = structural_similarity_index_measure(test.double(), reference.double(), data_range=data_range,
                                                kernel_size=kernel)
    assert isinstance(value, torch.Tensor)  # a tuple only with return_full_image=True
    return float(value)


def fidelity(reference: Generation, test: Generation) -> dict[str, float]:
    """SQNR of per-step denoiser outputs (when both runs recorded them), PSNR and SSIM of images."""
    out = {"psnr_db": psnr_db(reference.images, test.images), "ssim": ssim(reference.images, test.images)}
    if reference.step_outputs and test.step_outputs:
        out["sqnr_db"] = sqnr_db(torch.stack(reference.step_outputs), torch.stack(test.step_outputs))
    return out


def label_probabilities(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image, the softmax probability of its asked class: (B, classes) logits, (B,) labels -> (B,)."""
    return torch.softmax(logits.double(), dim=-1).gather(1, labels.long().view(-1, 1)).squeeze(1)


def label_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose most likely class is the asked one."""
    return float((logits.argmax(dim=-1) == labels.long()).double().mean())
