"""`gradient`: first-order / Fisher saliency (GWQ, ModelOpt-style), the fast default.

For each recorded denoiser call of a full-precision calibration run, ONE backward of v . O (v a
Rademacher probe over the denoiser output O) gives g = J^T v, with E[g^2] = diag(J^T J), the Fisher
of a Gaussian output model. The predicted relative output error of quantizing a layer is then
    sum_i E[(g_i * dW_b,i)^2] / ||O||^2        (+ the same with the layer input's gradient and dX_a)
summed over the steps of each timestep group and multiplied by that group's measured trajectory
gain (see `_common`), so the score is predicted image MSE and early, amplified steps weigh more.
Cost: one FP run, one forward+backward per step, and one FP run per group for the gains.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from quant.scores import ScoreKey, Scores
from sensitivity import _common as C
from sensitivity.base import BitsArg, GroupsArg, LayersArg, TrajectoryEstimator, register

if TYPE_CHECKING:
    from workloads.base import Workload


@register("gradient")
class GradientEstimator(TrajectoryEstimator):
    def __init__(self, *, seed: int = 0, progress: bool = True, n_images: int = 4, probes: int = 1,
                 gain_noise: float = 0.1, trajectory: bool = True) -> None:
        super().__init__(seed=seed, progress=progress, n_images=n_images, gain_noise=gain_noise,
                         trajectory=trajectory)
        self.probes = probes

    def estimate(self, workload: Workload, layers: LayersArg, bits: BitsArg, groups: GroupsArg) -> Scores:
        names, pairs, grp, prep = self._prepare(workload, layers, bits, groups)
        abits = C.activation_bits(pairs)
        fisher = {(n, g): torch.zeros_like(C.weight_of(mod), dtype=torch.float32)
                  for n, mod in prep.modules.items() for g in range(len(grp))}
        act: dict[tuple[str, int, int], float] = {}
        gen = torch.Generator().manual_seed(self.seed)
        with C.differentiable(workload.denoiser, prep.modules, want_inputs=bool(abits)) as tape:
            for call in C.progress(prep.calls, "gradient", self.progress):
                g = grp.group_of(call.step)
                out = C.replay(workload.denoiser, call, tape)
                for _ in range(self.probes):
                    pg = C.probe(out, call, prep.modules, tape, C.rademacher(out, gen))
                    for n in names:
                        fisher[(n, g)] += pg.weight_sq[n] / self.probes
                        for a in abits:
                            act[(n, g, a)] = act.get((n, g, a), 0.0) + sum(
                                float((gx * C.activation_delta(x, prep.absmax(n, g), a).pow(2)).sum())
                                for x, gx in zip(pg.inputs[n], pg.input_sq[n], strict=True)) / self.probes
                del out
        values: dict[ScoreKey, float] = {}
        for n, mod in prep.modules.items():
            w = C.weight_of(mod)
            dw2 = {b: C.weight_delta(w, b).pow(2) for b in C.weight_bits(pairs)}
            for g in range(len(grp)):
                for b in pairs:
                    local = float((fisher[(n, g)] * dw2[b.w]).sum()) + act.get((n, g, b.a), 0.0)
                    values[(n, g, b)] = prep.gains[g] * local
        return self._scores(grp, values)
