"""A tiny text-conditioned diffusers UNet behind the Workload contract, for fast estimator tests.

The model is random: the tests check the estimator contract (coverage, determinism, the model left as
found, errors), never whether a ranking is good (that is `bench/sensitivity.py` on the built-in model).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from workloads.base import Batch, Generation, OnStep, Workload, split_batch

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
    return model.eval()


class TinyWorkload(Workload):
    """4-step deterministic sampler; alignment = cosine of a fixed image embedding with the prompt's."""

    name = "tiny"

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
        x = torch.stack([torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in batch.seeds])
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


@pytest.fixture(scope="session")
def workload() -> Iterator[TinyWorkload]:
    torch.set_num_threads(1)
    yield TinyWorkload()


@pytest.fixture(scope="session")
def some_layers(workload: TinyWorkload) -> list[str]:
    from quant.layers import quantizable_modules

    names = list(quantizable_modules(workload.denoiser))
    # first conv, a cross-attention projection, a feed-forward, the last conv
    picks = [names[0], next(n for n in names if "attn2.to_k" in n), next(n for n in names if ".ff." in n), names[-1]]
    return picks
