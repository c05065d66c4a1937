"""The `class-conditional` workload: a bare class-conditional diffusers model directory, sampled by our own
loop with the scheduler saved beside it; and `ClassLabels`, the class labels and label-accuracy metric
that it and class-conditional pipelines (`DiTPipeline`, in `workloads.diffusers_workload`) share.

A bare directory is what `model.save_pretrained(d)` writes (`config.json` +
`diffusion_pytorch_model.safetensors`) for a `UNet2DModel` with `num_class_embeds`, or a
`DiTTransformer2DModel` (a `Transformer2DModel` with `norm_type="ada_norm_zero"` loads as one), plus
the scheduler's `scheduler_config.json` (`scheduler.save_pretrained(d)`, or in `d/scheduler/`). The
model works in pixel space: its samples in [-1, 1] are the images.

The loop is the contract of `workloads.base.Workload` written out: one denoiser call per step (with
classifier-free guidance, the conditional and the `null_class` halves batched into that one call),
`on_step(i)` before it through the same pre-hook as the pipelines (`step_calls`), one generator per
image for the initial noise and any scheduler noise.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from workloads.base import Batch, Generation, OnStep, Workload, WorkloadError, register, split_batch
from workloads.denoisers import ModelLoadError, load_denoiser
from workloads.diffusers_workload import (
    check_one_call_per_step,
    one_line,
    output_tensor,
    scheduler_named,
    step_calls,
)
from workloads.metrics import label_accuracy, label_probabilities

if TYPE_CHECKING:
    from workloads.classifier import ImageClassifier

SCHEDULER_CONFIG = "scheduler_config.json"
DIT_GUIDANCE = 4.0  # DiT's default guidance scale, used when a null class is given without a scale


@dataclass(frozen=True)
class ClassLabels:
    """The class labels a class-conditional workload's batches cycle through, and the user's classifier
    (`workloads.classifier`) that reads them back from the images, if any."""

    classes: tuple[int, ...]
    classifier: ImageClassifier | None = None

    @classmethod
    def from_options(cls, where: str, embedded: int, num_classes: int | None = None,
                     classes: Sequence[int] | None = None, classifier: str | Path | None = None,
                     null_class: int | None = None) -> ClassLabels:
        """Classes 0..num_classes-1 (default: all `embedded` ones the model has) but `null_class`, or the
        `classes` given; WorkloadError naming the fix for anything the model or classifier cannot take."""
        if num_classes is None:
            num_classes = embedded
        if not _is_int(num_classes) or not 1 <= num_classes <= embedded:
            raise WorkloadError(f"{where}: num_classes={num_classes!r}; the model embeds {embedded} class labels: "
                                f"give an integer from 1 to {embedded}")
        if classes is not None and not isinstance(classes, list | tuple):
            raise WorkloadError(f"{where}: classes={classes!r}; give a list, e.g. classes=[0,3]")
        chosen = tuple(c for c in range(num_classes) if c != null_class) if classes is None else tuple(classes)
        bad = [c for c in chosen if not _is_int(c) or not 0 <= c < num_classes]
        if not chosen or bad:
            raise WorkloadError(f"{where}: classes={list(chosen)!r}; give a non-empty list of class labels from 0 "
                                f"to {num_classes - 1} (num_classes={num_classes})")
        if null_class is not None and null_class in chosen:
            raise WorkloadError(f"{where}: class {null_class} is the null class; leave it out of classes")
        model = None if classifier is None else _load_classifier(Path(classifier))
        if model is not None and max(chosen) >= model.num_classes:
            raise WorkloadError(f"{where}: the classifier {classifier} knows {model.num_classes} classes but class "
                                f"{max(chosen)} is sampled; pass classes= within its labels")
        return cls(chosen, model)

    def alignment(self, batch: Batch, test: Generation) -> dict[str, float]:
        """`label_accuracy` (argmax = the asked class) and the mean `label_probability`; {} without a classifier."""
        logits = self._logits(test)
        if logits is None:
            return {}
        labels = torch.tensor(batch.labels)
        return {"label_accuracy": label_accuracy(logits, labels),
                "label_probability": float(label_probabilities(logits, labels).mean())}

    def scores(self, batch: Batch, test: Generation) -> dict[str, Tensor]:
        """Per image, the classifier's probability of the asked class: what sensitivity compares."""
        logits = self._logits(test)
        return {} if logits is None else {"label_probability": label_probabilities(logits, torch.tensor(batch.labels))}

    def _logits(self, test: Generation) -> Tensor | None:
        if self.classifier is None:
            return None
        with torch.no_grad():
            return self.classifier(test.images.float())


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load_classifier(directory: Path) -> ImageClassifier:
    from workloads.classifier import load_classifier

    try:
        return load_classifier(directory)
    except (OSError, ValueError, KeyError) as err:
        raise WorkloadError(f"classifier {directory}: {one_line(err)}") from err


def embedded_classes(model: nn.Module, where: str) -> tuple[int, int]:
    """(class labels the model was trained on, labels its embedding table holds): a UNet2DModel's
    `num_class_embeds` (its null class, if any, is one of them); a DiT's `num_embeds_ada_norm`, whose
    table holds one more, the null class of its classifier-free guidance."""
    from diffusers import DiTTransformer2DModel, UNet2DModel

    config: Any = getattr(model, "config", {})
    if isinstance(model, UNet2DModel) and config.get("num_class_embeds") and config.get("class_embed_type") is None:
        return config.num_class_embeds, config.num_class_embeds
    if isinstance(model, DiTTransformer2DModel) and config.get("num_embeds_ada_norm"):
        return config.num_embeds_ada_norm, config.num_embeds_ada_norm + 1
    raise WorkloadError(
        f"{where}: {type(model).__name__} is not class-conditional (expected a UNet2DModel with num_class_embeds "
        "or a DiTTransformer2DModel); save an unconditional model as a DDIMPipeline or DDPMPipeline directory"
    )


@register("class-conditional")
class ClassConditionalWorkload(Workload):
    """A bare class-conditional model directory with its scheduler config, sampled by our own loop.

    - `num_classes`, `classes`: batches cycle through classes 0..num_classes-1 (default: every class the
      model embeds, but the null class), or through `classes`.
    - `null_class`: the label of the unconditional half of classifier-free guidance; None (default):
      no guidance. `guidance_scale` (default 4.0 with a null class; 1 turns guidance off).
    - `classifier`: a directory with `config.json` + `model.safetensors` (`workloads.classifier`) of a
      classifier of the images; the full evaluation then reports `label_accuracy`.
    - `scheduler`: a diffusers scheduler class name to use instead of the saved one (from its config).
    - `base_seed`: image i of the eval split gets seed base_seed + i; `device`: where the model runs.
    """

    def __init__(
        self,
        path: str | Path,
        num_steps: int = 20,
        num_classes: int | None = None,
        classes: Sequence[int] | None = None,
        null_class: int | None = None,
        guidance_scale: float | None = None,
        classifier: str | Path | None = None,
        scheduler: str | None = None,
        base_seed: int = 0,
        device: str = "cpu",
    ) -> None:
        if num_steps < 1:
            raise WorkloadError(f"num_steps must be >= 1, got {num_steps}")
        self.path = Path(path)
        where = str(self.path)
        saved = _scheduler_config(self.path)  # first: the cheapest check, and the acceptance's one line
        try:
            self.denoiser = load_denoiser(where, device=device).eval()
        except ModelLoadError as err:
            raise WorkloadError(str(err)) from err
        if next(self.denoiser.parameters()).is_meta:  # load_denoiser builds a weightless dir on meta
            raise WorkloadError(f"{where}: no diffusion_pytorch_model.safetensors; save the weights with "
                                "model.save_pretrained(directory)")
        embedded, table = embedded_classes(self.denoiser, where)
        if null_class is not None and (not _is_int(null_class) or not 0 <= null_class < table):
            raise WorkloadError(f"{where}: null_class={null_class!r}; the model's embedding holds labels 0 to "
                                f"{table - 1}: give the one it was trained with for the unconditional half")
        if guidance_scale is not None and null_class is None:
            raise WorkloadError(f"{where}: guidance_scale needs null_class=<the label of the unconditional half>")
        self.labels = ClassLabels.from_options(where, embedded, num_classes, classes, classifier, null_class)
        self.null_class = null_class
        self.guidance_scale = DIT_GUIDANCE if guidance_scale is None else float(guidance_scale)
        self.num_steps, self.base_seed, self.device = num_steps, base_seed, device
        self.scheduler: Any = saved if scheduler is None else scheduler_named(saved, scheduler)
        check_one_call_per_step(self.scheduler, num_steps, where)
        config: Any = self.denoiser.config
        size = config.sample_size
        self.shape = (config.in_channels, *((size, size) if isinstance(size, int) else size))

    @property
    def guided(self) -> bool:
        return self.null_class is not None and self.guidance_scale != 1

    # ---- Workload -----------------------------------------------------------------------------
    def batch(self, n: int, split: str = "eval", offset: int = 0) -> Batch:
        return split_batch(self.labels.classes, n, split, self.base_seed, offset)

    def generate(self, batch: Batch, on_step: OnStep | None = None, record_steps: bool = False) -> Generation:
        from diffusers.utils.torch_utils import randn_tensor

        labels = torch.tensor(batch.labels, device=self.device)
        if self.guided and self.null_class is not None:  # conditional and null halves in one call: calls == steps
            labels = torch.cat([labels, torch.full_like(labels, self.null_class)])
        # One generator per image: its noise depends only on its seed, not on the batch it is in.
        generators = [torch.Generator("cpu").manual_seed(s) for s in batch.seeds]
        scheduler = copy.deepcopy(self.scheduler)  # multistep schedulers keep state between steps
        scheduler.set_timesteps(self.num_steps)
        dtype = next(self.denoiser.parameters()).dtype
        x = randn_tensor((len(batch.seeds), *self.shape), generator=generators, device=torch.device(self.device),
                         dtype=dtype) * scheduler.init_noise_sigma
        noisy = "generator" in inspect.signature(scheduler.step).parameters  # DDPM-like: noise in each step
        channels, where = self.shape[0], str(self.path)
        with torch.no_grad(), step_calls(self.denoiser, self.num_steps, on_step, record_steps, where) as outputs:
            for t in scheduler.timesteps:
                model_in = scheduler.scale_model_input(x, t)
                model_in = torch.cat([model_in, model_in]) if self.guided else model_in
                out = output_tensor(self.denoiser(model_in, t.expand(len(model_in)).to(self.device),
                                                  class_labels=labels))
                eps = out[:, :channels]  # a learned-sigma DiT also predicts the variance: dropped
                if self.guided:
                    cond, uncond = eps.chunk(2)
                    eps = uncond + self.guidance_scale * (cond - uncond)
                x = scheduler.step(eps, t, x, **({"generator": generators} if noisy else {})).prev_sample
        if not torch.isfinite(x).all():
            raise WorkloadError(f"{where}: the sampler produced non-finite values")
        return Generation(((x.float() / 2 + 0.5).clamp(0, 1)).cpu().contiguous(), outputs)

    def alignment(self, batch: Batch, test: Generation) -> dict[str, float]:
        return self.labels.alignment(batch, test)

    def alignment_scores(self, batch: Batch, test: Generation) -> dict[str, Tensor]:
        return self.labels.scores(batch, test)

    def full_metric_families(self) -> frozenset[str]:
        """Alignment (label accuracy) only with a classifier."""
        return frozenset({"alignment"} if self.labels.classifier is not None else ())


def _scheduler_config(directory: Path) -> Any:
    """The diffusers scheduler saved in `directory` or `directory/scheduler`."""
    import diffusers

    found = [d / SCHEDULER_CONFIG for d in (directory, directory / "scheduler") if (d / SCHEDULER_CONFIG).is_file()]
    if not directory.is_dir() or not found:
        raise WorkloadError(
            f"{directory}: no {SCHEDULER_CONFIG} here or in scheduler/; a bare model directory needs the scheduler "
            f"it was trained with: save one, e.g. DDIMScheduler(num_train_timesteps=1000).save_pretrained('{directory}')"
        )
    try:
        config = json.loads(found[0].read_text())
        cls = getattr(diffusers, str(config.get("_class_name")), None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
            raise ValueError(f"_class_name {config.get('_class_name')!r} is not a diffusers scheduler")
        return cls.from_config(config)
    except (OSError, ValueError, AttributeError) as err:
        raise WorkloadError(f"{found[0]}: {one_line(err)}; expected a diffusers scheduler config") from err
