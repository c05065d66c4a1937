"""An unconditional diffusers pipeline directory (DDIMPipeline, built from configs) runs from the CLI on the
int8 backend: launch -> SIGKILL of the coordinator -> pareto -> resume -> pareto -> export -> validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.workloads.killed_study import killed_study_runs_to_the_end


@pytest.fixture(scope="module")
def ddim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                       norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    path = tmp_path_factory.mktemp("ddim") / "pipe"
    DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000)).save_pretrained(path)
    return path


def test_an_unconditional_pipeline_runs_a_whole_study_from_the_cli_through_a_kill(ddim_dir: Path,
                                                                                 tmp_path: Path) -> None:
    rows = killed_study_runs_to_the_end(str(ddim_dir), tmp_path)
    assert all("psnr_db" in r for r in rows)


def test_an_unconditional_pipeline_takes_no_prompts(ddim_dir: Path) -> None:
    from workloads.base import WorkloadError, load_workload

    with pytest.raises(WorkloadError, match="not a text-to-image pipeline; it takes no prompts"):
        load_workload(str(ddim_dir), prompts=["a cat"])
    with pytest.raises(WorkloadError, match="not class-conditional; num_classes, classes and classifier apply"):
        load_workload(str(ddim_dir), num_classes=3)
    workload = load_workload(str(ddim_dir), num_steps=3)
    batch = workload.batch(2)
    assert batch.conditions == (None, None)  # typed: unconditional, not a stand-in prompt
    images = workload.generate(batch).images
    assert images.shape == (2, 1, 8, 8) and float(images.min()) >= 0 and float(images.max()) <= 1


def test_a_latent_ldm_pipeline_samples_through_its_vq_decoder(tmp_path: Path) -> None:
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel, VQModel

    from workloads.base import load_workload

    torch.manual_seed(0)
    vq = VQModel(in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                 norm_num_groups=2, num_vq_embeddings=16, sample_size=8)
    unet = UNet2DModel(sample_size=4, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
                       norm_num_groups=8, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    LDMPipeline(vqvae=vq, unet=unet, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "ldm")
    workload = load_workload(str(tmp_path / "ldm"), num_steps=3)
    steps: list[int] = []
    gen = workload.generate(workload.batch(2), on_step=steps.append, record_steps=True)
    assert steps == [0, 1, 2] and gen.step_outputs[0].shape == (2, 3, 4, 4)  # the latent denoiser's calls
    assert gen.images.shape == (2, 3, 8, 8) and 0 <= float(gen.images.min()) <= float(gen.images.max()) <= 1
    assert torch.equal(workload.generate(workload.batch(2)).images, gen.images)
