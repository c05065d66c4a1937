"""A seeded DDIM sampling loop over diffusers schedulers, one denoiser call per step.

Classifier-free guidance runs the unconditional and the conditional halves as ONE batched denoiser
call, so the number of denoiser calls equals the number of steps. ``on_step(step_index)`` is called
just before each denoiser call: a timestep-aware quantizer uses it to switch bit-widths per step.
``step_outputs``, when a list is given, receives each step's (guided) denoiser output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from .model import BuiltinModel, denoise

IMAGE_SHAPE = (1, 16, 16)


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...] = IMAGE_SHAPE) -> torch.Tensor:
    """One N(0, I) image per seed, each from its own generator: a sample depends only on its seed."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def make_scheduler(scheduler_config: dict[str, Any], num_steps: int) -> Any:
    """Deterministic DDIM (eta=0), trailing spacing (the first step starts at t=T-1), x0 clipped to [-1, 1].

    Clipping matters: under the cosine schedule alpha_bar(T-1) is ~1e-5, so an epsilon-prediction's
    implied x0 at the first steps is scaled by ~300 and, unclipped, saturates the image.
    """
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(
        {**scheduler_config, "timestep_spacing": "trailing", "clip_sample": True, "clip_sample_range": 1.0}
    )
    sched.set_timesteps(num_steps)
    return sched


@torch.no_grad()
def sample(
    denoiser: nn.Module,
    scheduler_config: dict[str, Any],
    context: torch.Tensor,
    mask: torch.Tensor,
    seeds: Sequence[int],
    *,
    null_context: torch.Tensor | None = None,
    null_mask: torch.Tensor | None = None,
    num_steps: int = 20,
    guidance_scale: float = 2.0,
    on_step: Callable[[int], None] | None = None,
    step_outputs: list[torch.Tensor] | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate len(seeds) images in [0, 1], shape (B, 1, 16, 16).

    ``null_context``/``null_mask`` (one row, the encoding of the empty prompt) enable classifier-free
    guidance when ``guidance_scale != 1``.
    """
    if len(seeds) != context.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for {context.shape[0]} prompts: give one seed per image")
    sched = make_scheduler(scheduler_config, num_steps)
    x = initial_noise(seeds) if noise is None else noise.clone()
    guided = guidance_scale != 1.0
    if guided:
        if null_context is None or null_mask is None:
            raise ValueError("guidance_scale != 1 needs null_context and null_mask (the empty prompt's encoding)")
        b = x.shape[0]
        ctx = torch.cat([null_context.expand(b, -1, -1), context])
        msk = torch.cat([null_mask.expand(b, -1), mask])
    for i, t in enumerate(sched.timesteps):
        if on_step is not None:
            on_step(i)
        if guided:
            eps_u, eps_c = denoise(denoiser, torch.cat([x, x]), t, ctx, msk).chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        else:
            eps = denoise(denoiser, x, t, context, mask)
        if step_outputs is not None:
            step_outputs.append(eps.clone())
        x = sched.step(eps, t, x).prev_sample
    return ((x.clamp(-1, 1) + 1) / 2).float()


def generate(
    model: BuiltinModel, prompts: Sequence[str], seeds: Sequence[int], *, num_steps: int = 20, guidance_scale: float | None = None, **kwargs: Any
) -> torch.Tensor:
    """Prompts + seeds -> images with a loaded built-in model (guidance from its config by default)."""
    context, mask = model.encode(list(prompts))
    null_context, null_mask = model.encode([""])
    g = float(model.config.get("guidance_scale", 2.0)) if guidance_scale is None else guidance_scale
    return sample(
        model.denoiser, model.scheduler_config, context, mask, seeds,
        null_context=null_context, null_mask=null_mask, num_steps=num_steps, guidance_scale=g, **kwargs,
    )
