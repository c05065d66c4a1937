"""The conformance suite every estimator runs through (as optuna's `testing/pytest_samplers.py`).

A plugin author subclasses `EstimatorSuite` in a test file and overrides the `make_estimator` fixture
(class-scoped) with a factory taking the estimator's options (`seed`, `progress`, `n_images`):

    from sensitivity.testing import EstimatorSuite

    class TestMyEstimator(EstimatorSuite):
        @pytest.fixture(scope="class")
        def make_estimator(self) -> Callable[..., Estimator]:
            return MyEstimator

The checks are the contract in `sensitivity.base`'s docstring, on `workloads.testing.TinyWorkload`:
every entry scored finite and non-negative, groups scored apart, calibration split only, the model
left exactly as found, deterministic given the seed, storable, clear errors. Each estimator runs once
for most checks (the `results` fixture). pytest is imported here: this module is for test files only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

from quant.config import Bits, TimestepGroups
from quant.layers import quantizable_modules
from quant.scores import METRICS, Scores
from sensitivity.base import Estimator, EstimatorError
from workloads.testing import TinyWorkload

BITS = ["W2A16", "W4A8", "W8A16"]
FAST = {"progress": False, "n_images": 2}
Results = tuple[Scores, dict[str, Any], dict[str, Any]]


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything an estimator must leave as it found it."""
    hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                  "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks",
                  "_load_state_dict_pre_hooks")
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "types": [(n, type(m)) for n, m in model.named_modules()],
        "hooks": [(n, d, len(getattr(m, d, {}))) for n, m in model.named_modules() for d in hook_dicts],
        "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "grads": [n for n, p in model.named_parameters() if p.grad is not None],
        "training": [(n, m.training) for n, m in model.named_modules()],
        "grad_enabled": torch.is_grad_enabled(),
    }


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), f"parameter/buffer {k} changed"
    for key in ("types", "hooks", "requires_grad", "grads", "training", "grad_enabled"):
        assert before[key] == after[key], f"model {key} changed"


@contextmanager
def odd_state(model: nn.Module) -> Iterator[None]:
    """A model in a non-default state (train mode, some frozen parameters) that must be preserved."""
    flags = {p: p.requires_grad for p in model.parameters()}
    mode = model.training
    model.train()
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(i % 3 != 0)
    try:
        yield
    finally:
        model.train(mode)
        for p, f in flags.items():
            p.requires_grad_(f)


def some_layers_of(workload: TinyWorkload) -> list[str]:
    """The first conv, a cross-attention projection, a feed-forward and the last conv."""
    names = list(quantizable_modules(workload.denoiser))
    return [names[0], next(n for n in names if "attn2.to_k" in n), next(n for n in names if ".ff." in n), names[-1]]


class EstimatorSuite:
    @pytest.fixture(scope="class")
    def make_estimator(self) -> Callable[..., Estimator]:
        raise NotImplementedError("override the `make_estimator` fixture with the estimator under test")

    @pytest.fixture(scope="class")
    def workload(self) -> Iterator[TinyWorkload]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the tiny model runs fastest single-threaded, and results stay bitwise equal
        yield TinyWorkload()
        torch.set_num_threads(threads)

    @pytest.fixture(scope="class")
    def some_layers(self, workload: TinyWorkload) -> list[str]:
        return some_layers_of(workload)

    @pytest.fixture(scope="class")
    def results(self, make_estimator: Callable[..., Estimator], workload: TinyWorkload,
                some_layers: list[str]) -> Results:
        """The estimator run once (2 timestep groups, weight and activation bits), with model snapshots."""
        with odd_state(workload.denoiser):
            workload.splits_seen.clear()
            before = snapshot(workload.denoiser)
            scores = make_estimator(seed=3, **FAST).estimate(workload, some_layers, BITS, 2)
            after = snapshot(workload.denoiser)
        # calibration prompts only (a model-free estimator generates nothing): never the eval split
        assert set(workload.splits_seen) <= {"calibration"}, f"generated on {set(workload.splits_seen)}"
        if make_estimator(**FAST).runs_model:
            assert workload.splits_seen, "an estimator that runs the model generated nothing"
        return scores, before, after

    def test_covers_every_entry_finite_nonnegative(self, results: Results, some_layers: list[str],
                                                   make_estimator: Callable[..., Estimator]) -> None:
        scores, _, _ = results
        assert isinstance(scores, Scores)
        assert scores.estimator == make_estimator(**FAST).name and scores.metric in METRICS
        assert scores.groups == TimestepGroups.uniform(4, 2)
        expected = {(n, g, Bits.parse(b)) for n in some_layers for g in range(2) for b in BITS}
        assert set(scores.values) == expected
        assert all(math.isfinite(v) and v >= 0 for v in scores.values.values())
        assert any(v > 0 for v in scores.values.values())

    def test_leaves_model_as_found(self, results: Results) -> None:
        _, before, after = results
        assert_same(before, after)

    def test_lower_bits_never_cheaper_on_the_whole(self, results: Results) -> None:
        scores, _, _ = results
        w2 = sum(v for (_, _, b), v in scores.values.items() if b.w == 2)
        w8 = sum(v for (_, _, b), v in scores.values.items() if b.w == 8)
        assert w2 > w8

    def test_groups_are_scored_separately(self, results: Results, some_layers: list[str],
                                          make_estimator: Callable[..., Estimator]) -> None:
        if not make_estimator(**FAST).runs_model:
            pytest.skip("a model-free estimator sees no timestep: equal groups score alike")
        scores, _, _ = results
        b = Bits.parse("W2A16")
        assert [scores.get(n, 0, b) for n in some_layers] != [scores.get(n, 1, b) for n in some_layers]

    def test_deterministic_given_seed(self, results: Results, make_estimator: Callable[..., Estimator],
                                      workload: TinyWorkload, some_layers: list[str]) -> None:
        scores, _, _ = results
        with odd_state(workload.denoiser):
            again = make_estimator(seed=3, **FAST).estimate(workload, some_layers, BITS, 2)
        assert again.values == scores.values

    def test_serializable_for_storage(self, results: Results) -> None:
        scores, _, _ = results
        back = Scores.from_dict(json.loads(json.dumps(scores.to_dict())))
        assert back.values == scores.values and back.metric == scores.metric and back.stderr == scores.stderr

    def test_bad_inputs_rejected(self, make_estimator: Callable[..., Estimator], workload: TinyWorkload,
                                 some_layers: list[str]) -> None:
        est = make_estimator(**FAST)
        with pytest.raises(EstimatorError, match="not quantizable layers"):
            est.estimate(workload, ["no.such.layer"], BITS, 1)
        with pytest.raises(EstimatorError, match="steps"):
            est.estimate(workload, some_layers, BITS, TimestepGroups(7))
        with pytest.raises(EstimatorError, match="no bit pairs"):
            est.estimate(workload, some_layers, ["W16A16"], 1)

    def test_nan_model_raises_clear_error(self, make_estimator: Callable[..., Estimator], workload: TinyWorkload,
                                          some_layers: list[str]) -> None:
        conv = workload.denoiser.get_submodule("conv_in")
        assert isinstance(conv, nn.Conv2d) and conv.bias is not None
        bias = conv.bias
        saved = bias.detach().clone()
        before = snapshot(workload.denoiser)
        try:
            with torch.no_grad():
                bias[0] = float("nan")
            with pytest.raises(EstimatorError, match="NaN|nan"):
                make_estimator(**FAST).estimate(workload, some_layers[:2], ["W4A16"], 1)
        finally:
            with torch.no_grad():
                bias.copy_(saved)
        assert_same(before, snapshot(workload.denoiser))
