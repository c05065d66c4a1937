"""A complete bitsearch workload: an unconditional UNet2DModel with a DDIM sampler. Random weights here;
use `UNet2DModel.from_pretrained(path)` for yours. Run it with
`bitsearch launch --name mine --model docs/examples/tiny_ddim.py:TinyDDIM --workload-option size=16`."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, UNet2DModel

from workloads.base import Batch, Generation, OnStep, Workload, split_batch


class TinyDDIM(Workload):
    def __init__(self, num_steps: int = 10, size: int = 16) -> None:
        torch.manual_seed(0)
        self.denoiser = UNet2DModel(sample_size=size, in_channels=1, out_channels=1, layers_per_block=1,
                                    block_out_channels=(16, 32), norm_num_groups=8,
                                    down_block_types=("DownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "UpBlock2D")).eval()
        self.scheduler = DDIMScheduler(num_train_timesteps=1000)
        self.num_steps, self.size = num_steps, size

    def batch(self, n: int, split: str = "eval", offset: int = 0) -> Batch:
        return split_batch([None], n, split, base_seed=0, offset=offset)  # unconditional; a seed per image

    @torch.no_grad()
    def generate(self, batch: Batch, on_step: OnStep | None = None, record_steps: bool = False) -> Generation:
        x = torch.stack([torch.randn(1, self.size, self.size, generator=torch.Generator().manual_seed(s))
                         for s in batch.seeds])
        self.scheduler.set_timesteps(self.num_steps)
        outputs = []
        for i, t in enumerate(self.scheduler.timesteps):  # one denoiser call per step, on_step(i) before it
            if on_step is not None:
                on_step(i)
            eps = self.denoiser(x, t).sample
            if record_steps:
                outputs.append(eps.clone())
            x = self.scheduler.step(eps, t, x).prev_sample
        return Generation(((x.clamp(-1, 1) + 1) / 2).float(), outputs)  # images in [0, 1]
