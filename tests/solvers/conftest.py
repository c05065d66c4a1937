from __future__ import annotations

import pytest

from quant.layers import Layer
from quant.scores import Scores

# the small problem's pieces live beside the solver suite, which a plugin author imports
from solvers.testing import BITS, GROUPS, make_layers, make_scores

__all__ = ["BITS", "GROUPS", "make_layers", "make_scores"]


@pytest.fixture
def layers() -> list[Layer]:
    return make_layers()


@pytest.fixture
def scores(layers: list[Layer]) -> Scores:
    return make_scores(layers)
