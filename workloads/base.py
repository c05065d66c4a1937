"""The Workload contract: what a quantized model is measured on.

A Workload owns a denoiser (the module that gets quantized, in place, by `quant.apply`), its
sampler, fixed prompts and seeds, and metrics. `generate(batch, on_step)` runs one generation batch
and calls `on_step(i)` before the i-th denoiser call, so a `QuantizedModel.set_step` can switch
per-timestep bits; with `record_steps=True` it also returns each step's denoiser output.

Metrics come in two families, reported separately because the decoupled sensitivity estimator
needs both (MixDQ):
- `quality`: fidelity to the full-precision model on the same seeds and initial noise (SQNR of
  denoiser outputs, PSNR/SSIM of images) and distribution quality;
- `alignment`: how well the images follow their conditioning (batch means in `alignment`, per-image
  continuous scores in `alignment_scores`).

A batch's conditioning is typed (`Condition`): a prompt (str) for text-to-image models, a class label
(int) for class-conditional ones, None for unconditional ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from quant.errors import BitsearchError, UnknownNameError
from quant.registry import Registry

OnStep = Callable[[int], None]

# Seeds of split s start at base_seed + SPLIT_SEED_BASES[s]: calibration and eval never share a seed
# as long as a split uses fewer than SPLIT_SEED_STRIDE seeds.
SPLIT_SEED_STRIDE = 1_000_000
SPLIT_SEED_BASES = {"eval": 0, "calibration": SPLIT_SEED_STRIDE}


class WorkloadError(BitsearchError, ValueError):
    """A workload cannot be built or run as asked; the one-line message says what was expected."""


# What one image is conditioned on: a prompt (text-to-image), a class label (class-conditional) or
# None (unconditional). Plain values, so batches compare, hash and print as what they mean.
Condition = str | int | None


@dataclass(frozen=True)
class Batch:
    """One condition and one seed per image: the same batch always gives the same initial noise."""

    conditions: tuple[Condition, ...]
    seeds: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.conditions) != len(self.seeds):
            raise ValueError(f"{len(self.conditions)} conditions but {len(self.seeds)} seeds: give one seed per image")
        if not self.conditions:
            raise ValueError("a batch needs at least one image")
        for c in self.conditions:
            # bool is an int subclass: True would silently become class 1
            if not (c is None or isinstance(c, str) or (isinstance(c, int) and not isinstance(c, bool))):
                raise ValueError(f"condition {c!r} is a {type(c).__name__}; expected a prompt (str), a class "
                                 "label (int) or None (unconditional)")

    @property
    def prompts(self) -> tuple[str, ...]:
        """The conditions as prompts; WorkloadError when the batch holds anything else."""
        prompts = tuple(c for c in self.conditions if isinstance(c, str))
        if len(prompts) != len(self.conditions):
            raise self._not("prompts")
        return prompts

    @property
    def labels(self) -> tuple[int, ...]:
        """The conditions as class labels; WorkloadError when the batch holds anything else."""
        labels = tuple(c for c in self.conditions if isinstance(c, int))
        if len(labels) != len(self.conditions):
            raise self._not("class labels")
        return labels

    def _not(self, what: str) -> WorkloadError:
        held = ", ".join(sorted({"None" if c is None else type(c).__name__ for c in self.conditions}))
        return WorkloadError(f"this batch holds {held} conditions, not {what}: the workload and its batches "
                             "disagree on the conditioning (see workloads.base.Condition)")


@dataclass
class Generation:
    """Images in [0, 1], shape (B, C, H, W); per-step denoiser outputs when recorded."""

    images: Tensor
    step_outputs: list[Tensor] = field(default_factory=list)


class Workload(ABC):
    """A denoiser + sampler + prompts/seeds + metrics. Registered by name (`builtin`, `diffusers`)."""

    name: ClassVar[str]
    # The fewest images a metric needs, by the study sample count that feeds it (`eval_samples`:
    # quality; `full_samples`: alignment and distribution; `calibration_samples`: calibration), for
    # metrics that need more than one. Each value is declared next to its metric (e.g. the built-in
    # FCD's); `check_samples` validates a study's counts against them before anything runs.
    min_images: ClassVar[dict[str, dict[str, int]]] = {}
    denoiser: nn.Module
    num_steps: int

    @abstractmethod
    def batch(self, n: int, split: str = "eval", offset: int = 0) -> Batch:
        """`n` fixed prompts and seeds. Splits `calibration` and `eval` never share a seed, so
        estimators can be validated on prompts/seeds they were not computed on."""

    @abstractmethod
    def generate(self, batch: Batch, on_step: OnStep | None = None, record_steps: bool = False) -> Generation:
        """Run the sampler on the (possibly quantized) denoiser; `on_step(i)` before the i-th call."""

    def quality(self, reference: Generation, test: Generation) -> dict[str, float]:
        """Fidelity of `test` to the full-precision `reference` generated from the same batch."""
        from workloads.metrics import fidelity

        return fidelity(reference, test)

    def alignment(self, batch: Batch, test: Generation) -> dict[str, float]:
        """How well the images follow their prompts; empty when the workload has no alignment model."""
        return {}

    def alignment_scores(self, batch: Batch, test: Generation) -> dict[str, Tensor]:
        """Per-image alignment, higher = follows its prompt better: one (B,) tensor per continuous
        alignment metric. Sensitivity measures alignment degradation from these, image by image against
        the full-precision images of the same batch. Default: each `alignment()` metric as one
        batch-level value (shape (1,)); override it where per-image, continuous scores exist."""
        return {k: torch.tensor([v], dtype=torch.float64) for k, v in self.alignment(batch, test).items()}

    def distribution(self, test: Generation, offset: int = 0) -> dict[str, float]:
        """Distance of `test`'s image distribution to real data (`offset`: which real images);
        empty when the workload has no real data."""
        return {}

    def full_metric_families(self) -> frozenset[str]:
        """Which of `alignment` and `distribution` this workload reports (a study skips the full
        evaluation of one with neither). Default: those it overrides; override where options decide."""
        own = type(self)
        return frozenset(f for f in ("alignment", "distribution") if getattr(own, f) is not getattr(Workload, f))

    def calibration_run(self, batch: Batch) -> Callable[[OnStep], None]:
        """A `run(set_step)` for `quant.calibrate.calibrate_activations` over this batch."""

        def run(set_step: OnStep) -> None:
            self.generate(batch, on_step=set_step)

        return run


class _Captured(BitsearchError):
    """Stops the first denoiser call once its inputs are captured."""


def denoiser_inputs(workload: Workload) -> dict[str, object]:
    """The keyword inputs of the denoiser's first real call in a generation, positional arguments
    named by the denoiser's signature: the layer inventory and latency tables then see the sampler's
    own batch, dtype and conditioning, whatever the model family."""
    import inspect

    captured: list[inspect.BoundArguments] = []

    def grab(module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        captured.append(inspect.signature(module.forward).bind_partial(*args, **kwargs))
        raise _Captured

    handle = workload.denoiser.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        workload.generate(workload.batch(1, split="calibration"))
    except _Captured:
        pass
    finally:
        handle.remove()
    if not captured:
        raise WorkloadError(f"workload {type(workload).__name__}'s generate() never called its denoiser")
    inputs: dict[str, object] = {}
    for name, value in captured[0].arguments.items():
        kind = captured[0].signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            raise WorkloadError(f"{type(workload.denoiser).__name__}.forward takes *{name}: its inputs cannot be "
                                "replayed by keyword; give its forward named parameters")
        inputs.update(value if kind is inspect.Parameter.VAR_KEYWORD else {name: value})
    return inputs


# The built-in workloads' modules are named here, not imported: diffusers takes seconds to import.
WORKLOADS: Registry[Workload] = Registry("workload", "workloads.builtin.workload", "workloads.diffusers_workload",
                                         "workloads.class_conditional", entry_points="bitsearch.workloads")
register = WORKLOADS.register


def workload_names() -> list[str]:
    return WORKLOADS.names()


def load_workload(name_or_path: str, **options: Any) -> Workload:
    """A registered workload (`builtin`: the shipped model), the path of a local diffusers pipeline
    directory or of a bare class-conditional model directory; unknown options are rejected with the
    valid ones."""
    name, args = _resolve(name_or_path)
    return WORKLOADS.create(name, *args, **options)


# The workloads a directory path resolves to (by what the directory holds), never named alone.
DIRECTORY_WORKLOADS = ("diffusers", "class-conditional")


@dataclass
class Denoiser:
    """A denoiser and the keyword inputs of one of its calls; `workload` when a workload runs it."""

    module: nn.Module
    inputs: dict[str, object]
    workload: Workload | None = None


def load_model(model: str, *, weights: bool, batch: int = 1, resolution: int | None = None,
               **options: Any) -> Denoiser:
    """What `--model` names, for the commands that need a denoiser but no study (inspect, convert,
    targets); the one vocabulary of every `--model`:
    - a workload (`builtin`, a plugin): its denoiser, on the inputs of its sampler's first call;
    - with `weights`, a pipeline or model directory a workload runs (`load_workload`): the same;
    - otherwise a pipeline directory, a model directory or a built-in config name (`sd15-unet`, ...):
      the denoiser built from its config (`workloads.denoisers.load_denoiser`) with example inputs of
      `batch` and `resolution`: on the meta device without `weights` (shapes only, seconds even for
      SDXL), with its weights, or seeded random ones for a built-in config (to time kernels).
    `options` go to the workload, where one runs the model."""
    from workloads.denoisers import example_inputs, load_denoiser

    if is_plugin(model) or model in WORKLOADS and model not in DIRECTORY_WORKLOADS:
        workload = load_workload(model, **options)
        return Denoiser(workload.denoiser, denoiser_inputs(workload), workload)
    if weights and Path(model).is_dir():
        try:  # the sampler's own inputs (its batch, guidance, conditioning) where a workload runs it
            workload = load_workload(model, **options)
            return Denoiser(workload.denoiser, denoiser_inputs(workload), workload)
        except WorkloadError:  # e.g. a text-to-image UNet saved alone: no workload samples it
            pass
    module = load_denoiser(model, device="cpu" if weights else "meta", random_weights=weights)
    return Denoiser(module, example_inputs(module, batch=batch, resolution=resolution))


def _resolve(name_or_path: str) -> tuple[str, tuple[str, ...]]:
    """The registered workload `name_or_path` names, and its positional arguments (nothing is loaded but
    a plugin's module, which registers it under `name_or_path`)."""
    if name_or_path in DIRECTORY_WORKLOADS:
        raise WorkloadError(f"{name_or_path} is the workload of a model directory: give --model the directory's path")
    if name_or_path in WORKLOADS:
        return name_or_path, ()
    if is_plugin(name_or_path):
        WORKLOADS.add(name_or_path, plugin_class(name_or_path))
        return name_or_path, ()
    path = Path(name_or_path)
    if path.exists():
        # a bare model directory (config.json, no pipeline around it) is sampled by our own loop
        bare = (path / "config.json").is_file() and not (path / "model_index.json").is_file()
        return DIRECTORY_WORKLOADS[1 if bare else 0], (name_or_path,)
    from workloads.denoisers import builtin_names

    if name_or_path in builtin_names():
        raise WorkloadError(f"{name_or_path} is a built-in architecture (a config, no trained weights): `bitsearch "
                            "inspect`, `targets` and `convert` take it; a study needs a trained model: 'builtin', a "
                            "pipeline or model directory, or a plugin workload")
    raise UnknownNameError(
        f"{name_or_path}: neither a workload name ({', '.join(workload_names())}) nor an existing path; "
        "expected a name, a local diffusers pipeline directory (with model_index.json), a class-conditional "
        "model directory (config.json + scheduler_config.json), or a plugin workload as package.module:Class "
        "or /path/to/file.py:Class"
    )


def is_plugin(name: str) -> bool:
    """`package.module:Class` or `path/to/file.py:Class`: a Workload class written by a user."""
    module, sep, attr = name.rpartition(":")
    return bool(sep and module and attr.isidentifier() and (module.endswith(".py")
                                                             or all(p.isidentifier() for p in module.split("."))))


def plugin_class(name: str) -> type[Workload]:
    """The Workload class `name` points at, imported (a file by its path, so Ray workers in other
    processes import the same file); WorkloadError naming what is wrong."""
    import importlib
    import importlib.util
    import sys

    module_name, _, attr = name.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).resolve()
            if not path.is_file():
                raise WorkloadError(f"{name}: no file {path}")
            key = f"bitsearch_plugin_{abs(hash(str(path)))}"
            module = sys.modules.get(key)
            if module is None:
                spec = importlib.util.spec_from_file_location(key, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[key] = module
                spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise WorkloadError(f"{name}: cannot import {module_name} ({e})") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Workload)):
        raise WorkloadError(f"{name}: {attr} is not a workloads.base.Workload subclass in {module_name}")
    return cls


SAMPLE_COUNTS = ("eval_samples", "full_samples", "calibration_samples")


def check_samples(model: str, **counts: int) -> None:
    """Raise WorkloadError (one line, naming the metric and its minimum) when a study sample count
    (`eval_samples=`, `full_samples=`, `calibration_samples=`) is below what `model`'s metrics need:
    at least 1 image each, and each metric's `Workload.min_images` (the built-in FCD needs 2: a
    covariance of one image is undefined). A model that does not resolve is left to `load_workload`
    to report. Nothing is loaded: a study spec can call this at construction."""
    unknown = sorted(set(counts) - set(SAMPLE_COUNTS))
    if unknown:
        raise TypeError(f"unknown sample count {unknown[0]!r}; valid: {', '.join(SAMPLE_COUNTS)}")
    try:
        factory = WORKLOADS.lookup(_resolve(model)[0])
    except UnknownNameError:
        return
    needs: dict[str, dict[str, int]] = getattr(factory, "min_images", {})
    for key, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise WorkloadError(f"{key} must be an integer >= 1, got {n!r}")
        for metric, least in needs.get(key, {}).items():
            if n < least:
                raise WorkloadError(f"{key}={n} is too few for workload {getattr(factory, 'name', model)!r}: "
                                    f"its {metric} metric needs at least {least} images")


def prompts_seeds(conditions: Sequence[Condition], n: int, base_seed: int, offset: int = 0) -> Batch:
    """Cycle through `conditions` (prompts, class labels, or `(None,)`); seed i is base_seed + offset + i."""
    chosen = tuple(conditions[(offset + i) % len(conditions)] for i in range(n))
    return Batch(chosen, tuple(base_seed + offset + i for i in range(n)))


def split_batch(conditions: Sequence[Condition], n: int, split: str, base_seed: int, offset: int = 0) -> Batch:
    """`prompts_seeds` with the seed range of `split` (see SPLIT_SEED_BASES): disjoint across splits."""
    if split not in SPLIT_SEED_BASES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEED_BASES)}")
    if n < 1 or offset < 0 or offset + n > SPLIT_SEED_STRIDE:
        raise ValueError(f"need n >= 1, offset >= 0 and offset + n <= {SPLIT_SEED_STRIDE}, got n={n}, offset={offset}")
    return prompts_seeds(conditions, n, base_seed + SPLIT_SEED_BASES[split], offset)
