"""The conformance suite every executor runs through, with an instant evaluator that needs no model.

A plugin author subclasses `ExecutorSuite` in a test file and overrides the `executor` fixture:

    from search.executors.testing import ExecutorSuite

    class TestMyExecutor(ExecutorSuite):
        @pytest.fixture
        def executor(self) -> Executor:
            return MyExecutor(workers=1)

The checks are the contract in `search.executors.base`'s docstring, read back from the database (the
source of truth): `run` evaluates every WAITING candidate exactly once, returns how many it
evaluated, leaves none WAITING or RUNNING, records a NaN metric as FAILED, and a second `run` finds
nothing to do. pytest is imported here: this module is for test files only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from search.executors.base import Evaluator, Executor, Outcome
from storage import CandidateState, Storage

STUDY = "conformance"


class InstantEvaluator(Evaluator):
    """A metric read from the config at once; the config `{"i": 1}` gets NaN (it must end FAILED).
    Defined at module level so that executors which ship it to other processes can unpickle it."""

    def __call__(self, candidate: Any) -> Outcome:
        i = candidate.config["i"]
        return Outcome(metrics={"psnr_db": math.nan if i == 1 else 20.0 + i}, run_labels={"int8-kernel": 1},
                       backend="conformance")


class ExecutorSuite:
    @pytest.fixture
    def executor(self) -> Executor:
        raise NotImplementedError("override the `executor` fixture with the executor under test")

    @pytest.fixture
    def storage(self, tmp_path: Path) -> Iterator[Storage]:
        st = Storage(f"sqlite:///{tmp_path / 'executor.db'}")
        st.create_study(STUDY, {"version": 1})
        st.add_candidates(STUDY, [{"version": 1, "i": i} for i in range(4)], "import", fidelity="cheap")
        yield st

    def test_every_candidate_is_evaluated_exactly_once(self, executor: Executor, storage: Storage) -> None:
        with executor:
            assert executor.run(STUDY, storage, InstantEvaluator()) == 4
            assert executor.run(STUDY, storage, InstantEvaluator()) == 0  # nothing left: returns at once
        states = {c.config["i"]: c.state for c in storage.list_candidates(STUDY)}
        assert states == {0: CandidateState.COMPLETE, 1: CandidateState.FAILED, 2: CandidateState.COMPLETE,
                          3: CandidateState.COMPLETE}
        per = Counter(e.candidate_id for e in storage.list_evaluations(STUDY))
        assert all(n == 1 for n in per.values())

    def test_parallelism_is_a_positive_count(self, executor: Executor) -> None:
        assert isinstance(executor.parallelism, int) and executor.parallelism >= 1
