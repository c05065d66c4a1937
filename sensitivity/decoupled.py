"""`decoupled`: MixDQ's metric-decoupled sensitivity, measured end to end.

For every (layer, timestep group, bits): quantize that ONE layer at those bits during that group only
(`quant.apply`, real kernels by default), generate the fixed calibration batch, and measure
separately
- quality: image MSE vs the full-precision images of the same seeds (PSNR = -10 log10 MSE);
- alignment: the share of the per-image alignment scores (`Workload.alignment_scores`: e.g. the
  classifier's probability of the prompted digit, CLIP score) lost vs the FP images (`_common.alignment_drop`).
The FP reference is generated once per (workload, batch) and cached. Because the whole trajectory
is run, the amplification of early errors is captured by construction. The alignment drop counts
per-image losses only (an image that happens to align better offsets nothing), so it is never below 0.

`metric="both"` combines the two, each divided by its mean, with MixDQ's layer grouping as the
default weighting: "content" layers (cross-attention `attn2`, feed-forward `ff`) weigh alignment by
`content_weight` and quality by 1 - content_weight; all other ("quality") layers the reverse.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from quant.apply import quantized
from quant.config import FULL_PRECISION, BitConfig
from quant.scores import Metric, ScoreKey, Scores
from sensitivity import _common as C
from sensitivity.base import BitsArg, Estimator, GroupsArg, LayersArg, register, scores_from, weighted_sum

if TYPE_CHECKING:
    from torch import Tensor

    from workloads.base import Generation, Workload

CONTENT_LAYERS = re.compile(r".*(attn2|\.ff\.|\.ff$).*")


@register("decoupled")
class DecoupledEstimator(Estimator):
    def __init__(self, *, seed: int = 0, progress: bool = True, metric: Metric = "both", n_images: int = 4,
                 backend: str = "int8", content_weight: float = 0.75) -> None:
        super().__init__(seed=seed, progress=progress)
        self.metric = metric
        self.n_images, self.backend, self.content_weight = n_images, backend, content_weight
        # FP reference per (workload, batch), reused by later calls of THIS instance (same model assumed)
        self._reference: dict[tuple[int, Any], tuple[Generation, dict[str, Tensor]]] = {}

    def estimate(self, workload: Workload, layers: LayersArg, bits: BitsArg, groups: GroupsArg) -> Scores:
        return self.estimate_metrics(workload, layers, bits, groups)[self.metric]

    def estimate_metrics(self, workload: Workload, layers: LayersArg, bits: BitsArg,
                         groups: GroupsArg) -> dict[str, Scores]:
        names, pairs, grp = self._inputs(workload, layers, bits, groups)
        batch = workload.batch(self.n_images, split="calibration")
        ranges = C.calibrate(workload, grp, pairs, batch)
        key = (id(workload), batch)
        if key not in self._reference:  # FP reference, reused across calls and group settings
            ref = workload.generate(batch)
            self._reference[key] = (ref, workload.alignment_scores(batch, ref))
        ref, ref_align = self._reference[key]
        quality: dict[ScoreKey, float] = {}
        alignment: dict[ScoreKey, float] = {}
        runs = [(n, b, g) for n in names for b in pairs for g in range(len(grp))]
        for n, b, g in C.progress(runs, "decoupled", self.progress):
            plan = tuple(b if gg == g else FULL_PRECISION for gg in range(len(grp)))
            with quantized(workload.denoiser, BitConfig(grp, {n: plan}), self.backend, ranges) as qm:
                test = workload.generate(batch, on_step=qm.set_step)
            quality[(n, g, b)] = C.image_mse(ref.images, test.images)
            alignment[(n, g, b)] = C.alignment_drop(ref_align, workload.alignment_scores(batch, test))
        out = {"quality": scores_from(self.name, "quality", grp, quality),
               "alignment": scores_from(self.name, "alignment", grp, alignment)}
        cw = self.content_weight
        weights = {n: ({"alignment": cw, "quality": 1 - cw} if CONTENT_LAYERS.fullmatch(n)
                       else {"alignment": 1 - cw, "quality": cw}) for n in names}
        out["both"] = weighted_sum(out, weights, self.name, "both")
        return out
