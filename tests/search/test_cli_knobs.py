"""Every knob from the CLI (issue 16): named diffusers options stored as workload options, estimator
options, a changed estimator on resume without recalibrating, and the full evaluation skipped with a note
where a workload has no alignment or distribution metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from quant.budget import Budget
from quant.config import ConfigError
from search.cli import app
from search.spec import StudySpec
from storage import Storage
from workloads.base import Workload
from workloads.testing import TinyWorkload

SMALL = ["--steps", "4", "--timestep-groups", "2", "--trials", "2", "--eval-samples", "2", "--calibration-samples",
         "2", "--full-samples", "2", "--baselines", "W8A8", "--budget", "wbits=6"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# ---- the full evaluation, per workload --------------------------------------------------------------


class QualityOnly(TinyWorkload):
    """The tiny workload without its alignment metric: fidelity to full precision is all it measures."""

    alignment = Workload.alignment


def test_a_workload_reports_which_full_metric_families_it_has() -> None:
    assert TinyWorkload.full_metric_families(TinyWorkload.__new__(TinyWorkload)) == {"alignment"}
    assert QualityOnly.full_metric_families(QualityOnly.__new__(QualityOnly)) == frozenset()


def test_a_study_skips_the_full_evaluation_with_a_note_where_the_workload_has_no_full_metric(tmp_path: Path) -> None:
    from search.study import Study
    from workloads.base import WORKLOADS

    WORKLOADS.add("quality-only-test", QualityOnly)
    spec = StudySpec(model="quality-only-test", budget=Budget.parse("wbits=6.5"), estimators=("mse",), timestep_groups=2,
                     num_steps=4, trials=2, eval_samples=2, calibration_samples=2, full_samples=2, baselines=("W8A8",))
    study = Study.create("q", spec, str(tmp_path / "q.db"))
    messages: list[str] = []
    study.run(progress=messages.append)
    assert study.storage.get_study("q").state.value == "COMPLETE"
    evaluations = study.storage.list_evaluations("q")
    assert evaluations and {e.fidelity for e in evaluations} == {"cheap"}  # nothing regenerated for nothing
    notes = [m for m in messages if m.startswith("full evaluation skipped")]
    assert len(notes) == 1 and "no alignment or distribution metrics" in notes[0]


# ---- named workload options -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.workloads.conftest import build_sd

    return build_sd(tmp_path_factory.mktemp("sd") / "sd")


def test_named_diffusers_options_are_stored_as_workload_options_and_reach_the_pipeline(
        sd_dir: Path, tmp_path: Path) -> None:
    from search.study import Study

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n\na blue sphere\n")
    db = str(tmp_path / "sd.db")
    out = CliRunner().invoke(app, [
        "launch", "--name", "sd", "--model", str(sd_dir), "--estimators", "mse", "--estimator-option", "n_images=1",
        "--resolution", "24", "--guidance", "3.0", "--prompts", str(prompts), "--scheduler", "EulerDiscreteScheduler",
        "--dtype", "float32", "--bits", "W8A8,W6A8,W4A8", "--db", db, *SMALL])  # int4 kernels need N % 16 == 0
    assert out.exit_code == 0, out.output
    stored = Storage(db).get_study("sd").spec
    assert stored["workload_options"] == ["resolution=24", "guidance_scale=3.0", f"prompts={prompts.resolve()}",
                                          "scheduler=EulerDiscreteScheduler", "torch_dtype=float32"]
    assert stored["estimator_options"] == ["n_images=1"]
    # a diffusers pipeline has no alignment or distribution metric: no full evaluation, and the log says so
    assert "full evaluation skipped" in out.output
    assert {e.fidelity for e in Storage(db).list_evaluations("sd")} == {"cheap"}
    workload = Study.load("sd", db).workload  # rebuilt from the stored spec, as resume and workers do
    assert workload.prompts == ("a red cube", "a blue sphere")  # type: ignore[attr-defined]
    assert workload.guidance_scale == 3.0  # type: ignore[attr-defined]
    assert type(workload.pipe.scheduler).__name__ == "EulerDiscreteScheduler"  # type: ignore[attr-defined]
    assert workload.generate(workload.batch(1)).images.shape[-2:] == (24, 24)


def test_a_named_option_the_workload_does_not_take_fails_in_one_line(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["launch", "--name", "x", "--resolution", "64", "--db", str(tmp_path / "x.db")])
    assert out.exit_code == 2
    (line,) = _error_lines(out.output)
    assert "'builtin' has no option 'resolution'" in line and "valid options:" in line
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(("args", "says"), [
    (["--guidance", "2", "--workload-option", "guidance_scale=3"], "--guidance and --workload-option guidance_scale"),
    (["--prompts", "no-such-file.txt"], "--prompts no-such-file.txt: no such file"),
    (["--estimators", "mse", "--estimator-option", "probes=2"],
     "estimator option 'probes' is taken by none of the estimators mse; valid keys: gain_noise, n_images"),
    (["--estimator-option", "n_images"], "estimator option 'n_images': write key=value, e.g. n_images=2"),
])
def test_bad_knobs_fail_in_one_line(args: list[str], says: str, tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["launch", "--name", "x", "--db", str(tmp_path / "x.db"), *args])
    assert out.exit_code == 2
    (line,) = _error_lines(out.output)
    assert says in line


def test_estimator_options_go_to_each_estimator_that_takes_them() -> None:
    spec = StudySpec(estimators=("gradient", "mse"), estimator_options=("probes=2", "n_images=1"))
    assert spec.estimator_kwargs("gradient") == {"probes": 2, "n_images": 1}
    assert spec.estimator_kwargs("mse") == {"n_images": 1}
    assert StudySpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="valid keys: .*n_images"):
        StudySpec(estimators=("kurtosis",), estimator_options=("seed=3",))  # the study's own seed is set by it


# ---- a changed estimator on resume --------------------------------------------------------------------


def test_resume_switches_the_estimator_without_recalibrating(tmp_path: Path) -> None:
    runner, db = CliRunner(), str(tmp_path / "r.db")
    first = runner.invoke(app, ["launch", "--name", "r", "--estimators", "kurtosis", "--estimator-option",
                                "n_images=1", "--memory-limit", "1000GB", "--db", db, *SMALL])
    assert first.exit_code == 0, first.output
    assert 0 <= first.output.find("total: about") < first.output.index("· calibration:")  # planned (fits), then run
    assert "calibration:" in first.output and "sensitivity: kurtosis" in first.output
    out = runner.invoke(app, ["resume", "r", "--estimators", "mse", "--estimator-option", "n_images=2", "--db", db])
    assert out.exit_code == 0, out.output
    assert "sensitivity: mse" in out.output
    for stage in ("calibration:", "inventory:", "target tables:"):  # reused from the study's cache
        assert stage not in out.output
    storage = Storage(db)
    spec = storage.get_study("r").spec
    assert spec["estimators"] == ["mse"] and spec["estimator_options"] == ["n_images=2"]
    assert {s["estimator"] for s in storage.list_score_sets("r")} == {"kurtosis", "mse"}
    assert len(storage.list_artifacts("r", kind="activation_ranges")) == 1
    status = runner.invoke(app, ["status", "r", "--db", db])
    assert json.loads(status.output[status.output.index("{"):status.output.rindex("}") + 1])["estimators"] == ["mse"]
    bad = runner.invoke(app, ["resume", "r", "--estimators", "nope", "--db", db])
    assert bad.exit_code == 2 and len(_error_lines(bad.output)) == 1 and "valid estimators" in bad.output
    assert storage.get_study("r").spec["estimators"] == ["mse"]  # a refused change stores nothing


def test_named_options_and_plan_options_are_in_the_help() -> None:
    runner = CliRunner()
    launch = runner.invoke(app, ["launch", "--help"], env={"COLUMNS": "400"})
    for flag, key in (("--resolution", "resolution"), ("--guidance", "guidance_scale"), ("--prompts", "prompts"),
                      ("--scheduler", "scheduler"), ("--dtype", "torch_dtype")):
        assert flag in launch.output and f"Same as --workload-option {key}=" in launch.output
    for flag in ("--estimator-option", "--memory-limit", "--dry-run"):
        assert flag in launch.output
    plan = runner.invoke(app, ["plan", "--help"], env={"COLUMNS": "400"})
    assert plan.exit_code == 0 and "--memory-limit" in plan.output and "--resolution" in plan.output
    assert "--name" not in plan.output and "--executor" not in plan.output  # what is searched, not how it runs


def test_a_bf16_model_is_searched_on_the_int8_kernels_as_its_own_reference(sd_dir: Path, tmp_path: Path) -> None:
    """--dtype bfloat16: the study runs every stage with the bf16 weights (half the bytes), its tables
    time the model as loaded and take it as the reference of relative budgets, and its candidates run
    on the int8 kernels."""
    from search.study import Study

    db = str(tmp_path / "bf.db")
    out = CliRunner().invoke(app, ["launch", "--name", "bf", "--model", str(sd_dir), "--dtype", "bfloat16",
                                   "--bits", "W8A8,W6A8,W4A8", "--db", db, *SMALL[:-2], "--budget", "memory=0.7x"])
    assert out.exit_code == 0, out.output
    study = Study.load("bf", db)
    denoiser = study.workload.denoiser
    assert {p.dtype for p in denoiser.parameters()} == {torch.bfloat16}
    tables = study.cache.solved_tables()
    assert tables is not None and (tables.float_format, tables.loaded_format) == ("bf16", "bf16")
    assert tables.float_bytes == 2 * sum(p.numel() for p in denoiser.parameters())
    evaluations = [e for e in Storage(db).list_evaluations("bf") if e.candidate_id != 0]
    assert evaluations and all(e.measured and e.run_labels.get("int8-kernel") for e in evaluations)
    assert all(e.peak_memory_bytes is not None and e.peak_memory_bytes < 0.7 * tables.float_bytes for e in evaluations)
    assert "the model's own float format, bf16" in CliRunner().invoke(app, ["pareto", "bf", "--db", db]).output


def test_a_float_format_the_tables_cannot_time_is_refused_before_any_stage(sd_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "half.db"
    out = CliRunner().invoke(app, ["launch", "--name", "h", "--model", str(sd_dir), "--dtype", "float16",
                                   "--db", str(db), *SMALL])
    assert out.exit_code == 2
    (line,) = _error_lines(out.output)
    assert "holds float16; load it in one of those (--dtype float32 or bfloat16)" in line and not db.exists()
