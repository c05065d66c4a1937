"""`mse`: the cheap baseline. The layer's own output error when it alone is quantized.

Every recorded denoiser call of a full-precision calibration run is replayed once with a forward
hook on each layer that also runs the layer with quantized weights (and activations, from the
per-group calibrated range) on the SAME input and accumulates the relative error power
||Y_q - Y||^2 / ||Y||^2 (= 10^(-SQNR/10)) per timestep group. That local error is weighted by the
group's measured trajectory gain (see `_common`), so early, amplified steps weigh more; how the
layer's error propagates through the rest of the network is NOT modelled (that is the baseline).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from quant.backends.base import Quantizable, float_forward
from quant.config import HIGH_PRECISION
from quant.scores import ScoreKey, Scores
from sensitivity import _common as C
from sensitivity.base import BitsArg, GroupsArg, LayersArg, TrajectoryEstimator, register

if TYPE_CHECKING:
    from workloads.base import Workload


@register("mse")
class MSEEstimator(TrajectoryEstimator):
    def estimate(self, workload: Workload, layers: LayersArg, bits: BitsArg, groups: GroupsArg) -> Scores:
        names, pairs, grp, prep = self._prepare(workload, layers, bits, groups)
        qweights: dict[tuple[str, int], Tensor] = {}
        for n, mod in prep.modules.items():
            w = C.weight_of(mod)
            for b in C.weight_bits(pairs):
                qweights[(n, b)] = w.detach() + C.weight_delta(w, b).to(w.dtype)
        nsr: dict[ScoreKey, float] = {(n, g, b): 0.0 for n in names for g in range(len(grp)) for b in pairs}
        group = [0]

        def make(name: str) -> Any:
            def hook(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
                x, g = args[0], group[0]
                power = max(float(out.double().pow(2).sum()), 1e-30)
                for b in pairs:
                    xq = x if b.a == HIGH_PRECISION else x + C.activation_delta(x, prep.absmax(name, g), b.a).to(x.dtype)
                    yq = float_forward(cast(Quantizable, module), xq, qweights[(name, b.w)])
                    nsr[(name, g, b)] += float((yq - out).double().pow(2).sum()) / power

            return hook

        with C.layer_hooks(prep.modules, make), torch.no_grad():
            for call in C.progress(prep.calls, "mse", self.progress):
                group[0] = grp.group_of(call.step)
                workload.denoiser(*call.args, **call.kwargs)
        return self._scores(grp, {k: prep.gains[k[1]] * v for k, v in nsr.items()})

