"""`bitsearch inspect`: JSON and table output, one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from search.cli import EXIT_USAGE, app

runner = CliRunner()


def test_inspect_json_lists_layers_and_totals() -> None:
    result = runner.invoke(app, ["inspect", "--model", "sd15-unet", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["model"], doc["class"]) == ("sd15-unet", "UNet2DConditionModel")
    assert doc["inputs"]["sample"] == [1, 4, 64, 64]
    layers = doc["layers"]
    assert len(layers) == doc["totals"]["layers"] == 282
    assert set(layers[0]) == {"fqn", "kind", "weight_shape", "params", "macs"}
    assert layers[0] == {
        "fqn": "conv_in",
        "kind": "conv",
        "weight_shape": [320, 4, 3, 3],
        "params": 320 * 4 * 9,
        "macs": 64 * 64 * 320 * 4 * 9,
    }
    assert doc["totals"]["macs"] == sum(x["macs"] for x in layers)


def test_inspect_batch_and_resolution() -> None:
    base = json.loads(runner.invoke(app, ["inspect", "-m", "dit-xl-2", "--json"]).stdout)
    big = json.loads(
        runner.invoke(
            app, ["inspect", "-m", "dit-xl-2", "--json", "--batch", "2", "--resolution", "64"]
        ).stdout
    )
    assert big["inputs"]["hidden_states"] == [2, 4, 64, 64]
    assert big["totals"]["macs"] > 2 * 4 * 0.9 * base["totals"]["macs"]  # 2x batch, 4x tokens


def test_inspect_table_top() -> None:
    result = runner.invoke(app, ["inspect", "--model", "sd15-unet", "--top", "3"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "top 3 of 282 layers by MACs" in result.stdout
    assert "total: 282 layers (184 linear, 98 conv)" in result.stdout
    assert "conv_in" not in result.stdout  # small layer, not in the top 3


def test_inspect_config_only_pipeline(tmp_path: Path) -> None:
    (tmp_path / "transformer").mkdir()
    config = Path(__file__).parents[2] / "workloads" / "model_configs" / "pixart-alpha.json"
    (tmp_path / "transformer" / "config.json").write_text(config.read_text())
    (tmp_path / "model_index.json").write_text(
        json.dumps({"transformer": ["diffusers", "PixArtTransformer2DModel"]})
    )
    doc = json.loads(runner.invoke(app, ["inspect", "--model", str(tmp_path), "--json"]).stdout)
    assert doc["class"] == "PixArtTransformer2DModel" and doc["totals"]["linear"] == 290


def test_inspect_bad_path_is_one_line_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", "--model", str(tmp_path / "nope")])
    assert result.exit_code == EXIT_USAGE == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a directory" in lines[0]
    assert "Traceback" not in result.output


def test_inspect_not_a_pipeline_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({"vae": ["diffusers", "AutoencoderKL"]}))
    result = runner.invoke(app, ["inspect", "--model", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "pipeline has no denoiser" in result.stderr


def test_help_shows_an_example() -> None:
    result = runner.invoke(app, ["inspect", "--help"])
    assert result.exit_code == 0
    assert "bitsearch inspect --model sdxl-unet" in result.stdout
