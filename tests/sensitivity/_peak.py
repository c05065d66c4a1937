"""Child process of test_memory.py: one estimator run on a wide tiny workload, its peak resident
increase printed as JSON. A fresh process per measurement: memory freed by an earlier run stays in the
allocator's free lists and would hide a later run's growth.

    python tests/sensitivity/_peak.py ESTIMATOR STEPS IMAGES WIDTH [OPTIONS_JSON]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import cast

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from quant.resident import PeakResident  # noqa: E402
from sensitivity import get_estimator  # noqa: E402
from workloads.testing import CONTEXT_DIM, TinyWorkload  # noqa: E402


class WideWorkload(TinyWorkload):
    """`TinyWorkload`'s sampler on a UNet `width` channels wide and 16 x 16 latents: weights (~50 MB at
    width 128) and one call's activations weigh enough that a model copy or a graph kept too many shows."""

    latent_size = 16

    def __init__(self, num_steps: int, width: int) -> None:
        super().__init__(num_steps)
        from diffusers import UNet2DConditionModel

        torch.manual_seed(0)
        self.denoiser = cast(nn.Module, UNet2DConditionModel(
            sample_size=16, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(width, 2 * width),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=CONTEXT_DIM, attention_head_dim=8, norm_num_groups=16,
        )).eval()


def main() -> None:
    name, steps, images, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    options = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    torch.set_num_threads(1)
    workload = WideWorkload(steps, width)
    with PeakResident() as fp:  # also warms up what the first run of anything allocates once
        workload.generate(workload.batch(images, split="calibration"))
    estimator = get_estimator(name, progress=False, n_images=images, **options)
    with PeakResident() as peak:
        estimator.estimate(workload, None, ["W4A16", "W8A8"], 2)
    model = sum(p.numel() * p.element_size() for p in workload.denoiser.parameters())
    print(json.dumps({"peak_increase": peak.peak_increase_bytes, "model": model, "fp_increase": fp.peak_increase_bytes}))


if __name__ == "__main__":
    main()
