"""The tiny workload the estimator tests share (`workloads.testing.TinyWorkload`), built once.

The model is random: the tests check the estimator contract (coverage, determinism, the model left as
found, errors), never whether a ranking is good (that is `bench/sensitivity.py` on the built-in model).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from sensitivity.testing import some_layers_of
from workloads.testing import TinyWorkload


@pytest.fixture(scope="session")
def workload() -> Iterator[TinyWorkload]:
    torch.set_num_threads(1)
    yield TinyWorkload()


@pytest.fixture(scope="session")
def some_layers(workload: TinyWorkload) -> list[str]:
    return some_layers_of(workload)
