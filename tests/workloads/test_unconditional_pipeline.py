"""An unconditional diffusers pipeline directory (DDIMPipeline, built from configs) runs from the CLI:
launch -> pareto -> export -> resume -> validate, on the int8 backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from search.cli import app


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


def test_an_unconditional_pipeline_runs_a_whole_study_from_the_cli(ddim_dir: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    runner, db = CliRunner(), f"sqlite:///{tmp_path / 'u.db'}"
    try:
        out = runner.invoke(app, [
            "launch", "--name", "ddim", "--model", str(ddim_dir), "--budget", "memory=0.6x", "--estimators", "mse",
            "--timestep-groups", "2", "--steps", "4", "--trials", "2", "--eval-samples", "2",
            "--calibration-samples", "2", "--full-samples", "2", "--baselines", "W8A8", "--db", db])
        assert out.exit_code == 0, out.output
        front = runner.invoke(app, ["pareto", "ddim", "--db", db, "--format", "json"])
        assert front.exit_code == 0 and json.loads(front.output), front.output
        exported = runner.invoke(app, ["export", "ddim", "--within-budget", "--db", db, "-o", str(tmp_path / "b.json")])
        assert exported.exit_code == 0 and (tmp_path / "b.json").is_file(), exported.output
        assert runner.invoke(app, ["resume", "ddim", "--db", db]).exit_code == 0
        validated = runner.invoke(app, ["validate", "ddim", "--db", db, "--single", "3", "--mixed", "3",
                                        "--images", "1"])
        assert validated.exit_code == 0, validated.output
    finally:
        torch.set_num_threads(threads)


def test_an_unconditional_pipeline_takes_no_prompts(ddim_dir: Path) -> None:
    from workloads.base import WorkloadError, load_workload

    with pytest.raises(WorkloadError, match="unconditional; it takes no prompts"):
        load_workload(str(ddim_dir), prompts=["a cat"])
    workload = load_workload(str(ddim_dir), num_steps=3)
    images = workload.generate(workload.batch(2)).images
    assert images.shape == (2, 1, 8, 8) and float(images.min()) >= 0 and float(images.max()) <= 1
