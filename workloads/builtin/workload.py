"""The `builtin` workload: the shipped text-to-digit model, its sampler, fixed prompts and metrics.

Prompts of the `eval` split use wordings held out from training; the `calibration` split uses
training wordings. Both cycle through the digits 0..9, so any 10 consecutive images cover every digit.
"""

from __future__ import annotations

from typing import Any

import torch

from workloads.base import Batch, Generation, OnStep, Workload, register, split_batch

from .metric_models import load_classifier, load_clip
from .metrics import (
    FCD_MIN_IMAGES,
    clip_scores,
    frechet_classifier_distance,
    hf_clip_score,
    prompt_accuracy,
    prompt_probabilities,
    real_images,
)
from .model import load_builtin
from .sampling import generate
from .text import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, digit_forms, prompt_table

KINDS = ("unet", "dit")


@register("builtin")
class BuiltinWorkload(Workload):
    min_images = {"full_samples": {"fcd": FCD_MIN_IMAGES}}  # the full evaluation's distribution metric

    def __init__(self, kind: str = "unet", num_steps: int = 20, guidance_scale: float | None = None,
                 base_seed: int = 0, clip_model: str | None = None) -> None:
        """`clip_model`: a LOCAL directory of a real CLIP model (transformers format); when given,
        alignment also reports the real CLIP score next to the shipped CLIP-style one."""
        if kind not in KINDS:
            raise ValueError(f"unknown built-in model {kind!r}; valid: {', '.join(KINDS)}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.kind = kind
        self.model = load_builtin(kind)
        self.denoiser = self.model.denoiser
        self.num_steps = num_steps
        self.guidance_scale = guidance_scale
        self.base_seed = base_seed
        self.clip_model = clip_model
        self.prompts = {
            "eval": _cycle_digits(HELDOUT_TEMPLATES),
            "calibration": _cycle_digits(TRAIN_TEMPLATES),
        }
        self._digit = {p: d for heldout in (False, True) for p, d, _ in prompt_table(heldout)}
        self._metric_models: dict[str, Any] = {}

    def batch(self, n: int, split: str = "eval", offset: int = 0) -> Batch:
        prompts = self.prompts.get(split)
        if prompts is None:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(self.prompts)}")
        return split_batch(prompts, n, split, self.base_seed, offset)

    def generate(self, batch: Batch, on_step: OnStep | None = None, record_steps: bool = False) -> Generation:
        steps: list[torch.Tensor] | None = [] if record_steps else None
        images = generate(self.model, batch.prompts, batch.seeds, num_steps=self.num_steps,
                          guidance_scale=self.guidance_scale, on_step=on_step, step_outputs=steps)
        return Generation(images, steps or [])

    def digits(self, batch: Batch) -> list[int]:
        try:
            return [self._digit[p] for p in batch.prompts]
        except KeyError as e:
            raise ValueError(f"prompt {e.args[0]!r} is not one of the built-in digit prompts") from None

    def alignment(self, batch: Batch, test: Generation) -> dict[str, float]:
        """Share of images the independent classifier reads as the prompted digit, and the means of
        `alignment_scores` (classifier probability of the prompted digit, CLIP-style score)."""
        out = {"prompt_accuracy": prompt_accuracy(test.images, self.digits(batch), self._metric("classifier"))}
        out.update({k: float(v.mean()) for k, v in self.alignment_scores(batch, test).items()})
        if self.clip_model is not None:
            out["clip_score_real"] = hf_clip_score(test.images, batch.prompts, self.clip_model)
        return out

    def alignment_scores(self, batch: Batch, test: Generation) -> dict[str, torch.Tensor]:
        """Per image: the classifier's probability of the prompted digit (`prompt_probability`, a
        continuous prompt accuracy) and the CLIP-style score (`clip_score`), both from shipped models."""
        return {"prompt_probability": prompt_probabilities(test.images, self.digits(batch), self._metric("classifier")),
                "clip_score": clip_scores(test.images, batch.prompts, self._metric("clip"))}

    def distribution(self, test: Generation, offset: int = 0) -> dict[str, float]:
        """Fréchet distance on the classifier's features (FCD) against as many real test digits."""
        real = real_images(len(test.images), offset)
        return {"fcd": frechet_classifier_distance(test.images, real, self._metric("classifier"))}

    def _metric(self, name: str) -> Any:
        if name not in self._metric_models:
            self._metric_models[name] = load_classifier() if name == "classifier" else load_clip()
        return self._metric_models[name]


def _cycle_digits(templates: tuple[str, ...]) -> list[str]:
    """Every (template, form) wording, digits varying fastest."""
    return [t.format(d=digit_forms(d)[form]) for t in templates for form in (0, 1) for d in range(10)]
