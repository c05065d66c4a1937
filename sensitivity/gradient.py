"""`gradient`: first-order / Fisher saliency (GWQ, ModelOpt-style), the fast default.

For each recorded denoiser call of a full-precision calibration run, ONE backward of v . O (v a
Rademacher probe over the denoiser output O) gives g = J^T v, with E[g^2] = diag(J^T J), the Fisher
of a Gaussian output model. The predicted relative output error of quantizing a layer is then
    sum_i E[(g_i * dW_b,i)^2] / ||O||^2        (+ the same with the layer input's gradient and dX_a)
summed over the steps of each timestep group and multiplied by that group's measured trajectory
gain (see `_common`), so the score is predicted image MSE and early, amplified steps weigh more.
Cost: one FP run, one forward+backward per step and micro-batch, and one FP run per group for the gains.
Memory: the model, one weight-size Fisher per layer (the current group's), the graph of one replayed
micro-batch of `micro_batch` rows of a call (`_common.micro_batches`) and one layer's gradient at a
time: flat in the number of steps, images and groups (peak increase ~1.6-1.8x the fp32 weights on
50-200 MB models, against 5.5x before). Rows one at a time cost time where a batch runs more efficiently
than its rows (the 1.7 M-parameter built-in model: 1.8-2.7x); `micro_batch=0` replays whole calls (the
batched probe of earlier versions: faster on small models, memory grows with `n_images`). The default
(None) replays whole calls on models under 256 MB of weights and one row at a time above
(`_common.micro_batch_rows`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from quant.scores import ScoreKey, Scores
from sensitivity import _common as C
from sensitivity.base import BitsArg, GroupsArg, LayersArg, TrajectoryEstimator, register

if TYPE_CHECKING:
    from workloads.base import Workload


@register("gradient")
class GradientEstimator(TrajectoryEstimator):
    def __init__(self, *, seed: int = 0, progress: bool = True, n_images: int = 4, probes: int = 1,
                 gain_noise: float = 0.1, trajectory: bool = True, micro_batch: int | None = None) -> None:
        super().__init__(seed=seed, progress=progress, n_images=n_images, gain_noise=gain_noise,
                         trajectory=trajectory)
        self.probes, self.micro_batch = probes, C.check_micro_batch(micro_batch)

    def estimate(self, workload: Workload, layers: LayersArg, bits: BitsArg, groups: GroupsArg) -> Scores:
        names, pairs, grp, prep = self._prepare(workload, layers, bits, groups)
        abits, wbits = C.activation_bits(pairs), C.weight_bits(pairs)
        rows = C.micro_batch_rows(self.micro_batch, workload.denoiser)
        # Memory: the diagonal Fisher is a weight-size tensor per layer for the CURRENT group only; when
        # the group changes it is reduced to one float per (layer, group, weight bits) against the
        # weight deltas, so the peak is the model + one Fisher copy + one call's graph, whatever the
        # number of groups, steps or calls. Same sums as one Fisher per (layer, group).
        fisher: dict[str, Tensor] = {}
        weight_err: dict[tuple[str, int, int], float] = {}  # sum_i F_i * dW_b,i^2
        act_err: dict[tuple[str, int, int], float] = {}
        gen = torch.Generator().manual_seed(self.seed)

        def flush(g: int) -> None:
            for n, f in fisher.items():
                w = C.weight_of(prep.modules[n])
                for b in wbits:
                    weight_err[(n, g, b)] = weight_err.get((n, g, b), 0.0) + float((f * C.weight_delta(w, b).pow(2)).sum())
            fisher.clear()

        current = grp.group_of(prep.calls[0].step) if prep.calls else 0
        with C.differentiable(workload.denoiser, prep.modules, want_inputs=bool(abits)) as tape:
            for call in C.progress(prep.calls, "gradient", self.progress):
                g = grp.group_of(call.step)
                if g != current:
                    flush(current)
                    current = g

                def on_weight(n: str, grad: Tensor, call: C.StepCall = call) -> None:
                    sq = C.relative_sq(grad, call) / self.probes
                    if n in fisher:
                        fisher[n] += sq
                    else:
                        fisher[n] = sq

                def on_input(n: str, x: Tensor, gx: Tensor, call: C.StepCall = call, g: int = g) -> None:
                    gx_sq = C.relative_sq(gx, call)
                    for a in abits:
                        dx2 = C.activation_delta(x, prep.absmax(n, g), a).pow(2)
                        act_err[(n, g, a)] = act_err.get((n, g, a), 0.0) + float((gx_sq * dx2).sum()) / self.probes

                for part in C.micro_batches(call, rows):
                    out = C.replay(workload.denoiser, part, tape)
                    for k in range(self.probes):
                        C.probe(out, tape, C.rademacher(out, gen), on_weight, on_input if abits else None,
                                retain=k + 1 < self.probes)
                    del out
            flush(current)
        values: dict[ScoreKey, float] = {}
        for n in names:
            for g in range(len(grp)):
                for b in pairs:
                    local = weight_err.get((n, g, b.w), 0.0) + act_err.get((n, g, b.a), 0.0)
                    values[(n, g, b)] = prep.gains[g] * local
        return self._scores(grp, values)
