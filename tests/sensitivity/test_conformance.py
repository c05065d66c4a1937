"""The conformance suite every registered estimator is run through (like optuna's pytest_samplers)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

from quant.config import Bits, TimestepGroups
from quant.errors import UnknownNameError
from quant.scores import METRICS, Scores
from sensitivity import EstimatorError, estimator_names, estimator_options, get_estimator
from tests.sensitivity.conftest import TinyWorkload

ESTIMATORS = estimator_names()
BITS = ["W2A16", "W4A8", "W8A16"]
FAST = {"progress": False, "n_images": 2}


def test_all_design_estimators_registered() -> None:
    assert {"hessian", "gradient", "decoupled", "kurtosis", "mse"} <= set(ESTIMATORS)


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


@pytest.fixture(scope="module")
def results(workload: TinyWorkload, some_layers: list[str]) -> dict[str, tuple[Scores, dict[str, Any], dict[str, Any]]]:
    """Every estimator run once (2 timestep groups, weight and activation bits), with model snapshots."""
    out = {}
    with odd_state(workload.denoiser):
        for name in ESTIMATORS:
            workload.splits_seen.clear()
            before = snapshot(workload.denoiser)
            scores = get_estimator(name, seed=3, **FAST).estimate(workload, some_layers, BITS, 2)
            after = snapshot(workload.denoiser)
            assert set(workload.splits_seen) == {"calibration"}, f"{name} generated on {set(workload.splits_seen)}"
            out[name] = (scores, before, after)
    return out


@pytest.mark.parametrize("name", ESTIMATORS)
def test_covers_every_entry_finite_nonnegative(name: str, results: Any, some_layers: list[str]) -> None:
    scores, _, _ = results[name]
    assert isinstance(scores, Scores)
    assert scores.estimator == name and scores.metric in METRICS
    assert scores.groups == TimestepGroups.uniform(4, 2)
    expected = {(n, g, Bits.parse(b)) for n in some_layers for g in range(2) for b in BITS}
    assert set(scores.values) == expected
    assert all(math.isfinite(v) and v >= 0 for v in scores.values.values())
    assert any(v > 0 for v in scores.values.values())


@pytest.mark.parametrize("name", ESTIMATORS)
def test_leaves_model_as_found(name: str, results: Any) -> None:
    _, before, after = results[name]
    assert_same(before, after)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_lower_bits_never_cheaper_on_the_whole(name: str, results: Any) -> None:
    scores, _, _ = results[name]
    w2 = sum(v for (_, _, b), v in scores.values.items() if b.w == 2)
    w8 = sum(v for (_, _, b), v in scores.values.items() if b.w == 8)
    assert w2 > w8


@pytest.mark.parametrize("name", ESTIMATORS)
def test_groups_are_scored_separately(name: str, results: Any, some_layers: list[str]) -> None:
    scores, _, _ = results[name]
    b = Bits.parse("W2A16")
    assert [scores.get(n, 0, b) for n in some_layers] != [scores.get(n, 1, b) for n in some_layers]


@pytest.mark.parametrize("name", ESTIMATORS)
def test_deterministic_given_seed(name: str, results: Any, workload: TinyWorkload, some_layers: list[str]) -> None:
    scores, _, _ = results[name]
    with odd_state(workload.denoiser):
        again = get_estimator(name, seed=3, **FAST).estimate(workload, some_layers, BITS, 2)
    assert again.values == scores.values


@pytest.mark.parametrize("name", ESTIMATORS)
def test_serializable_for_storage(name: str, results: Any) -> None:
    scores, _, _ = results[name]
    d = json.loads(json.dumps(scores.to_dict()))
    back = Scores.from_dict(d)
    assert back.values == scores.values and back.metric == scores.metric and back.stderr == scores.stderr


@pytest.mark.parametrize("name", ESTIMATORS)
def test_unknown_option_rejected_with_valid_list(name: str) -> None:
    with pytest.raises(UnknownNameError, match="valid options: .*seed"):
        get_estimator(name, no_such_option=1)
    assert "seed" in estimator_options(name) and "progress" in estimator_options(name)


def test_unknown_estimator_rejected_with_valid_list() -> None:
    with pytest.raises(UnknownNameError, match="valid estimators: .*gradient"):
        get_estimator("nope")


@pytest.mark.parametrize("name", ESTIMATORS)
def test_bad_inputs_rejected(name: str, workload: TinyWorkload, some_layers: list[str]) -> None:
    est = get_estimator(name, **FAST)
    with pytest.raises(EstimatorError, match="not quantizable layers"):
        est.estimate(workload, ["no.such.layer"], BITS, 1)
    with pytest.raises(EstimatorError, match="steps"):
        est.estimate(workload, some_layers, BITS, TimestepGroups(7))
    with pytest.raises(EstimatorError, match="no bit pairs"):
        est.estimate(workload, some_layers, ["W16A16"], 1)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_nan_model_raises_clear_error(name: str, workload: TinyWorkload, some_layers: list[str]) -> None:
    bias = workload.denoiser.conv_in.bias
    saved = bias.detach().clone()
    before = snapshot(workload.denoiser)
    try:
        with torch.no_grad():
            bias[0] = float("nan")
        with pytest.raises(EstimatorError, match="NaN|nan"):
            get_estimator(name, **FAST).estimate(workload, some_layers[:2], ["W4A16"], 1)
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert_same(before, snapshot(workload.denoiser))
