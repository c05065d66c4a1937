"""`naive`: removed bits x parameters, ranked as a baseline should be, and never runs the model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from quant.config import FULL_PRECISION, Bits, TimestepGroups
from sensitivity import EstimatorError, get_estimator


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Linear(64, 64)
        self.small = nn.Linear(8, 8)


class NoRunWorkload:
    """Just enough of a workload for an estimator that must not run anything: generating raises."""

    name = "no-run"
    num_steps = 4

    def __init__(self) -> None:
        self.denoiser = Net()

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("naive must not generate")

    def batch(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("naive must not sample a batch")


def test_ranks_by_parameters_times_removed_bits_and_never_generates() -> None:
    wl = NoRunWorkload()
    wl.denoiser.register_forward_hook(lambda *_: pytest.fail("naive ran the denoiser"))
    s = get_estimator("naive", progress=False).estimate(wl, None, ["W4A16", "W8A16"], 1)  # type: ignore[arg-type]
    w4, w8 = Bits.parse("W4A16"), Bits.parse("W8A16")
    assert s.get("big", 0, w4) > s.get("small", 0, w4) > 0
    assert s.get("big", 0, w4) > s.get("big", 0, w8) > 0
    assert s.get("big", 0, FULL_PRECISION) == 0.0
    # everything at W0A0 over the whole run would remove all bits: the scores are shares of that
    assert s.get("big", 0, w4) + s.get("small", 0, w4) == pytest.approx(12 / 32)


def test_activation_bits_count_and_groups_weigh_by_steps() -> None:
    groups = TimestepGroups(4, (0, 1))  # steps [0] and [1-3]
    s = get_estimator("naive", progress=False).estimate(NoRunWorkload(), ["big"], ["W8A16", "W8A8"], groups)  # type: ignore[arg-type]
    assert s.get("big", 0, Bits.parse("W8A8")) > s.get("big", 0, Bits.parse("W8A16"))
    assert s.get("big", 1, Bits.parse("W8A16")) == pytest.approx(3 * s.get("big", 0, Bits.parse("W8A16")))


def test_non_finite_parameters_raise() -> None:
    wl = NoRunWorkload()
    with torch.no_grad():
        wl.denoiser.small.bias[0] = float("nan")
    with pytest.raises(EstimatorError, match="'small'.*NaN"):
        get_estimator("naive", progress=False).estimate(wl, None, ["W4A16"], 1)  # type: ignore[arg-type]
