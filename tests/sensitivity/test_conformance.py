"""Every registered estimator through the shipped conformance suite (`sensitivity.testing`)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from sensitivity import Estimator, estimator_names, get_estimator
from sensitivity.testing import EstimatorSuite


def test_all_design_estimators_registered() -> None:
    assert {"hessian", "gradient", "decoupled", "kurtosis", "mse"} <= set(estimator_names())


class TestEveryRegisteredEstimator(EstimatorSuite):
    @pytest.fixture(scope="class", params=estimator_names())
    def make_estimator(self, request: pytest.FixtureRequest) -> Callable[..., Estimator]:
        return functools.partial(get_estimator, request.param)
