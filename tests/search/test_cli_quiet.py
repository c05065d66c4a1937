"""Quiet by default: a command that imports torch, diffusers and torchao shows its output and nothing
of the libraries' import-time warnings and notes; `--verbose` lets them through."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _inspect(*options: str) -> subprocess.CompletedProcess[str]:
    # a subprocess: the libraries report when first imported, which in this test process already happened
    env = {k: v for k, v in os.environ.items() if not k.endswith("_VERBOSITY")}
    return subprocess.run([sys.executable, "-m", "search.cli", *options, "inspect", "--model", "sd15-unet",
                           "--top", "3", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_commands_are_quiet_by_default_and_verbose_on_request() -> None:
    quiet = _inspect()
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert '"class": "UNet2DConditionModel"' in quiet.stdout
    verbose = _inspect("--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stdout == quiet.stdout


def test_a_command_run_in_process_leaves_the_process_settings_as_they_were(tmp_path: Path) -> None:
    # tests and notebooks run commands in-process: the quiet mode must not outlive the command
    import logging
    import warnings

    from typer.testing import CliRunner

    from search.cli import app

    logger = logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(logging.INFO)
    env_before = {k: os.environ.get(k) for k in ("DIFFUSERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    filters_before = list(warnings.filters)
    try:
        result = CliRunner().invoke(app, ["list", "--db", str(tmp_path / "none.db")])
        assert logger.level == logging.INFO
    finally:
        logger.setLevel(level)
    assert result.exit_code != 0 and "no bitsearch database" in result.stderr
    assert {k: os.environ.get(k) for k in env_before} == env_before
    assert list(warnings.filters) == filters_before
