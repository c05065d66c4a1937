"""`decoupled` with `block_depth`: one measured run per block, split among its layers by weight count."""

from __future__ import annotations

import pytest
import torch

from quant.apply import quantized
from quant.config import BitConfig, Bits, TimestepGroups
from quant.layers import quantizable_modules
from sensitivity import EstimatorError, get_estimator
from sensitivity._common import image_mse, weight_of
from sensitivity.decoupled import blocks_of
from workloads.testing import TinyWorkload


def test_blocks_of_groups_by_fqn_prefix() -> None:
    names = ["conv_in", "down.0.a", "down.0.b", "down.1.a", "up.0.a", "conv_out"]
    assert blocks_of(names, 0) == [[n] for n in names]
    assert blocks_of(names, 1) == [["conv_in"], ["down.0.a", "down.0.b", "down.1.a"], ["up.0.a"], ["conv_out"]]
    assert blocks_of(names, 2) == [["conv_in"], ["down.0.a", "down.0.b"], ["down.1.a"], ["up.0.a"], ["conv_out"]]


def test_one_run_per_block_split_by_weight_count() -> None:
    wl = TinyWorkload()
    modules = quantizable_modules(wl.denoiser)
    names = list(modules)
    blocks = blocks_of(names, 1)
    assert 1 < len(blocks) < len(names)
    w4, groups = Bits.parse("W4A16"), TimestepGroups(4)
    wl.splits_seen.clear()
    scores = get_estimator("decoupled", progress=False, n_images=2, metric="quality", block_depth=1).estimate(
        wl, names, [w4], groups)
    assert len(wl.splits_seen) == 1 + len(blocks)  # the FP reference, then one generation per block
    batch = wl.batch(2, split="calibration")
    ref = wl.generate(batch)
    size = {n: weight_of(modules[n][0]).numel() for n in names}
    for members in blocks:
        with quantized(wl.denoiser, BitConfig(groups, dict.fromkeys(members, (w4,))), "int8") as qm:
            measured = image_mse(ref.images, wl.generate(batch, on_step=qm.set_step).images)
        got = [scores.get(n, 0, w4) for n in members]
        assert sum(got) == pytest.approx(measured, rel=1e-9)
        total = sum(size[n] for n in members)
        assert got == pytest.approx([measured * size[n] / total for n in members], rel=1e-9)
    assert torch.tensor(list(scores.values.values())).gt(0).any()


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_bad_block_depth_rejected(bad: object) -> None:
    with pytest.raises(EstimatorError, match="block_depth must be an int >= 0"):
        get_estimator("decoupled", block_depth=bad)
