"""Apply an exported bit config to a diffusers pipeline with bitsearch's own backends.

Three lines to generate images with a chosen config:

    pipe = StableDiffusionPipeline.from_pretrained("./my-sd15", use_safetensors=True)
    q = apply_exported(pipe, "best.yaml", calibration_prompts=["a photo of a cat", "a city at night"])
    images = pipe("a red apple on a table", num_inference_steps=20).images

The file is a bitsearch JSON/YAML config, a step policy, or a MixDQ weights file (with
`activations=` its activations file). When the config quantizes activations, their ranges are
calibrated first by running the pipeline on a few prompts (per timestep group). The denoiser's
layers are swapped in place (`quant.apply.apply`, verified to run what the config asks), and a
forward pre-hook counts denoiser calls so each call runs its timestep group's kernels. The count
restarts whenever the pipeline sets its scheduler's timesteps, i.e. at the start of every pipeline
call; calling the handle (`q(prompt, ...)`) also restarts it. `q.remove()` restores the model.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from quant.apply import QuantizedModel, apply
from quant.calibrate import ActivationRanges, SetStep, calibrate_activations
from quant.config import FORMAT_NAME, HIGH_PRECISION, BitConfig, ConfigError
from quant.layers import quantizable_modules
from search.exports import mixdq, step_policy
from workloads.denoisers import DENOISER_SUBFOLDERS

# MixDQ files carry no step count: the calibration run of a single-group config uses this many steps.
DEFAULT_CALIBRATION_STEPS = 20


def load_exported(path: str | Path, activations: str | Path | None = None, num_steps: int | None = None) -> BitConfig:
    """A BitConfig from a bitsearch JSON/YAML file, a step policy, or a MixDQ weights (+ activations) file."""
    text = Path(path).read_text()
    data = yaml.safe_load(text)
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == FORMAT_NAME:
        return BitConfig.from_dict(data)
    if fmt == step_policy.FORMAT:
        return step_policy.import_config(data)
    act = Path(activations).read_text() if activations is not None else None
    return mixdq.import_config(text, act, num_steps=num_steps or 1)


class ExportedQuantization:
    """The handle `apply_exported` returns: the quantized denoiser and its step counter."""

    def __init__(self, pipe: Any, denoiser: nn.Module, qm: QuantizedModel) -> None:
        self.pipe, self.denoiser, self.qm = pipe, denoiser, qm
        self.config = qm.config
        self.calls = 0
        self._hook = denoiser.register_forward_pre_hook(self._before_call)
        self._scheduler: Any = None
        self._wrap_scheduler()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the pipeline (`pipe(*args, **kwargs)`) from step 0."""
        if self.pipe is None:
            raise RuntimeError("apply_exported was given a bare denoiser: call it directly, with reset() per image")
        self.reset()
        return self.pipe(*args, **kwargs)

    def reset(self) -> None:
        """Start counting steps from 0 (the next denoiser call is step 0)."""
        self.calls = 0

    def remove(self) -> nn.Module:
        """Undo everything: the original layers, no hook, the scheduler as it was."""
        self._hook.remove()
        if self._scheduler is not None and "set_timesteps" in vars(self._scheduler):
            del self._scheduler.set_timesteps
        return self.qm.restore()

    def _before_call(self, _module: nn.Module, _args: Any) -> None:
        groups = self.config.groups
        if len(groups) > 1:
            if self.calls >= groups.num_steps:
                raise RuntimeError(
                    f"the denoiser was called {self.calls + 1} times but this config schedules {groups.num_steps} "
                    f"steps ({groups}); run the pipeline with num_inference_steps={groups.num_steps} and a "
                    "one-call-per-step scheduler (e.g. DDIMScheduler), and call handle.reset() between images "
                    "if the pipeline's scheduler was replaced after apply_exported"
                )
            self.qm.set_step(self.calls)
        self.calls += 1

    def _wrap_scheduler(self) -> None:
        # Every diffusers pipeline sets its scheduler's timesteps at the start of a call: the one
        # per-call event that needs no change to how the user calls the pipeline.
        sched = getattr(self.pipe, "scheduler", None)
        if sched is None or not hasattr(sched, "set_timesteps"):
            return
        original = sched.set_timesteps
        groups = self.config.groups

        def set_timesteps(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            self.reset()
            timesteps = getattr(sched, "timesteps", None)
            n = 0 if timesteps is None else len(timesteps)
            if len(groups) > 1 and n and n != groups.num_steps:
                raise ConfigError(
                    f"this config schedules {groups.num_steps} steps ({groups}) but the pipeline runs {n}; "
                    f"call it with num_inference_steps={groups.num_steps}"
                )
            return out

        sched.set_timesteps = set_timesteps
        self._scheduler = sched


def apply_exported(
    pipe_or_denoiser: Any,
    path: str | Path,
    backend: str = "int8",
    calibration_prompts: Sequence[str] | None = None,
    *,
    activations: str | Path | None = None,
    num_steps: int | None = None,
    ranges: ActivationRanges | None = None,
    seed: int = 0,
) -> ExportedQuantization:
    """Quantize a diffusers pipeline's denoiser (or a bare denoiser) per an exported config file.

    - `backend`: a bitsearch backend ("int8" real kernels, "fake" simulated numerics).
    - `calibration_prompts`: prompts for activation ranges (default: a few generic prompts); only
      used when the config quantizes activations and no `ranges` are given.
    - `activations`, `num_steps`: for MixDQ files (activations file; steps of the calibration run).
    """
    pipe, denoiser = _split(pipe_or_denoiser)
    config = load_exported(path, activations, num_steps)
    needs_ranges = any(b.a != HIGH_PRECISION for v in config.resolve(quantizable_modules(denoiser)).values() for b in v)
    if needs_ranges and ranges is None:
        if pipe is None:
            raise ConfigError("this config quantizes activations: pass a pipeline (to calibrate on prompts) or ranges=")
        steps = config.groups.num_steps if len(config.groups) > 1 else (num_steps or DEFAULT_CALIBRATION_STEPS)
        ranges = calibrate(pipe, denoiser, config, calibration_prompts, steps, seed)
    qm = apply(denoiser, config, backend, ranges if needs_ranges else None)
    return ExportedQuantization(pipe, denoiser, qm)


def calibrate(pipe: Any, denoiser: nn.Module, config: BitConfig, prompts: Sequence[str] | None, steps: int,
              seed: int = 0) -> ActivationRanges:
    """Activation ranges per timestep group from one pipeline run over `prompts`."""
    if prompts is None:
        from workloads.diffusers_workload import DEFAULT_PROMPTS

        prompts = DEFAULT_PROMPTS[:4]
    prompts = list(prompts)
    if not prompts:
        raise ConfigError("calibration_prompts is empty; give at least one prompt")
    kwargs = _call_kwargs(pipe, prompts, steps, seed)

    def run(set_step: SetStep) -> None:
        calls = [0]

        def before(_m: nn.Module, _a: Any) -> None:
            if len(config.groups) > 1:
                set_step(calls[0])
            calls[0] += 1

        handle = denoiser.register_forward_pre_hook(before)
        try:
            pipe(**kwargs)
        finally:
            handle.remove()

    return calibrate_activations(denoiser, config.groups, run)


def _split(obj: Any) -> tuple[Any, nn.Module]:
    for name in DENOISER_SUBFOLDERS:
        module = getattr(obj, name, None)
        if isinstance(module, nn.Module):
            return obj, module
    if isinstance(obj, nn.Module):
        return None, obj
    raise ConfigError(f"{type(obj).__name__} is neither a diffusers pipeline with a "
                      f"{' or '.join(DENOISER_SUBFOLDERS)} nor a denoiser nn.Module")


def _call_kwargs(pipe: Any, prompts: list[str], steps: int, seed: int) -> dict[str, Any]:
    params = inspect.signature(pipe.__call__).parameters
    kwargs: dict[str, Any] = {
        "prompt": prompts,
        "num_inference_steps": steps,
        "generator": [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))],
    }
    # Latents are enough for calibration: skip the VAE decode. PixArt-style options as in the
    # diffusers workload (binning / caption cleaning would make runs machine-dependent).
    if "output_type" in params:
        kwargs["output_type"] = "latent"
    for flag in ("use_resolution_binning", "clean_caption"):
        if flag in params:
            kwargs[flag] = False
    return kwargs
