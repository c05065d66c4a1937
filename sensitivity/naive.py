"""`naive`: the baseline that counts removed bits and runs NO model.

It exists so that `bench/sensitivity.py` shows what the real estimators add over counting bits: any
estimator whose rank correlation with measured degradation is not clearly above this one's has
learned nothing from running the model.

    score(layer, g, W_wA_a) = share(layer) * steps(g) / num_steps * ((16 - w) + (16 - a)) / 32

share(layer) is the layer's weight count over that of every quantizable layer of the denoiser (fixed
per model, so a layer's score does not depend on which other layers are asked). Activations are not
sized without a model run, so each weight stands in for one input activation (a shape-only proxy).
A timestep group weighs by its number of steps only: nothing here knows which steps matter. Summed
over a whole config the score is the share of weight+activation bits removed over the sampling run:
0 for W16A16, 1 if everything ran at W0A0. Only parameter shapes (and their finiteness) are read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from quant.config import HIGH_PRECISION
from quant.layers import quantizable_modules
from quant.scores import ScoreKey, Scores
from sensitivity import _common as C
from sensitivity.base import BitsArg, Estimator, EstimatorError, GroupsArg, LayersArg, register

if TYPE_CHECKING:
    from workloads.base import Workload


@register("naive")
class NaiveEstimator(Estimator):
    runs_model = False
    def __init__(self, *, seed: int = 0, progress: bool = True, n_images: int = 4) -> None:
        # n_images is accepted (and unused) so the options every estimator is run with apply here too
        super().__init__(seed=seed, progress=progress)
        self.n_images = n_images

    def estimate(self, workload: Workload, layers: LayersArg, bits: BitsArg, groups: GroupsArg) -> Scores:
        names, pairs, grp = self._inputs(workload, layers, bits, groups)
        modules = {n: m for n, (m, _) in quantizable_modules(workload.denoiser).items()}
        total = sum(C.weight_of(m).numel() for m in modules.values())
        values: dict[ScoreKey, float] = {}
        for n in names:
            mod = modules[n]
            # a broken model gets no plausible-looking baseline (the other estimators' runs would diverge)
            bad = next((p for p, t in mod.named_parameters(recurse=False) if not torch.isfinite(t).all()), None)
            if bad is not None:
                raise EstimatorError(f"naive: layer {n!r} has NaN/inf in its {bad}; "
                                     "check the model loads in full precision without NaNs")
            share = C.weight_of(mod).numel() / total
            for g, steps in enumerate(grp.sizes()):
                for b in pairs:
                    removed = (HIGH_PRECISION - b.w) + (HIGH_PRECISION - b.a)
                    values[(n, g, b)] = share * steps / grp.num_steps * removed / (2 * HIGH_PRECISION)
        return self._scores(grp, values)
