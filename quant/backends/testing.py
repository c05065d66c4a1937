"""The conformance suite every backend runs through (as optuna's `testing/pytest_samplers.py`).

A plugin author subclasses `BackendSuite` in a test file and overrides the `backend` fixture:

    from quant.backends.testing import BackendSuite

    class TestMyBackend(BackendSuite):
        @pytest.fixture
        def backend(self) -> Backend:
            return MyBackend()

The checks are the contract in `quant.backends.base`'s docstring: `supports` is exact, kernels carry
an honest label, compute what the reference simulation (`fake`) computes, and never touch the float
module. pytest is imported here: this module is for test files only.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quant.backends.base import Backend, LayerKind, get_backend
from quant.config import ACTIVATION_BITS, WEIGHT_BITS, Bits
from quant.quantizers import activation_scale

ALL_PAIRS = [Bits(w, a) for w in WEIGHT_BITS for a in ACTIVATION_BITS]
LABELS = {"int8-kernel", "weight-only-kernel", "dequantize-float", "simulated", "float"}


def layer_and_input(kind: LayerKind) -> tuple[nn.Linear | nn.Conv2d, torch.Tensor]:
    """A small layer of `kind` and an input for it (odd sizes, stride and padding on the conv)."""
    torch.manual_seed(0)
    if kind == "conv":
        return nn.Conv2d(16, 24, 3, padding=1, stride=2), torch.randn(2, 16, 9, 9)
    return nn.Linear(64, 48), torch.randn(3, 10, 64)


class BackendSuite:
    @pytest.fixture
    def backend(self) -> Backend:
        raise NotImplementedError("override the `backend` fixture with the backend under test")

    @pytest.mark.parametrize("kind", ["linear", "conv"])
    def test_kernels_match_the_reference_and_say_how_they_run(self, backend: Backend, kind: LayerKind) -> None:
        module, x = layer_and_input(kind)
        pairs = {b for b in ALL_PAIRS if backend.supports(b, kind)}
        assert Bits(16, 16) in pairs and Bits(8, 8) in pairs
        ref_kernels = get_backend("fake").kernels(module, kind, pairs)
        kernels = backend.kernels(module, kind, pairs)
        assert set(kernels) == pairs
        before = {k: v.clone() for k, v in module.state_dict().items()}
        for b, kernel in kernels.items():
            assert kernel.label in LABELS
            assert (kernel.label == "float") == b.is_full_precision
            scale = None if b.a == 16 else activation_scale(float(x.abs().max()), b.a)
            with torch.no_grad():
                y = kernel.run(x, scale)
                ref = ref_kernels[b].run(x, scale)
            assert y.shape == ref.shape and y.dtype == x.dtype
            assert torch.isfinite(y).all()
            # Same numerics as the reference simulation, up to float rounding (bf16 in weight-only kernels).
            tol = 2e-2 if kernel.label in ("weight-only-kernel", "dequantize-float") else 1e-4
            assert float((y - ref).norm() / ref.norm()) < tol, (b, kernel.label)
        for k, v in module.state_dict().items():  # the float module is never modified
            assert torch.equal(v, before[k])

