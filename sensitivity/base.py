"""The `Estimator` extension point: predicted degradation per (layer, timestep group, bit pair).

Contract of `Estimator.estimate(workload, layers, bits, groups) -> Scores` (every implementation is
run through `sensitivity.testing.EstimatorSuite`, like optuna's `testing/pytest_samplers.py`):

- `layers`: the FQNs (or `quant.layers.Layer`s) to score; None = every quantizable layer of
  `workload.denoiser`. `bits`: the bit pairs to score (W16A16 is skipped: it is 0 by definition).
  `groups`: a `TimestepGroups` over the workload's `num_steps`, or a number of uniform groups.
- The result holds one finite, non-negative score for EVERY (layer, group, bits) asked for, and says
  which metric it predicts (`quality`, `alignment` or `both`). A score is the predicted degradation
  when that one layer runs at those bits during that group only; solvers add them up.
- Deterministic given `seed`; estimation only uses the workload's `calibration` split, so that
  `sensitivity.validate` can check it on the held-out `eval` split.
- The model is left exactly as found: same parameters and buffers, module types, hooks,
  `requires_grad` flags, train/eval mode, and no `.grad` tensors.
- A NaN or infinite estimate raises `EstimatorError` naming the entry; it never reaches a solver.
- Long estimations show a progress bar (tqdm) unless `progress=False`.

Options are keyword arguments of the implementation's `__init__`; `get_estimator(name, **options)`
rejects unknown names and options with the list of valid ones.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from quant.config import FULL_PRECISION, Bits, TimestepGroups
from quant.errors import BitsearchError, UnknownNameError
from quant.layers import Layer
from quant.registry import Registry
from quant.scores import METRICS, Metric, ScoreKey, Scores

if TYPE_CHECKING:
    from workloads.base import Workload


class EstimatorError(BitsearchError, ValueError):
    """An estimator cannot run as asked, or produced a non-finite estimate; the message says which."""


LayersArg = Sequence[str] | Sequence[Layer] | None
BitsArg = Iterable[Bits | str]
GroupsArg = TimestepGroups | int


class Estimator(ABC):
    """Predicts per (layer FQN, timestep group, bit pair) degradation of one metric. See module doc."""

    name: ClassVar[str]
    metric: Metric = "quality"
    # False for a baseline that only counts (`naive`): it sees no timestep, so its groups differ by size alone
    runs_model: ClassVar[bool] = True

    def __init__(self, *, seed: int = 0, progress: bool = True) -> None:
        self.seed = seed
        self.progress = progress

    @abstractmethod
    def estimate(self, workload: Workload, layers: LayersArg, bits: BitsArg, groups: GroupsArg) -> Scores:
        """Scores for every (layer, group, bits) asked for; see the module docstring for the contract."""

    def estimate_metrics(
        self, workload: Workload, layers: LayersArg, bits: BitsArg, groups: GroupsArg
    ) -> dict[str, Scores]:
        """Scores for every metric this estimator can predict from one estimation (default: its own)."""
        s = self.estimate(workload, layers, bits, groups)
        return {s.metric: s}

    # ---- helpers for implementations ---------------------------------------------------------
    def _inputs(
        self, workload: Workload, layers: LayersArg, bits: BitsArg, groups: GroupsArg
    ) -> tuple[list[str], list[Bits], TimestepGroups]:
        """Validate and normalize the `estimate` arguments."""
        from quant.layers import quantizable_modules

        known = list(quantizable_modules(workload.denoiser))
        names = known if layers is None else [x.fqn if isinstance(x, Layer) else str(x) for x in layers]
        known_set = set(known)
        unknown = [n for n in names if n not in known_set]
        if unknown:
            raise EstimatorError(
                f"{len(unknown)} layer(s) are not quantizable layers of the workload's denoiser, "
                f"e.g. {unknown[0]!r}; run `bitsearch inspect` to list them"
            )
        if not names:
            raise EstimatorError("no layers to estimate; pass layer FQNs or None for every layer")
        pairs = sorted({Bits.parse(b) for b in bits} - {FULL_PRECISION})
        if not pairs:
            raise EstimatorError("no bit pairs to estimate (W16A16 is 0 by definition); pass e.g. ['W4A16']")
        g = TimestepGroups.uniform(workload.num_steps, groups) if isinstance(groups, int) else groups
        if g.num_steps != workload.num_steps:
            raise EstimatorError(
                f"timestep groups cover {g.num_steps} steps but the workload samples {workload.num_steps}; "
                "build the groups from workload.num_steps"
            )
        return names, pairs, g

    def _scores(
        self,
        groups: TimestepGroups,
        values: Mapping[ScoreKey, float],
        stderr: Mapping[ScoreKey, float] | None = None,
        metric: Metric | None = None,
    ) -> Scores:
        """Scores from raw estimates: NaN/inf raise EstimatorError, tiny negative noise is clipped at 0."""
        return scores_from(self.name, metric or self.metric, groups, values, stderr)


class TrajectoryEstimator(Estimator):
    """Shared set-up of the estimators that start from one recorded full-precision run of the
    calibration batch and the per-group trajectory gains (`_common.prepare`)."""

    def __init__(self, *, seed: int = 0, progress: bool = True, n_images: int = 4, gain_noise: float = 0.1,
                 trajectory: bool = True) -> None:
        super().__init__(seed=seed, progress=progress)
        self.n_images, self.gain_noise, self.trajectory = n_images, gain_noise, trajectory

    def _prepare(self, workload: Workload, layers: LayersArg, bits: BitsArg,
                 groups: GroupsArg) -> tuple[list[str], list[Bits], TimestepGroups, Any]:
        from sensitivity import _common

        names, pairs, grp = self._inputs(workload, layers, bits, groups)
        prep = _common.prepare(workload, names, pairs, grp, self.n_images, self.seed, self.gain_noise,
                               self.trajectory)
        return names, pairs, grp, prep


def scores_from(
    estimator: str,
    metric: Metric,
    groups: TimestepGroups,
    values: Mapping[ScoreKey, float],
    stderr: Mapping[ScoreKey, float] | None = None,
) -> Scores:
    """Build Scores, raising `EstimatorError` on any non-finite value and clipping negatives at 0."""
    for what, m in (("score", values), ("stderr", stderr or {})):
        for (fqn, g, b), v in m.items():
            if not math.isfinite(float(v)):
                raise EstimatorError(
                    f"{estimator}: {what} for ({fqn!r}, group {g}, {b}) is {v}; the estimate diverged "
                    "(check the model runs in full precision without NaNs, or use fewer/lower-variance probes)"
                )
    clipped = {k: max(0.0, float(v)) for k, v in values.items()}
    err = None if stderr is None else {k: max(0.0, float(v)) for k, v in stderr.items()}
    return Scores(estimator, metric, groups, clipped, err)


def weighted_sum(scores: Mapping[str, Scores], weights: Mapping[str, Mapping[str, float]],
                 estimator: str, metric: Metric) -> Scores:
    """sum_m weights[fqn][m] * scores[m] / mean(scores[m]): metrics made comparable by their mean."""
    first = next(iter(scores.values()))
    out: dict[ScoreKey, float] = dict.fromkeys(first.values, 0.0)
    for m, s in scores.items():
        mean = sum(s.values.values()) / max(1, len(s.values))
        for key, v in s.values.items():
            out[key] += weights[key[0]].get(m, 0.0) * (v / mean if mean > 0 else 0.0)
    return scores_from(estimator, metric, first.groups, out)


# ---- registry ------------------------------------------------------------------------------------
# Importing `sensitivity` imports every built-in estimator, registering it.
ESTIMATORS: Registry[Estimator] = Registry("estimator", "sensitivity")
register = ESTIMATORS.register


def estimator_names() -> list[str]:
    return ESTIMATORS.names()


def estimator_options(name: str) -> list[str]:
    """The keyword options `get_estimator(name, ...)` accepts (each estimator's `__init__` lists them
    all, its base class's included, so its signature is the whole list)."""
    return ESTIMATORS.params(name) or []


def get_estimator(name: str, **options: Any) -> Estimator:
    """The estimator registered as `name`, built with `options` (unknown ones are rejected)."""
    metric = options.get("metric")
    if metric is not None and metric not in METRICS:
        raise UnknownNameError(f"metric {metric!r} unknown; valid: {', '.join(METRICS)}")
    return ESTIMATORS.create(name, **options)
