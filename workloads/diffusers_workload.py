"""The `diffusers` workload: any local diffusers pipeline directory, its denoiser quantized in place.

`DiffusersWorkload(path)` loads a pipeline a user already has on disk with `local_files_only=True` and
safetensors weights only: a text-to-image one (Stable Diffusion 1.x/2.x, SDXL, PixArt-alpha/Sigma, or any
other `DiffusionPipeline` taking a `prompt` whose denoiser is a `unet` or a `transformer` component), an
unconditional one (`DDPMPipeline`, `DDIMPipeline`, `LDMPipeline`: a `batch_size`) or a class-conditional
one (`DiTPipeline`: `class_labels`, see `workloads.class_conditional.ClassLabels`). The denoiser is
`self.denoiser`; `quant.apply` swaps its layers in place, so the pipeline runs them without knowing.

Per-timestep bits need the step index before every denoiser call. Pipelines do not expose that
uniformly (callbacks run *after* a step, some pipelines have none), so a forward pre-hook on the
denoiser counts its calls and calls `on_step(i)`: a step is one denoiser call. Classifier-free
guidance pipelines batch the conditional and unconditional halves into one call, so calls == steps;
a scheduler that calls the model several times per step (Heun, DPM2, PNDM's extra warm-up call) is
refused with an error naming the fix, because timestep groups would otherwise be off by one.

Every image gets its own `torch.Generator`, so its initial noise (and any sampler noise) depends
only on its seed, never on which other prompts share the batch.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from quant.layers import quantizable_modules
from workloads.base import Batch, Generation, OnStep, Workload, WorkloadError, register, split_batch
from workloads.denoisers import DENOISER_SUBFOLDERS, ModelLoadError, load_denoiser

if TYPE_CHECKING:
    from workloads.class_conditional import ClassLabels

# Generic prompts for when the user gives none: varied subjects, styles and compositions, so
# calibration sees a spread of activations rather than one kind of image.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "a photograph of an astronaut riding a horse",
    "a red apple on a wooden table, studio lighting",
    "a watercolor painting of a lighthouse at sunset",
    "a close-up portrait of an old man with a beard",
    "a busy city street at night in the rain, neon signs",
    "a bowl of ramen, top-down view",
    "a snowy mountain landscape with a frozen lake",
    "a cute corgi puppy sitting on green grass",
    "an isometric illustration of a small cozy house",
    "a vintage car parked in front of a diner",
    "a field of sunflowers under a blue sky",
    "a robot reading a book in a library, digital art",
)

_EXPECTED = "expected a local diffusers pipeline directory (with model_index.json)"
# What a pipeline's __call__ takes, by how its images are conditioned (the first one it has wins)
PROMPT, CLASS_LABELS, BATCH_SIZE = "prompt", "class_labels", "batch_size"


@register("diffusers")
class DiffusersWorkload(Workload):
    """A local diffusers text-to-image, unconditional or class-conditional pipeline; its `unet` or
    `transformer` gets quantized.

    - `prompts`: a list of prompts, the path of a text file with one prompt per line, or None for
      `DEFAULT_PROMPTS`; batches cycle through them (text-to-image pipelines only).
    - `num_classes`, `classes`, `classifier` (class-conditional pipelines only): which class labels
      batches cycle through, and a classifier directory for `label_accuracy`; see `ClassLabels`.
    - `num_steps`: sampler steps, i.e. denoiser calls per image (timestep groups partition these).
    - `guidance_scale`, `resolution` (square, in pixels): None keeps the pipeline's own defaults.
    - `base_seed`: image i of the eval split gets seed base_seed + i (see `workloads.base.split_batch`).
    - `torch_dtype`: e.g. "float32" (default) or "bfloat16"; `device`: where the pipeline runs.
    - `scheduler`: name of a diffusers scheduler class to use instead of the saved one, built from
      the saved scheduler's config (e.g. "DDIMScheduler" for a pipeline saved with PNDM).
    """

    def __init__(
        self,
        path: str | Path,
        prompts: Sequence[str] | str | Path | None = None,
        num_steps: int = 20,
        guidance_scale: float | None = None,
        resolution: int | None = None,
        base_seed: int = 0,
        torch_dtype: str | torch.dtype | None = None,
        scheduler: str | None = None,
        device: str = "cpu",
        num_classes: int | None = None,
        classes: Sequence[int] | None = None,
        classifier: str | Path | None = None,
    ) -> None:
        if num_steps < 1:
            raise WorkloadError(f"num_steps must be >= 1, got {num_steps}")
        self.path = Path(path)
        self.prompts = _read_prompts(prompts)  # unused by pipelines that take no prompt
        self.num_steps = num_steps
        self.guidance_scale = guidance_scale
        self.resolution = resolution
        self.base_seed = base_seed
        self.device = device
        # Any: a pipeline's components (unet, scheduler, ...) are attributes set at run time.
        self.pipe: Any = _load_pipeline(self.path, as_dtype(torch_dtype), device)
        if scheduler is not None:
            self.pipe.scheduler = scheduler_named(self.pipe.scheduler, scheduler)
        self.denoiser = _denoiser(self.pipe, self.path)
        params = inspect.signature(self.pipe.__call__).parameters
        kind = type(self.pipe).__name__
        conditioning = next((p for p in (PROMPT, CLASS_LABELS, BATCH_SIZE) if p in params), None)
        if conditioning is None:
            raise WorkloadError(
                f"{self.path}: {kind} takes neither a prompt, class labels nor a batch size; write a workload "
                "for it, see docs/bring-your-own-model.md"
            )
        self.conditioning = conditioning
        if conditioning != PROMPT and prompts is not None:
            raise WorkloadError(f"{self.path}: {kind} is not a text-to-image pipeline; it takes no prompts")
        self.labels: ClassLabels | None = None
        if conditioning == CLASS_LABELS:
            self.labels = self._class_labels(num_classes, classes, classifier)
        elif (num_classes, classes, classifier) != (None, None, None):
            raise WorkloadError(f"{self.path}: {kind} is not class-conditional; num_classes, classes and "
                                "classifier apply to class-conditional models only")
        check_one_call_per_step(self.pipe.scheduler, self.num_steps, str(self.path))

    # ---- Workload -----------------------------------------------------------------------------
    def batch(self, n: int, split: str = "eval", offset: int = 0) -> Batch:
        conditions = (self.prompts if self.conditioning == PROMPT
                      else self.labels.classes if self.labels is not None else (None,))
        return split_batch(conditions, n, split, self.base_seed, offset)

    def generate(self, batch: Batch, on_step: OnStep | None = None, record_steps: bool = False) -> Generation:
        # fork_rng: DiTPipeline steps its scheduler without our generators, so a stochastic one (DDPM)
        # draws from the global RNG; seeded from the batch, the same batch gives the same images.
        with torch.no_grad(), torch.random.fork_rng(devices=[]), step_calls(
                self.denoiser, self.num_steps, on_step, record_steps, type(self.pipe).__name__) as outputs:
            torch.manual_seed(batch.seeds[0])
            result = self.pipe(**self._call_kwargs(batch))
        images = torch.as_tensor(result.images if hasattr(result, "images") else result[0]).float().cpu()
        if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            images = images.permute(0, 3, 1, 2)  # unconditional pipelines return NHWC arrays
        return Generation(images.contiguous(), outputs)

    def alignment(self, batch: Batch, test: Generation) -> dict[str, float]:
        """`label_accuracy` and `label_probability` when a class-conditional pipeline has a classifier."""
        return {} if self.labels is None else self.labels.alignment(batch, test)

    def alignment_scores(self, batch: Batch, test: Generation) -> dict[str, Tensor]:
        return super().alignment_scores(batch, test) if self.labels is None else self.labels.scores(batch, test)

    def full_metric_families(self) -> frozenset[str]:
        """Alignment only where a class-conditional pipeline has a classifier (no metric for the others)."""
        return frozenset({"alignment"} if self.labels is not None and self.labels.classifier is not None else ())

    # ---- internals ----------------------------------------------------------------------------
    def _call_kwargs(self, batch: Batch) -> dict[str, Any]:
        params = inspect.signature(self.pipe.__call__).parameters
        kwargs: dict[str, Any] = {
            "num_inference_steps": self.num_steps,
            # One generator per image: an image's noise depends only on its own seed.
            "generator": [torch.Generator("cpu").manual_seed(s) for s in batch.seeds],
        }
        if self.conditioning == BATCH_SIZE:  # DDPM/DDIM pipelines return arrays unless asked for PIL
            return {**kwargs, "batch_size": len(batch.seeds), "output_type": "np"}
        if self.guidance_scale is not None:
            kwargs["guidance_scale"] = self.guidance_scale
        if self.conditioning == CLASS_LABELS:  # DiTPipeline: conditional and null halves in one call
            return {**kwargs, "class_labels": list(batch.labels), "output_type": "pt"}
        kwargs |= {"prompt": list(batch.prompts), "output_type": "pt"}
        if self.resolution is not None:
            kwargs["height"] = kwargs["width"] = self.resolution
        # PixArt-style options: binning resizes to a trained aspect-ratio bucket (and rejects sample
        # sizes it has no table for); caption cleaning depends on whether bs4/ftfy happen to be
        # installed, so results would differ between machines.
        if "use_resolution_binning" in params:
            kwargs["use_resolution_binning"] = False
        if "clean_caption" in params:
            kwargs["clean_caption"] = False
        return kwargs

    def _class_labels(self, num_classes: int | None, classes: Sequence[int] | None,
                      classifier: str | Path | None) -> ClassLabels:
        """DiTPipeline's labels: its id2label's classes by default, else every class its transformer embeds."""
        from workloads.class_conditional import ClassLabels, embedded_classes

        embedded, table = embedded_classes(self.denoiser, str(self.path))
        named = sorted(set(getattr(self.pipe, "labels", {}).values()))  # DiTPipeline's id2label
        # the pipeline's guidance feeds class 1000 (ImageNet's null class) for the unconditional half
        guidance = 4.0 if self.guidance_scale is None else self.guidance_scale
        if guidance > 1 and table <= 1000:
            raise WorkloadError(
                f"{self.path}: {type(self.pipe).__name__} guides with the null class 1000 but its transformer "
                f"embeds {table} labels; pass guidance_scale=1, or load the transformer directory alone with "
                "null_class= (see docs/bring-your-own-model.md)"
            )
        if num_classes is None and classes is None and named:
            classes = named
        return ClassLabels.from_options(str(self.path), embedded, num_classes, classes, classifier)


def _read_prompts(prompts: Sequence[str] | str | Path | None) -> tuple[str, ...]:
    if prompts is None:
        return DEFAULT_PROMPTS
    if isinstance(prompts, str | Path):
        file = Path(prompts)
        if not file.is_file():
            raise WorkloadError(f"{file}: prompt file not found; expected a text file with one prompt per line")
        lines = tuple(line.strip() for line in file.read_text().splitlines())
        out = tuple(line for line in lines if line)
        where = str(file)
    else:
        out = tuple(prompts)
        where = "prompts"
        if not all(isinstance(p, str) for p in out):
            raise WorkloadError("prompts must be strings; expected a list of prompts or a prompt file path")
    if not out:
        raise WorkloadError(f"{where}: no prompts; expected at least one non-empty prompt")
    return out


@contextmanager
def step_calls(denoiser: nn.Module, num_steps: int, on_step: OnStep | None, record_steps: bool,
               who: str) -> Iterator[list[Tensor]]:
    """Around one generation: `on_step(i)` before the denoiser's i-th call (a forward pre-hook, so any
    sampler loop works unchanged), its outputs appended to the yielded list when `record_steps`, and a
    WorkloadError unless it was called exactly `num_steps` times (`who`: the sampler, for the message)."""
    calls = 0
    outputs: list[Tensor] = []

    def before_call(_module: nn.Module, _args: Any) -> None:
        nonlocal calls
        if calls >= num_steps:
            raise WorkloadError(
                f"{who} called its denoiser more than num_steps={num_steps} times in one generation (a "
                "multi-call scheduler, or separate conditional and unconditional calls); bitsearch needs one "
                "denoiser call per step, e.g. scheduler='DDIMScheduler'"
            )
        if on_step is not None:
            on_step(calls)
        calls += 1

    def after_call(_module: nn.Module, _args: Any, output: Any) -> None:
        outputs.append(output_tensor(output).detach().float().cpu().clone())

    handles = [denoiser.register_forward_pre_hook(before_call)]
    if record_steps:
        handles.append(denoiser.register_forward_hook(after_call))
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()
    if calls != num_steps:
        raise WorkloadError(
            f"{who} called its denoiser {calls} times for num_steps={num_steps}; bitsearch needs exactly one "
            "denoiser call per step"
        )


def check_one_call_per_step(scheduler: Any, num_steps: int, where: str) -> None:
    """Fail at load time, not mid-search, when the scheduler calls the model more than once a step."""
    probe = copy.deepcopy(scheduler)
    try:
        probe.set_timesteps(num_steps)
    except Exception:  # an exotic set_timesteps signature: step_calls' count still checks
        return
    timesteps = getattr(probe, "timesteps", None)
    if timesteps is not None and len(timesteps) != num_steps:
        raise WorkloadError(
            f"{where}: scheduler {type(probe).__name__} runs {len(timesteps)} denoiser calls for {num_steps} "
            f"steps; bitsearch needs one call per step: pass scheduler= one of {_single_call_schedulers(scheduler)}"
        )


def as_dtype(torch_dtype: str | torch.dtype | None) -> torch.dtype | None:
    if torch_dtype is None or isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    dtype = getattr(torch, torch_dtype, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise WorkloadError(f"torch_dtype {torch_dtype!r} is not a torch floating dtype; expected e.g. 'float32' or 'bfloat16'")
    return dtype


def _load_pipeline(path: Path, dtype: torch.dtype | None, device: str) -> Any:
    if not path.is_dir():
        raise WorkloadError(f"{path}: not a directory; {_EXPECTED}")
    if not (path / "model_index.json").is_file():
        raise WorkloadError(f"{path}: no model_index.json; {_EXPECTED}")
    # workloads.denoisers' checks on the meta device (nothing allocated): the pipeline has a unet/ or
    # transformer/ component, it builds from its config, and it has layers to quantize. This fails
    # in a second with a precise message instead of after loading gigabytes of text encoders.
    try:
        load_denoiser(str(path), device="meta")
    except ModelLoadError as err:
        raise WorkloadError(str(err)) from err

    from diffusers import DiffusionPipeline

    index = _model_index(path)
    # A safety checker replaces "unsafe" images by black ones: a candidate's score would then
    # depend on the checker, not on its quantization.
    extra: dict[str, Any] = {"safety_checker": None} if "safety_checker" in index else {}
    try:
        pipe = DiffusionPipeline.from_pretrained(
            path, local_files_only=True, use_safetensors=True, torch_dtype=dtype, **extra
        )
        pipe = pipe.to(device)
    except Exception as err:  # diffusers/transformers raise many types; report one line
        raise WorkloadError(f"{path}: could not load the pipeline: {one_line(err)}") from err
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _model_index(path: Path) -> dict[str, Any]:
    import json

    data = json.loads((path / "model_index.json").read_text())  # load_denoiser already validated it
    return data if isinstance(data, dict) else {}


def _denoiser(pipe: Any, path: Path) -> nn.Module:
    for name in DENOISER_SUBFOLDERS:
        module = getattr(pipe, name, None)
        if isinstance(module, nn.Module):
            if not quantizable_modules(module):
                raise WorkloadError(f"{path}: {name} {type(module).__name__} has no nn.Linear or nn.Conv2d layer to quantize")
            return module
    raise WorkloadError(
        f"{path}: {type(pipe).__name__} has no denoiser; expected a '{DENOISER_SUBFOLDERS[0]}' or "
        f"'{DENOISER_SUBFOLDERS[1]}' component"
    )


def scheduler_named(current: Any, name: str) -> Any:
    """The diffusers scheduler class `name`, built from the `current` scheduler's config."""
    import diffusers

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise WorkloadError(f"scheduler {name!r} is not a diffusers scheduler class; expected one of "
                            f"{_single_call_schedulers(current)}")
    return cls.from_config(current.config)


def _single_call_schedulers(scheduler: Any) -> list[str]:
    """Schedulers compatible with `scheduler` that call the model once per step (order 1)."""
    names = [c.__name__ for c in getattr(scheduler, "compatibles", [])]
    preferred = ["DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"]
    return [n for n in preferred if n in names] or preferred


def output_tensor(output: Any) -> Tensor:
    """The noise prediction in a denoiser's output: a tensor, a tuple (return_dict=False) or a
    BaseOutput with `.sample`."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple | list):
        return output_tensor(output[0])
    sample = getattr(output, "sample", None)
    if isinstance(sample, Tensor):
        return sample
    raise WorkloadError(f"cannot find the output tensor of the denoiser in a {type(output).__name__}")


def one_line(err: BaseException, limit: int = 300) -> str:
    """First line of an exception, capped: diffusers can put whole file listings in one line."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
