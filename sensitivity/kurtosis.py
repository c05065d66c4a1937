"""`kurtosis`: MPQ-DM's outlier signal, turned into a predicted degradation per bit-width.

Signals: the kurtosis of each weight output channel (the unit the per-channel quantizer scales),
averaged over channels; and the kurtosis of the layer's input per timestep group, averaged over the
recorded denoiser calls of a full-precision calibration run (replayed with temporary hooks).

Model. A symmetric b-bit absmax quantizer of a tensor with standard deviation s and absmax m has
step m/q (q = 2^(b-1) - 1) and uniform rounding noise of variance (m/q)^2/12, so its relative noise
power is crest^2 / (12 q^2) with crest = m/s. For n Gaussian samples crest^2 ~ 2 ln n; heavier tails
raise it in proportion to the kurtosis k (3 for a Gaussian), hence crest^2 ~ 2 ln(n) * k / 3. So
    nsr(b, k, n) = 2 ln(n) * k / (36 q_b^2)
and score(layer, g, W_bA_a) = gain[g] * steps(g) * (nsr(b_w, k_w, n_w) + nsr(a, k_a[g], n_a)), with the
measured trajectory gain of group g (see `_common`). Layer importance beyond outliers is not modelled.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from quant.config import HIGH_PRECISION
from quant.quantizers import qmax
from quant.scores import ScoreKey, Scores
from sensitivity import _common as C
from sensitivity.base import BitsArg, GroupsArg, LayersArg, TrajectoryEstimator, register

if TYPE_CHECKING:
    from workloads.base import Workload


def kurtosis(x: Tensor, dim: int | None = None) -> Tensor:
    """Pearson kurtosis E[(x-mu)^4] / var^2 (3 for a Gaussian) over `dim` (all elements if None)."""
    x = x.double()
    c = x - (x.mean() if dim is None else x.mean(dim=dim, keepdim=True))
    m2 = c.pow(2).mean() if dim is None else c.pow(2).mean(dim=dim)
    m4 = c.pow(4).mean() if dim is None else c.pow(4).mean(dim=dim)
    return m4 / m2.clamp_min(1e-30).pow(2)


def predicted_nsr(bits: int, kurt: float, n: int) -> float:
    """Relative noise power of a b-bit absmax quantizer on n values of kurtosis `kurt` (module doc)."""
    if bits == HIGH_PRECISION:
        return 0.0
    return 2 * math.log(max(n, 2)) * kurt / (36 * qmax(bits) ** 2)


@register("kurtosis")
class KurtosisEstimator(TrajectoryEstimator):
    def estimate(self, workload: Workload, layers: LayersArg, bits: BitsArg, groups: GroupsArg) -> Scores:
        names, pairs, grp, prep = self._prepare(workload, layers, bits, groups)
        G = len(grp)
        act_k: dict[tuple[str, int], list[float]] = {}
        act_n: dict[str, int] = {}
        group = [0]

        def make(name: str) -> Any:
            def hook(_m: nn.Module, args: tuple[Any, ...], _out: Tensor) -> None:
                act_k.setdefault((name, group[0]), []).append(float(kurtosis(args[0])))
                act_n[name] = args[0].numel()

            return hook

        if C.activation_bits(pairs):
            with C.layer_hooks(prep.modules, make), torch.no_grad():
                for call in C.progress(prep.calls, "kurtosis", self.progress):
                    group[0] = grp.group_of(call.step)
                    workload.denoiser(*call.args, **call.kwargs)
        sizes = grp.sizes()
        values: dict[ScoreKey, float] = {}
        for n, mod in prep.modules.items():
            w = C.weight_of(mod)
            rows = w.detach().reshape(w.shape[0], -1)
            k_w = float(kurtosis(rows, dim=1).mean()) if rows.shape[1] > 1 else 3.0
            for g in range(G):
                ks = act_k.get((n, g), [3.0])
                k_a = sum(ks) / len(ks)
                for b in pairs:
                    nsr = predicted_nsr(b.w, k_w, rows.shape[1]) + predicted_nsr(b.a, k_a, act_n.get(n, 2))
                    values[(n, g, b)] = prep.gains[g] * sizes[g] * nsr
        return self._scores(grp, values)
