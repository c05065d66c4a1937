"""Every registered workload through the shipped conformance suite (`workloads.testing`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.workloads.class_models import build_class_unet
from workloads.base import Workload, load_workload, workload_names
from workloads.testing import TinyWorkload, WorkloadSuite

# How to build the built-in workloads small (2 steps keep the builtin model's generation short); any
# other registered workload (a test's toy) is built with its defaults.
BUILDERS: dict[str, Callable[[Path], Workload]] = {
    "builtin": lambda _tmp: load_workload("builtin", num_steps=2),
    "diffusers": lambda tmp: load_workload(str(_tiny_sd(tmp)), num_steps=2),
    "class-conditional": lambda tmp: load_workload(str(build_class_unet(tmp / "unet")), num_steps=2, null_class=4),
}


def _tiny_sd(tmp: Path) -> Path:
    from tests.workloads.conftest import build_sd

    return build_sd(tmp / "sd")


class TestEveryRegisteredWorkload(WorkloadSuite):
    @pytest.fixture(scope="class", params=workload_names())
    def workload(self, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Workload:
        build = BUILDERS.get(request.param, lambda _tmp: load_workload(request.param))
        return build(tmp_path_factory.mktemp(request.param))


class TestTheTinyWorkloadOtherSuitesUse(WorkloadSuite):
    @pytest.fixture(scope="class")
    def workload(self) -> Workload:
        return TinyWorkload()
