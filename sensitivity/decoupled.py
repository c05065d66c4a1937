"""`decoupled`: MixDQ's metric-decoupled sensitivity, measured end to end.

For every (layer, timestep group, bits): quantize that ONE layer (or one block of layers: see Cost) at
those bits during that group only
(`quant.apply`, real kernels by default), generate the fixed calibration batch, and measure
separately
- quality: image MSE vs the full-precision images of the same seeds (PSNR = -10 log10 MSE);
- alignment: the share of the per-image alignment scores (`Workload.alignment_scores`: e.g. the
  classifier's probability of the prompted digit, CLIP score) lost vs the FP images (`_common.alignment_drop`).
The FP reference is generated once per (workload, batch) and cached. Because the whole trajectory
is run, the amplification of early errors is captured by construction. The alignment drop counts
per-image losses only (an image that happens to align better offsets nothing), so it is never below 0.

Cost, bounded by `block_depth`: one FP generation of the `n_images` calibration images, then one
generation per (block, bits, group) -- blocks x |bits| x |groups| generations of `num_steps` denoiser
calls each, with one quantized copy of the block's layers resident at a time. `block_depth=0` (the
default) makes every layer its own block: on the built-in model 132 layers x 3 bits x 3 groups = 1188
generations, 716 s on 1 core (bench/results/sensitivity-cpu-1thread.txt); on an SD1.5-size UNet (282
layers, ~18 s per 4-image CFG call at 256 px on 1 core, 10 steps) that is 282 x 3 x 2 = 1692
generations, ~3.5 days: out of reach. With `block_depth=k` the layers sharing the first k components
of their FQN (`down_blocks.1` for k=2) are quantized and measured together, and the block's measured
degradation is split among its layers in proportion to their weight counts (a proxy: within a block,
which layer matters is not measured); on SD1.5, k=1 gives 6 blocks (36 generations, ~1.8 h at these
settings), k=2 14 blocks (84, ~4 h), k=3 27 blocks; fewer images or steps scale it down linearly.

`metric="both"` combines the two, each divided by its mean, with MixDQ's layer grouping as the
default weighting: "content" layers (cross-attention `attn2`, feed-forward `ff`) weigh alignment by
`content_weight` and quality by 1 - content_weight; all other ("quality") layers the reverse.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from quant.apply import quantized
from quant.config import FULL_PRECISION, BitConfig
from quant.layers import quantizable_modules
from quant.scores import Metric, ScoreKey, Scores
from sensitivity import _common as C
from sensitivity.base import (
    BitsArg,
    Estimator,
    EstimatorError,
    GroupsArg,
    LayersArg,
    register,
    scores_from,
    weighted_sum,
)

if TYPE_CHECKING:
    from torch import Tensor

    from workloads.base import Generation, Workload

CONTENT_LAYERS = re.compile(r".*(attn2|\.ff\.|\.ff$).*")


@register("decoupled")
class DecoupledEstimator(Estimator):
    def __init__(self, *, seed: int = 0, progress: bool = True, metric: Metric = "both", n_images: int = 4,
                 backend: str = "int8", content_weight: float = 0.75, block_depth: int = 0) -> None:
        super().__init__(seed=seed, progress=progress)
        if not isinstance(block_depth, int) or block_depth < 0:
            raise EstimatorError(f"block_depth must be an int >= 0 (0 = every layer measured alone), got {block_depth!r}")
        self.metric, self.block_depth = metric, block_depth
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
        blocks = blocks_of(names, self.block_depth)
        modules = quantizable_modules(workload.denoiser)
        size = {n: C.weight_of(modules[n][0]).numel() for n in names}
        runs = [(members, b, g) for members in blocks for b in pairs for g in range(len(grp))]
        for members, b, g in C.progress(runs, "decoupled", self.progress):
            plan = tuple(b if gg == g else FULL_PRECISION for gg in range(len(grp)))
            with quantized(workload.denoiser, BitConfig(grp, dict.fromkeys(members, plan)), self.backend, ranges) as qm:
                test = workload.generate(batch, on_step=qm.set_step)
            q = C.image_mse(ref.images, test.images)
            a = C.alignment_drop(ref_align, workload.alignment_scores(batch, test))
            total = sum(size[n] for n in members)
            for n in members:  # a layer alone: share 1
                quality[(n, g, b)] = q * (size[n] / total)
                alignment[(n, g, b)] = a * (size[n] / total)
        out = {"quality": scores_from(self.name, "quality", grp, quality),
               "alignment": scores_from(self.name, "alignment", grp, alignment)}
        cw = self.content_weight
        weights = {n: ({"alignment": cw, "quality": 1 - cw} if CONTENT_LAYERS.fullmatch(n)
                       else {"alignment": 1 - cw, "quality": cw}) for n in names}
        out["both"] = weighted_sum(out, weights, self.name, "both")
        return out


def blocks_of(names: list[str], depth: int) -> list[list[str]]:
    """The layers grouped by the first `depth` components of their FQN, in first-seen order
    (`depth` 0: one block per layer)."""
    blocks: dict[str, list[str]] = {}
    for n in names:
        blocks.setdefault(".".join(n.split(".")[:depth]) if depth else n, []).append(n)
    return list(blocks.values())
