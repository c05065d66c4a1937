"""`bitsearch plan` / `launch --dry-run`: a study's predicted time and peak memory per stage, measured on
the built-in model, and the refusal of a study that will not fit."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quant.budget import Budget
from quant.config import ConfigError
from quant.latency import REPLAY_ROUNDS
from search.cli import app
from search.plan import Call, Measured, Plan, check_fits, measure_plan, parse_bytes, predict
from search.spec import StudySpec

SMALL = ["--steps", "8", "--timestep-groups", "2", "--estimators", "kurtosis", "--estimator-option", "n_images=1",
         "--eval-samples", "2", "--calibration-samples", "4", "--full-samples", "2", "--trials", "2",
         "--baselines", "W8A8", "--budget", "wbits=6"]
SPEC = StudySpec(budget=Budget.parse("wbits=6"), num_steps=8, timestep_groups=2, estimators=("kurtosis",),
                 estimator_options=("n_images=1",), eval_samples=2, calibration_samples=4, full_samples=2, trials=2,
                 baselines=("W8A8",))
STAGES = ("calibration", "sensitivity: kurtosis", "latency table", "each cheap evaluation", "each full evaluation",
          "all evaluations")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_plan_prints_every_stage_and_dry_run_prints_the_same_writing_nothing(tmp_path: Path) -> None:
    runner = CliRunner()
    planned = runner.invoke(app, ["plan", *SMALL, "--memory-limit", "1000GB"])
    assert planned.exit_code == 0, planned.output
    db = tmp_path / "d.db"
    dry = runner.invoke(app, ["launch", "--name", "d", "--db", str(db), "--dry-run", *SMALL])
    assert dry.exit_code == 0, dry.output
    for out in (planned.output, dry.output):
        for stage in STAGES:
            assert stage in out
        assert "total: about" in out and "peak" in out
    assert "memory limit 1000 GB" in planned.output and "(available now)" in dry.output
    assert not db.exists()  # a dry run creates no study


def test_a_study_over_the_memory_limit_is_refused_in_one_line_naming_the_stage(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    out = CliRunner().invoke(app, ["launch", "--name", "r", "--db", str(db), "--memory-limit", "1MB", *SMALL])
    assert out.exit_code == 2
    errors = [line for line in out.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "calibration stage" in errors[0] and "calibration_samples" in errors[0], out.output
    assert not db.exists()  # refused before the study is created


def test_a_memory_limit_that_is_not_a_size_is_refused() -> None:
    assert parse_bytes("1.5GiB") == int(1.5 * 2**30) and parse_bytes("512MB") == 512_000_000
    for bad in ("0.5x", "lots", "-1GB"):
        with pytest.raises(ConfigError, match="write a size like 16GB"):
            parse_bytes(bad)


def _measured(**over: object) -> Measured:
    values: dict[str, object] = dict(
        load_s=7.0, loaded_bytes=1_000_000_000, weight_bytes=400_000_000, call=Call((1.0, 1.5), (100_000_000, 150_000_000)),
        calibration_overhead=1.2, overhead_s=(0.25, 0.5), apply_s=3.0, quantized_ratio=1.5, applied_bytes=100_000_000,
        estimator_step={"kurtosis": (4.0, 350_000_000)}, estimator_images={"kurtosis": 3}, evaluations=5,
        full_metrics=True, measures_latency=True, table_pairs=5, bf16_copy=True)
    values.update(over)
    return Measured(**values)  # type: ignore[arg-type]


def test_stages_follow_the_documented_model() -> None:
    plan = predict(SPEC, _measured())
    by = {s.name: s for s in plan.stages}
    assert tuple(by) == STAGES
    # calibration: 8 steps x a call at batch 4 (1 + 0.5 x 3 = 2.5 s) + 4 images x 0.25 s, x 1.2 observers
    assert by["calibration"].seconds == pytest.approx((8 * 2.5 + 4 * 0.25) * 1.2)
    assert by["calibration"].peak_bytes == 1_000_000_000 + 250_000_000
    # sensitivity: one step x 8 steps x (call at batch 3 / batch 1 = 2 / 1); peak + 2 images' activations
    assert by["sensitivity: kurtosis"].seconds == pytest.approx(4.0 * 8 * 2.0)
    assert by["sensitivity: kurtosis"].peak_bytes == 1_000_000_000 + 350_000_000 + 100_000_000
    # latency table: 5 pairs x 6 rounds (a warm-up + 5: each round's 5 s stay under TABLE_S) of 2 float
    # and 2 uniformly quantized calls (1.5x as long); 1 + 15 rounds of an fp32 and a bf16 call (15 x 2 s
    # reach TABLE_S); 6 applies
    assert by["latency table"].seconds == pytest.approx(5 * (2 + 2 * 1.5) * 6 + 2 * 16 + 6 * 3.0)
    # a cheap evaluation: apply + 2 images x 8 quantized calls (1.5x as long), then a batch-1 call per
    # timestep group replayed quantized and float (2 groups x 2.5 s: past REPLAY_S, 1 round) after a
    # warm-up (each group's quantized call and one float call)
    cheap = 3.0 + (8 * 1.5 * 1.5 + 2 * 0.25) + (2 * 1.5 + 1.0) + 2 * (1.5 + 1.0)
    assert by["each cheap evaluation"].seconds == pytest.approx(cheap)
    reference = 8 * 1.5 + 2 * 0.25
    full = 3.0 + 8 * 1.5 * 1.5 + 2 * 0.25
    assert by["all evaluations"].seconds == pytest.approx(reference + 5 * cheap + 5 * full)
    assert plan.total_seconds == pytest.approx(sum(by[s].seconds for s in STAGES if not s.startswith("each ")))
    assert plan.peak.name == "sensitivity: kurtosis"
    check_fits(plan, plan.peak.peak_bytes)  # at the limit fits
    with pytest.raises(ConfigError, match="its sensitivity: kurtosis stage .* try a lighter estimator"):
        check_fits(plan, plan.peak.peak_bytes - 1)


def test_quantized_calls_are_priced_at_the_uniform_config_measured() -> None:
    """Every stage's quantized calls (the table's uniform configs, the evaluations' searched ones) cost
    the measured uniform config's time; float calls (the reference, the float replays) do not change."""
    fast, slow = ({s.name: s.seconds for s in predict(SPEC, _measured(quantized_ratio=r)).stages} for r in (0.5, 1.5))
    assert fast["calibration"] == slow["calibration"] and fast["sensitivity: kurtosis"] == slow["sensitivity: kurtosis"]
    assert slow["latency table"] - fast["latency table"] == pytest.approx(5 * 2 * 6 * 1.0)  # 60 calls of 1 s
    # a cheap evaluation: 2 images x 8 calls (1.5 s), and 2 groups' calls (1 s) warmed up and replayed
    assert slow["each cheap evaluation"] - fast["each cheap evaluation"] == pytest.approx(8 * 1.5 + 2 * 2 * 1.0)


def test_the_table_prices_only_the_pairs_it_times_and_fast_calls_replay_in_more_rounds() -> None:
    """Pairs sharing an earlier pair's kernels cost their apply only; calls far under REPLAY_S are replayed
    in up to REPLAY_ROUNDS rounds."""
    five, three = (predict(SPEC, _measured(table_pairs=n)).stages[2] for n in (5, 3))
    assert five.seconds - three.seconds == pytest.approx(2 * 4 * 6 * ((1.0 + 1.5) / 2))  # 2 pairs x 4 calls x 6 rounds
    bf16 = predict(SPEC, _measured(bf16_copy=False)).stages[2]  # a bf16 model: no copy timed or held
    assert five.seconds - bf16.seconds == pytest.approx(32 * 1.0) and five.peak_bytes - bf16.peak_bytes == 200_000_000
    fast = {s.name: s.seconds for s in predict(SPEC, _measured(call=Call((0.01, 0.015), (1, 1)))).stages}
    replay = 2 * 0.015 + 0.01 + REPLAY_ROUNDS * 2 * 0.025  # 5 rounds of 0.05 s stay under REPLAY_S
    assert fast["each cheap evaluation"] == pytest.approx(3.0 + 8 * 0.015 * 1.5 + 2 * 0.25 + replay)


def test_searched_configs_are_priced_at_the_budgets_latency_cap() -> None:
    """The solver spends a latency budget on quality: a searched config runs at the cap (a relative one
    of the reference float's call), or at the uniform config measured where that is slower or there is
    no cap."""
    def cheap(budget: str, **over: object) -> float:
        spec = dataclasses.replace(SPEC, budget=Budget.parse(budget))
        stages = predict(spec, _measured(quantized_ratio=0.5, **over)).stages
        return next(s.seconds for s in stages if s.name == "each cheap evaluation")

    uniform = cheap("wbits=6")
    # 8 calls at batch 2 (1.5 s), and per group a warm-up and a round of batch-1 calls (1 s): 16 s at ratio 1
    assert cheap("latency=0.8x") - uniform == pytest.approx(16 * (0.8 - 0.5))
    assert cheap("latency=0.8x", reference_ratio=0.5) == pytest.approx(uniform)  # 0.4 of the loaded call
    assert cheap("latency=900ms") - uniform == pytest.approx(16 * (0.9 - 0.5))  # 0.9 s of a 1 s call


def test_slow_calls_shorten_the_tables_windows_and_the_float_model_is_timed_alone_only_without_pairs() -> None:
    """A big model's windows stop at TABLE_MIN_ROUNDS once their calls took TABLE_S (quant.latency)."""
    slow = predict(SPEC, _measured(call=Call((10.0, 15.0), (1, 1)), quantized_ratio=0.5)).stages[2]
    # 5 pairs x (1 + 3 rounds) x (2 float calls of 10 s + 2 quantized of 5 s); 1 + 2 rounds of fp32 and bf16
    assert slow.seconds == pytest.approx(5 * 4 * (20 + 10) + 2 * 3 * 10 + 6 * 3.0)
    assert "86 whole calls" in slow.how  # 5 x 4 rounds x 4 calls + 3 x 2
    alone = predict(SPEC, _measured(table_pairs=0, bf16_copy=False)).stages[2]  # W16A16 only
    assert alone.seconds == pytest.approx(2 * 6 * 1.0 + 6 * 3.0) and "the float model timed alone" in alone.how


def test_no_full_evaluation_row_where_the_workload_has_no_full_metrics() -> None:
    plan = predict(SPEC, _measured(full_metrics=False, measures_latency=False))
    names = [s.name for s in plan.stages]
    assert "each full evaluation" not in names and "latency table" not in names
    assert "no full evaluation" in plan.stages[-1].how


def test_calibration_prediction_is_within_a_factor_2_of_the_study(tmp_path: Path) -> None:
    """Loose on purpose (a shared machine); the measured ratio is printed (pytest -s) and in the report."""
    from search.study import Study

    plan: Plan = predict(SPEC, measure_plan(SPEC))
    predicted = next(s for s in plan.stages if s.name == "calibration")
    study = Study.create("c", SPEC, str(tmp_path / "c.db"))
    t0 = time.process_time()
    study.cache.activation_ranges(lambda m: None)
    took = time.process_time() - t0
    print(f"calibration: predicted {predicted.seconds:.3f} s, took {took:.3f} s, ratio {took / predicted.seconds:.2f}")
    assert 0.5 <= took / predicted.seconds <= 2.0


def test_launch_with_a_plan_shows_each_stage_s_prediction_as_it_starts(tmp_path: Path) -> None:
    """`launch --memory-limit` plans first; each stage's message then carries the plan's time (the stage
    names of the study's messages and of the plan are matched, so a renamed message would fail here)."""
    db = tmp_path / "p.db"
    out = CliRunner().invoke(app, ["launch", "--name", "p", "--db", str(db), "--memory-limit", "1000GB",
                                   "--max-seconds", "0", *SMALL])
    assert out.exit_code == 0, out.output
    started = [" ".join(m.split()) for m in out.output.split("· ")[1:]]  # the console wraps long messages
    for prefix in ("calibration:", "sensitivity: kurtosis over", "target tables:"):
        message = next((m for m in started if m.startswith(prefix)), None)
        assert message is not None and "(plan: about " in message, (prefix, started)


def test_time_left_is_the_plan_s_until_the_bar_s_own_pace_is_known() -> None:
    from rich.progress import Progress

    from search.cli import _TimeLeft

    bars = Progress()
    planned, unplanned = bars.add_task("a", total=4, fidelity="cheap"), bars.add_task("b", total=4, fidelity="full")
    column = _TimeLeft({"cheap": 30.0, "full": None})
    assert column.render(bars.tasks[planned]).plain == "left 0:02:00"  # 4 x 30 s, none done yet
    assert column.render(bars.tasks[unplanned]).plain == "left -:--:--"  # no plan, no pace yet


def test_ray_workers_divide_the_evaluations_time_and_each_holds_a_model() -> None:
    m = _measured(workers_start_s=20.0)
    one = predict(SPEC, m).stages[-1]
    two = predict(SPEC, m, workers=2).stages[-1]
    assert two.name == one.name == "all evaluations"
    reference = 8 * 1.5 + 2 * 0.25  # each worker makes the float reference; they load and make it at once
    # after Ray and its workers started (measured)
    assert two.seconds == pytest.approx(20.0 + m.load_s + reference + (one.seconds - reference) / 2)
    assert "Ray's start (20 s measured" in two.how
    # two workers' evaluation peaks, and the coordinator without its model
    assert two.peak_bytes == 2 * one.peak_bytes + m.loaded_bytes - m.weight_bytes
    with pytest.raises(ConfigError, match="all evaluations stage"):
        check_fits(predict(SPEC, m, workers=2), int(1.5 * one.peak_bytes))


def test_rays_start_is_measured_for_the_plan_and_leaves_ray_as_it_found_it() -> None:
    """What a study's Ray run spends before its workers load the model: a local Ray and 2 actors that
    import torch, diffusers and the evaluator's modules (a second or more on any machine)."""
    ray = pytest.importorskip("ray", reason="pip install ray to run the ray executor tests")
    from search.executors.ray_executor import start_seconds

    before = ray.is_initialized()  # whatever an earlier test left: the probe leaves Ray as it found it
    assert start_seconds(2) > 1.0  # two processes importing torch alone take longer
    assert ray.is_initialized() == before
