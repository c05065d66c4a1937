"""One `--model` vocabulary: inspect, convert and targets take the same names and paths (a workload,
a pipeline or model directory, a built-in config); a study refuses a built-in config in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from search.cli import EXIT_USAGE, app

runner = CliRunner()


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text-to-image UNet saved alone, with weights: no workload samples it (no pipeline, no classes)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("unet") / "unet"
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                         attention_head_dim=4, norm_num_groups=4).save_pretrained(path)
    return path


def test_inspect_and_convert_take_workloads_directories_and_built_in_configs(unet_dir: Path, tmp_path: Path) -> None:
    from quant.config import BitConfig, TimestepGroups

    for model in ("builtin", "sd15-unet", str(unet_dir)):
        inspected = runner.invoke(app, ["inspect", "--model", model, "--json"])
        assert inspected.exit_code == 0, (model, inspected.output)
        fqns = [x["fqn"] for x in json.loads(inspected.stdout)["layers"]]
        # a config naming the model's first layer at W4 (the rest at W8): convert checks the names against
        # the model and weights the mean bits by its parameters
        config = tmp_path / "c.json"
        config.write_text(json.dumps(BitConfig(TimestepGroups(1), {fqns[0]: "W4A8", "_default": "W8A8"}).to_dict()))
        converted = runner.invoke(app, ["convert", str(config), "--from", "json", "--model", model])
        assert converted.exit_code == 0, (model, converted.output)
        assert f"weighted by the parameters of {model}" in converted.output


def test_targets_times_a_model_directory_no_workload_samples_on_example_inputs(unet_dir: Path) -> None:
    out = runner.invoke(app, ["targets", "--model", str(unet_dir), "--bits", "W8A8"])
    assert out.exit_code == 0, out.output
    assert "int8" in out.output and "the fastest float format here" in out.output


def test_a_study_refuses_a_built_in_config_in_one_line(tmp_path: Path) -> None:
    out = runner.invoke(app, ["launch", "--name", "x", "--model", "sd15-unet", "--db", f"sqlite:///{tmp_path / 'x.db'}"])
    assert out.exit_code == EXIT_USAGE, out.output
    assert "built-in architecture" in out.output and len(out.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.db").exists()
