"""Validation: does an estimator's prediction rank real degradations correctly?

`measure` quantizes, with `quant.apply` (real kernels by default), on the workload's held-out `eval`
split (prompts and seeds never used by the estimators, which only see `calibration`):
(a) single layers: one (layer, group, bits) at a time, the rest in full precision;
(b) whole mixed configs: random configs at several budgets (each (layer, group) quantized with
    probability `budget`, at random bits), which is what a solver's additive objective must predict;
and records the quality (image MSE vs FP) and alignment (`_common.alignment_drop`: per-image share of
the alignment scores lost vs FP) degradation of each.
`correlate` compares a Scores' prediction (its value, or the sum over a config's entries) with those
measurements by Spearman and Kendall rank correlation, per measured metric. `validate` does both.
Measurements do not depend on the scores, so one `measure` serves every estimator of a study.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from quant.apply import quantized
from quant.config import FULL_PRECISION, BitConfig, Bits, TimestepGroups
from quant.scores import ScoreKey, Scores
from sensitivity import _common as C

if TYPE_CHECKING:
    from workloads.base import Workload

KINDS = ("single", "mixed")
MEASURED = ("quality", "alignment")


@dataclass(frozen=True)
class Measured:
    """One quantized run: its (layer, group, bits) entries and measured degradations."""

    kind: str
    entries: tuple[ScoreKey, ...]
    quality: float
    alignment: float
    budget: float | None = None


@dataclass
class Measurements:
    groups: TimestepGroups
    items: list[Measured]
    n_images: int
    backend: str
    simulated: bool
    ran_as: dict[str, int] = field(default_factory=dict)

    def of(self, kind: str) -> list[Measured]:
        return [m for m in self.items if m.kind == kind]


@dataclass(frozen=True)
class Validation:
    """Rank correlations of one Scores with measured degradation: correlations[kind][metric][stat]."""

    estimator: str
    metric: str
    groups: str
    counts: dict[str, int]
    correlations: dict[str, dict[str, dict[str, float]]]
    backend: str
    simulated: bool

    def spearman(self, kind: str, metric: str) -> float:
        return self.correlations[kind][metric]["spearman"]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for per_metric in d["correlations"].values():  # NaN (constant input) is not JSON: None
            for stats in per_metric.values():
                for k, v in stats.items():
                    stats[k] = None if not math.isfinite(v) else v
        return d


def measure(
    workload: Workload,
    layers: Sequence[str],
    bits: Sequence[Bits],
    groups: TimestepGroups,
    *,
    n_single: int = 24,
    n_mixed: int = 24,
    budgets: Sequence[float] = (0.05, 0.15, 0.3),
    n_images: int = 4,
    seed: int = 0,
    backend: str = "int8",
    progress: bool = True,
) -> Measurements:
    """Measure single-layer and mixed-config degradations on the held-out `eval` split."""
    rng = random.Random(seed)
    pairs = sorted(set(bits) - {FULL_PRECISION})
    G = len(groups)
    batch = workload.batch(n_images, split="eval")
    ranges = C.calibrate(workload, groups, pairs, workload.batch(n_images, split="calibration"))
    reference = workload.generate(batch)
    ref_align = workload.alignment_scores(batch, reference)
    triples = [(n, g, b) for n in layers for g in range(G) for b in pairs]
    plans: list[tuple[str, tuple[ScoreKey, ...], float | None]] = [
        ("single", (t,), None) for t in rng.sample(triples, min(n_single, len(triples)))]
    for i in range(n_mixed):
        p = budgets[i % len(budgets)]
        entries = tuple((n, g, rng.choice(pairs)) for n in layers for g in range(G) if rng.random() < p)
        plans.append(("mixed", entries or (rng.choice(triples),), p))
    items: list[Measured] = []
    simulated = False
    ran_as: dict[str, int] = {}
    for kind, entries, budget in C.progress(plans, "validate", progress):
        rules: dict[str, list[Bits]] = {}
        for n, g, b in entries:
            rules.setdefault(n, [FULL_PRECISION] * G)[g] = b
        with quantized(workload.denoiser, BitConfig(groups, rules), backend, ranges) as qm:
            test = workload.generate(batch, on_step=qm.set_step)
            simulated |= qm.simulated
            for label, count in qm.label_counts().items():
                ran_as[label] = ran_as.get(label, 0) + count
        items.append(Measured(kind, entries, C.image_mse(reference.images, test.images),
                              C.alignment_drop(ref_align, workload.alignment_scores(batch, test)), budget))
    return Measurements(groups, items, n_images, backend, simulated, ran_as)


def correlate(scores: Scores, measurements: Measurements) -> Validation:
    """Spearman/Kendall of the predicted (summed) degradation vs each measured metric."""
    from scipy.stats import kendalltau, spearmanr

    if scores.groups != measurements.groups:
        raise ValueError(f"scores are for timestep groups {scores.groups}, measurements for {measurements.groups}")
    corr: dict[str, dict[str, dict[str, float]]] = {}
    counts: dict[str, int] = {}
    for kind in KINDS:
        items = measurements.of(kind)
        counts[kind] = len(items)
        pred = [sum(scores.get(*e) for e in m.entries) for m in items]
        corr[kind] = {}
        for metric in MEASURED:
            real = [getattr(m, metric) for m in items]
            if len(items) < 3:
                corr[kind][metric] = {"spearman": math.nan, "kendall": math.nan}
                continue
            corr[kind][metric] = {"spearman": float(spearmanr(pred, real).statistic),
                                  "kendall": float(kendalltau(pred, real).statistic)}
    return Validation(scores.estimator, scores.metric, str(scores.groups), counts, corr,
                      measurements.backend, measurements.simulated)


def validate(scores: Scores, workload: Workload, **options: Any) -> Validation:
    """Measure (see `measure`, whose keyword options it takes) and correlate `scores` with it."""
    bits = sorted({b for (_, _, b) in scores.values})
    m = measure(workload, scores.layers(), bits, scores.groups, **options)
    return correlate(scores, m)
