"""A workload in a file outside the repository, run from the CLI by `path.py:Class`, its own options given
with --workload-option and stored with the study, and a metric of its own that the front maximises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from search.cli import app

PLUGIN = '''
from quant.quantities import Quantity, declare
from workloads.testing import TinyWorkload

declare(Quantity("label_score", "", True, "a plugin's own alignment score: higher is better"))


class Shifted(TinyWorkload):
    """The tiny random UNet whose alignment score is shifted by an option (stored with the study)."""

    def __init__(self, num_steps: int = 4, shift: float = 0.0, tag: str = "") -> None:
        super().__init__(num_steps)
        self.shift, self.tag = shift, tag

    def alignment(self, batch, test):
        return {"label_score": self.shift + super().alignment(batch, test)["clip_score"]}
'''


@pytest.fixture
def one_thread_cli():  # type: ignore[no-untyped-def]
    threads = torch.get_num_threads()
    yield CliRunner()
    torch.set_num_threads(threads)


def test_a_plugin_file_runs_from_the_cli_with_its_options_and_resumes(tmp_path: Path, one_thread_cli) -> None:
    plugin = tmp_path / "elsewhere" / "my_workload.py"
    plugin.parent.mkdir()
    plugin.write_text(PLUGIN)
    db = f"sqlite:///{tmp_path / 'p.db'}"
    out = one_thread_cli.invoke(app, [
        "launch", "--name", "plug", "--model", f"{plugin}:Shifted", "--workload-option", "shift=100.5",
        "--workload-option", "tag=red", "--budget", "wbits=6.5", "--estimators", "mse", "--timestep-groups", "2",
        "--steps", "4", "--trials", "2", "--eval-samples", "2", "--calibration-samples", "2",
        "--full-samples", "2", "--baselines", "W8A8", "--db", db])
    assert out.exit_code == 0, out.output
    status = one_thread_cli.invoke(app, ["status", "plug", "--db", db])
    assert status.exit_code == 0 and '"shift=100.5"' in status.output and '"tag=red"' in status.output
    # the options came back from the database: the stored spec rebuilds the same workload
    from search.study import Study

    study = Study.load("plug", db)
    assert (study.workload.shift, study.workload.tag) == (100.5, "red")
    scored = [p for p in study.front_points() if "label_score" in p.metrics]
    assert scored and all(p.metrics["label_score"] > 100 for p in scored)
    front = study.pareto(("label_score", "wbits"))
    best = max(scored, key=lambda p: p.metrics["label_score"])
    assert best.candidate_id in {p.candidate_id for p in front}  # maximised: the highest score is on the front
    resumed = one_thread_cli.invoke(app, ["resume", "plug", "--db", db])
    assert resumed.exit_code == 0, resumed.output
    listed = one_thread_cli.invoke(app, ["inspect", "--model", f"{plugin}:Shifted", "--json"])
    assert listed.exit_code == 0 and json.loads(listed.output)["layers"]


def test_bad_plugins_and_options_are_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "notaworkload.py").write_text("class X:\n    pass\n")
    for model, option, msg in [(f"{tmp_path / 'missing.py'}:W", [], "no file"),
                               (f"{tmp_path / 'notaworkload.py'}:X", [], "not a workloads.base.Workload subclass"),
                               ("builtin", ["--workload-option", "novalue"], "write key=value")]:
        out = runner.invoke(app, ["launch", "--name", "x", "--model", model, *option,
                                  "--db", f"sqlite:///{tmp_path / 'x.db'}"])
        assert out.exit_code == 2 and msg in out.output, out.output


def test_inspect_takes_the_builtin_workload() -> None:
    out = CliRunner().invoke(app, ["inspect", "--model", "builtin", "--top", "3"])
    assert out.exit_code == 0 and "UNet2DConditionModel" in out.output, out.output


def test_the_api_refuses_a_plugin_named_by_the_request(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from search.api import create_app

    (tmp_path / "evil.py").write_text("raise SystemExit('imported')\n")
    token = "t" * 32
    client = TestClient(create_app(str(tmp_path / "a.db"), token, run_studies=False))
    r = client.post("/studies", json={"name": "x", "model": f"{tmp_path / 'evil.py'}:W"},
                    headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and "runs no code named by a request" in r.text


@pytest.mark.slow
def test_a_plugin_file_runs_on_two_ray_workers(tmp_path: Path, one_thread_cli) -> None:
    """Ray's actors are other processes: they rebuild the workload from the stored spec, importing the
    plugin file by its absolute path (no pickling of the class by value)."""
    pytest.importorskip("ray", reason="pip install ray to run the ray executor tests")
    plugin = tmp_path / "my_workload.py"
    plugin.write_text(PLUGIN)
    db = f"sqlite:///{tmp_path / 'r.db'}"
    out = one_thread_cli.invoke(app, [
        "launch", "--name", "ray-plug", "--model", f"{plugin}:Shifted", "--workload-option", "shift=7",
        "--budget", "wbits=6.5", "--estimators", "mse", "--timestep-groups", "2", "--steps", "4", "--trials", "2",
        "--eval-samples", "2", "--calibration-samples", "2", "--full-samples", "2", "--baselines", "uniform",
        "--executor", "ray", "--workers", "2", "--heartbeat-timeout", "120", "--db", db])
    assert out.exit_code == 0, out.output
    from search.study import Study

    evals = Study.load("ray-plug", db).storage.list_evaluations("ray-plug")
    import os

    workers = {e.worker.rsplit(":", 1)[0] for e in evals if e.worker}
    assert evals and workers and not any(str(os.getpid()) in w.split(":") for w in workers)  # ran in actors
    assert all(e.metrics.get("label_score", 7.0) >= 7.0 for e in evals)  # the option reached the actors


def test_the_docs_example_workload_runs_a_study_from_the_cli(tmp_path: Path, one_thread_cli) -> None:
    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "tiny_ddim.py"
    assert len(example.read_text().splitlines()) <= 50
    db = f"sqlite:///{tmp_path / 'd.db'}"
    out = one_thread_cli.invoke(app, [
        "launch", "--name", "ddim", "--model", f"{example}:TinyDDIM", "--workload-option", "size=8",
        "--budget", "wbits=6.5", "--estimators", "mse", "--timestep-groups", "2", "--steps", "4", "--trials", "2",
        "--eval-samples", "2", "--calibration-samples", "2", "--full-samples", "2", "--baselines", "W8A8",
        "--db", db])
    assert out.exit_code == 0, out.output
    pareto = one_thread_cli.invoke(app, ["pareto", "ddim", "--db", db, "--format", "json"])
    assert pareto.exit_code == 0 and json.loads(pareto.output), pareto.output
    validated = one_thread_cli.invoke(app, ["validate", "ddim", "--db", db, "--single", "3", "--mixed", "3",
                                            "--images", "1"])
    assert validated.exit_code == 0 and "mse" in validated.output, validated.output
