"""`hessian`: HAWQ-V2's Hessian trace x squared quantization perturbation, per timestep group.

The loss is the denoising loss with the full-precision model's own predictions as targets, on the
sampler's calibration trajectory: L(W) = 1/2 ||O_W(x_t) - O_W0(x_t)||^2 / ||O_W0||^2. At the FP
weights its residual is 0, so its Hessian is exactly the Gauss-Newton matrix J^T J, whose trace per
layer is estimated by Hutchinson with Rademacher probes v in output space:
tr(J^T J) = E_v ||J^T v||^2 (one backward per probe, all layers at once).
    score = gain[g] * sum_{steps in g} tr_s(H_layer)/n * ||Q_b(W) - W||^2     (+ same for inputs, dX_a)
Probes per step: at least `min_probes`, then more until the relative standard error of every layer's
trace is below `rel_tol` or `max_probes` is reached; the standard error is reported in Scores.stderr.
Memory: the model and the graph of one replayed micro-batch of `micro_batch` rows of a call
(`_common.micro_batches`; 0 = whole calls, as earlier versions did); every gradient is reduced to a float
per layer as autograd produces it, so the peak is flat in the number of steps, images, groups and
probes (peak increase ~0.65x the fp32 weights on 50-200 MB models, against 3.6x before). Probes are chosen per
micro-batch (`probes_used` has one entry per replayed micro-batch), to `rel_tol * sqrt(parts)` each.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from quant.scores import ScoreKey, Scores
from sensitivity import _common as C
from sensitivity.base import BitsArg, EstimatorError, GroupsArg, LayersArg, TrajectoryEstimator, register

if TYPE_CHECKING:
    from workloads.base import Workload


@register("hessian")
class HessianEstimator(TrajectoryEstimator):
    def __init__(self, *, seed: int = 0, progress: bool = True, n_images: int = 4, min_probes: int = 2,
                 max_probes: int = 8, rel_tol: float = 0.2, gain_noise: float = 0.1,
                 trajectory: bool = True, micro_batch: int | None = None) -> None:
        super().__init__(seed=seed, progress=progress, n_images=n_images, gain_noise=gain_noise,
                         trajectory=trajectory)
        if not 2 <= min_probes <= max_probes:
            raise EstimatorError(f"need 2 <= min_probes <= max_probes, got {min_probes}, {max_probes}")
        self.min_probes, self.max_probes, self.rel_tol = min_probes, max_probes, rel_tol
        self.micro_batch = C.check_micro_batch(micro_batch)
        self.probes_used: list[int] = []

    def estimate(self, workload: Workload, layers: LayersArg, bits: BitsArg, groups: GroupsArg) -> Scores:
        names, pairs, grp, prep = self._prepare(workload, layers, bits, groups)
        abits = C.activation_bits(pairs)
        rows = C.micro_batch_rows(self.micro_batch, workload.denoiser)
        G = len(grp)
        # per (layer, group): sums over steps of the trace means and of their variances (of the mean)
        tw = {(n, g): 0.0 for n in names for g in range(G)}
        vw = dict(tw)
        tx: dict[tuple[str, int, int], float] = {}
        vx: dict[tuple[str, int, int], float] = {}
        gen = torch.Generator().manual_seed(self.seed)
        self.probes_used = []
        with C.differentiable(workload.denoiser, prep.modules, want_inputs=bool(abits)) as tape:
            for call in C.progress(prep.calls, "hessian", self.progress):
                g = grp.group_of(call.step)
                parts = C.micro_batches(call, rows)
                # the call's trace is the sum of its parts' independent estimates: P parts of similar size,
                # each to relative standard error r, give the call r / sqrt(P), so each part needs only
                # rel_tol * sqrt(P) for the call to meet rel_tol (as one batched replay would)
                tol = self.rel_tol * math.sqrt(len(parts))
                for part in parts:
                    out = C.replay(workload.denoiser, part, tape)
                    # one trace sample per layer (and per layer and activation bits) per probe: floats
                    # only, each gradient reduced as soon as autograd hands it over
                    samples_w: dict[str, list[float]] = {n: [] for n in names}
                    samples_x: dict[tuple[str, int], list[float]] = {(n, a): [] for n in names for a in abits}

                    def on_weight(n: str, grad: Tensor, call: C.StepCall = call,
                                  samples_w: dict[str, list[float]] = samples_w) -> None:
                        samples_w[n][-1] += float(C.relative_sq(grad, call).sum())

                    def on_input(n: str, x: Tensor, gx: Tensor, call: C.StepCall = call, g: int = g,
                                 samples_x: dict[tuple[str, int], list[float]] = samples_x) -> None:
                        tr = float(C.relative_sq(gx, call).sum())
                        for a in abits:  # tr_x / n_x * ||dX_a||^2, per layer call
                            samples_x[(n, a)][-1] += tr * float(
                                C.activation_delta(x, prep.absmax(n, g), a).pow(2).mean())

                    for k in range(self.max_probes):
                        for xs in (*samples_w.values(), *samples_x.values()):
                            xs.append(0.0)
                        C.probe(out, tape, C.rademacher(out, gen), on_weight, on_input if abits else None)
                        if k + 1 >= self.min_probes and _max_rel_se(samples_w) < tol:
                            break
                    del out
                    self.probes_used.append(k + 1)
                    for n in names:
                        m, v = _mean_var(samples_w[n])
                        tw[(n, g)] += m
                        vw[(n, g)] += v
                    for (n, a), xs in samples_x.items():
                        m, v = _mean_var(xs)
                        tx[(n, g, a)] = tx.get((n, g, a), 0.0) + m
                        vx[(n, g, a)] = vx.get((n, g, a), 0.0) + v
        values: dict[ScoreKey, float] = {}
        stderr: dict[ScoreKey, float] = {}
        for n, mod in prep.modules.items():
            w = C.weight_of(mod)
            dw = {b: float(C.weight_delta(w, b).pow(2).sum()) / w.numel() for b in C.weight_bits(pairs)}
            for g in range(G):
                for b in pairs:
                    key = (n, g, b)
                    values[key] = prep.gains[g] * (tw[(n, g)] * dw[b.w] + tx.get((n, g, b.a), 0.0))
                    var = vw[(n, g)] * dw[b.w] ** 2 + vx.get((n, g, b.a), 0.0)
                    stderr[key] = prep.gains[g] * math.sqrt(var)
        return self._scores(grp, values, stderr)


def _mean_var(xs: list[float]) -> tuple[float, float]:
    """Sample mean and the variance of that mean."""
    n = len(xs)
    m = sum(xs) / n
    return m, sum((x - m) ** 2 for x in xs) / (n - 1) / n if n > 1 else 0.0


def _max_rel_se(samples: dict[str, list[float]]) -> float:
    worst = 0.0
    for xs in samples.values():
        m, v = _mean_var(xs)
        if m > 0:
            worst = max(worst, math.sqrt(v) / m)
    return worst
