"""Every registered executor through the shipped conformance suite (`search.executors.testing`)."""

from __future__ import annotations

import pytest

from search.executors import Executor, executor_names, get_executor
from search.executors.testing import ExecutorSuite

# One worker of one thread each: the suite checks the contract, not speed (2 shared cores).
OPTIONS = {"local": {"threads_per_worker": 1}, "ray": {"workers": 1, "threads_per_worker": 1}}
SLOW = {"ray"}  # starting Ray takes ~10 s


class TestEveryRegisteredExecutor(ExecutorSuite):
    @pytest.fixture(params=[pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in executor_names()])
    def executor(self, request: pytest.FixtureRequest) -> Executor:
        return get_executor(request.param, **OPTIONS.get(request.param, {}))
