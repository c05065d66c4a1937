"""The measured-flag rule (quant.backends.base.measurement): a run's latency and memory count as measured
only when some layer ran, none ran simulated, and the backend is not a simulation. Storage keeps only
the half of it that needs none of these names (tests/storage/test_repository.py)."""

from __future__ import annotations

import pytest

from quant.backends.base import measurement


@pytest.mark.parametrize(("backend", "labels", "why"), [
    ("int8", {}, "no run labels"),
    ("int8", {"int8-kernel": 3, "simulated": 1}, "1 layers ran simulated"),
    ("fake", {"float": 4}, "backend 'fake' simulates"),  # W16A16 everywhere: still a simulation
    ("fake", {"int8-kernel": 4}, "backend 'fake' simulates"),  # a fake run with a real-looking label
])
def test_measured_needs_real_labels_from_a_real_backend(backend: str, labels: dict[str, int], why: str) -> None:
    judged = measurement(backend, labels)
    assert not judged.measured and why in (judged.why_not or "")
    assert judged.layers_simulated == labels.get("simulated", 0)
    with pytest.raises(ValueError, match=f"{why}.*cannot be reported as measured"):
        judged.flag(True)
    assert judged.flag() is False and judged.flag(False) is False


@pytest.mark.parametrize("backend", ["int8", "a-test-stand-in"])  # unregistered names: judged by labels
def test_real_labels_from_a_real_backend_are_measured(backend: str) -> None:
    judged = measurement(backend, {"int8-kernel": 4, "float": 1})
    assert judged.measured and judged.why_not is None and judged.layers_simulated == 0
    assert judged.flag() is True
    assert judged.flag(False) is False  # an evaluator may always under-claim
