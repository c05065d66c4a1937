"""The conformance suite every workload runs through, and a tiny workload for other packages' suites.

A plugin author subclasses `WorkloadSuite` in a test file and overrides the `workload` fixture
(class-scoped: a workload is built once for the whole suite):

    from workloads.testing import WorkloadSuite

    class TestMyWorkload(WorkloadSuite):
        @pytest.fixture(scope="class")
        def workload(self) -> Workload:
            return MyWorkload(num_steps=2)

The checks are the contract in `workloads.base.Workload`: fixed prompts and seeds per split, disjoint
splits, a deterministic sampler that calls `on_step` once per denoiser step, images in [0, 1], metrics
that are finite. `TinyWorkload` (a random 4-step text-conditioned UNet) is what `sensitivity.testing`
estimates on. pytest is imported here: this module is for test files only.
"""

from __future__ import annotations

import math
from typing import cast

import pytest
import torch
from torch import nn

from quant.quantities import quantity
from workloads.base import Batch, Generation, OnStep, Workload, split_batch
from workloads.metrics import QUALITY

PROMPTS = ["a zero", "a one", "a two", "a three", "a four", "a five"]
CONTEXT_DIM = 16


def tiny_unet() -> nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CONTEXT_DIM, attention_head_dim=4, norm_num_groups=8,
    )
    return cast(nn.Module, model).eval()  # diffusers types its models loosely


class TinyWorkload(Workload):
    """4-step deterministic sampler; alignment = cosine of a fixed image embedding with the prompt's.
    The model is random: suites check contracts (coverage, determinism, errors), never image quality."""

    name = "tiny"
    latent_size = 8  # latents are 1 x latent_size x latent_size

    def __init__(self, num_steps: int = 4) -> None:
        self.denoiser = tiny_unet()
        self.num_steps = num_steps
        self.splits_seen: list[str] = []
        g = torch.Generator().manual_seed(1)
        self._embed = torch.randn(64, CONTEXT_DIM, generator=g)

    def batch(self, n: int, split: str = "eval", offset: int = 0) -> Batch:
        return split_batch(PROMPTS, n, split, 0, offset)

    def _context(self, prompts: tuple[str, ...]) -> torch.Tensor:
        rows = [torch.randn(3, CONTEXT_DIM, generator=torch.Generator().manual_seed(sum(map(ord, p)))) for p in prompts]
        return torch.stack(rows)

    def generate(self, batch: Batch, on_step: OnStep | None = None, record_steps: bool = False) -> Generation:
        self.splits_seen.append("calibration" if batch.seeds[0] >= 1_000_000 else "eval")
        side = self.latent_size
        x = torch.stack([torch.randn(1, side, side, generator=torch.Generator().manual_seed(s)) for s in batch.seeds])
        ctx = self._context(batch.prompts)
        outs = []
        with torch.no_grad():
            for i in range(self.num_steps):
                if on_step is not None:
                    on_step(i)
                t = torch.full((len(batch.seeds),), 999 - 250 * i)
                eps = self.denoiser(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
                if record_steps:
                    outs.append(eps.clone())
                x = 0.9 * x - 0.3 * eps
        return Generation(((x.clamp(-1, 1) + 1) / 2).float(), outs)

    def alignment(self, batch: Batch, test: Generation) -> dict[str, float]:
        feats = test.images.reshape(len(batch.seeds), -1) @ self._embed
        cos = torch.cosine_similarity(feats, self._context(batch.prompts).mean(1), dim=-1)
        return {"clip_score": float(100 * (cos + 1).mean())}


class WorkloadSuite:
    @pytest.fixture(scope="class")
    def workload(self) -> Workload:
        raise NotImplementedError("override the `workload` fixture with the workload under test")

    @pytest.fixture(scope="class")
    def generated(self, workload: Workload) -> tuple[Batch, Generation, list[int]]:
        """One recorded generation of a 2-image eval batch, and the steps `on_step` saw."""
        steps: list[int] = []
        batch = workload.batch(2)
        return batch, workload.generate(batch, on_step=steps.append, record_steps=True), steps

    def test_batches_are_fixed_and_splits_never_share_a_seed(self, workload: Workload) -> None:
        ev, cal = workload.batch(3), workload.batch(3, "calibration")
        assert ev == workload.batch(3) and len(ev.conditions) == len(ev.seeds) == 3
        assert not set(ev.seeds) & set(cal.seeds)
        assert workload.batch(2, offset=1).seeds == ev.seeds[1:]

    def test_generation_calls_on_step_once_per_step_and_records_them(
        self, workload: Workload, generated: tuple[Batch, Generation, list[int]]
    ) -> None:
        _, gen, steps = generated
        assert steps == list(range(workload.num_steps))
        assert len(gen.step_outputs) == workload.num_steps
        assert isinstance(workload.denoiser, nn.Module)

    def test_images_are_finite_in_unit_range_and_deterministic(
        self, workload: Workload, generated: tuple[Batch, Generation, list[int]]
    ) -> None:
        batch, gen, _ = generated
        assert gen.images.ndim == 4 and gen.images.shape[0] == len(batch.seeds)
        assert torch.isfinite(gen.images).all() and gen.images.min() >= 0 and gen.images.max() <= 1
        assert torch.equal(workload.generate(batch).images, gen.images)

    def test_metrics_are_finite(self, workload: Workload, generated: tuple[Batch, Generation, list[int]]) -> None:
        batch, gen, _ = generated
        quality = workload.quality(gen, gen)
        assert quality and all(not math.isnan(v) for v in quality.values())
        assert all(math.isfinite(v) for v in workload.alignment(batch, gen).values())

    def test_metrics_are_declared_and_include_the_quality_metric(
            self, workload: Workload, generated: tuple[Batch, Generation, list[int]]) -> None:
        """Fronts and objectives read each metric's direction and unit from the catalogue, and the
        solvers rank by QUALITY: an undeclared metric could not be ranked."""
        batch, gen, _ = generated
        quality = workload.quality(gen, gen)
        assert QUALITY in quality
        for name in (*quality, *workload.alignment(batch, gen)):
            assert not quantity(name).cost, f"metric {name!r} is declared as a cost"
