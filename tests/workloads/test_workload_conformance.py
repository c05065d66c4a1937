"""Every registered workload through the shipped conformance suite (`workloads.testing`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from workloads.base import Workload, load_workload, workload_names
from workloads.testing import TinyWorkload, WorkloadSuite

# How to build each registered workload small: a registered name missing here fails the suite below,
# so a new workload cannot skip it. 2 steps keep the builtin model's generation short.
BUILDERS: dict[str, Callable[[Path], Workload]] = {
    "builtin": lambda _tmp: load_workload("builtin", num_steps=2),
    "diffusers": lambda tmp: load_workload(str(_tiny_sd(tmp)), num_steps=2),
}


def _tiny_sd(tmp: Path) -> Path:
    from tests.workloads.conftest import build_sd

    return build_sd(tmp / "sd")


class TestEveryRegisteredWorkload(WorkloadSuite):
    @pytest.fixture(scope="class", params=workload_names())
    def workload(self, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Workload:
        assert request.param in BUILDERS, f"workload {request.param!r} has no small build in {__file__}"
        return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


class TestTheTinyWorkloadOtherSuitesUse(WorkloadSuite):
    @pytest.fixture(scope="class")
    def workload(self) -> Workload:
        return TinyWorkload()
