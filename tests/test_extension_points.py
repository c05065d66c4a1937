"""The extension kit across every point: one registry rule (unknown names and options are rejected with
the valid ones, as UnknownNameError) and one exception base (every error of ours is a BitsearchError)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from quant.errors import BitsearchError, ConfigError, UnknownNameError


def _points() -> dict[str, tuple[Callable[..., Any], str, str]]:
    from quant.backends.base import BACKENDS
    from search.executors import get_executor
    from search.exports import export, import_config
    from search.exports.testing import sample_config
    from sensitivity import get_estimator
    from solvers import get_solver
    from workloads.base import load_workload

    return {
        "backend": (BACKENDS.create, "fake", "none"),  # backends take no options
        "workload": (load_workload, "builtin", "num_steps"),
        "estimator": (get_estimator, "gradient", "seed"),
        "solver": (get_solver, "ilp", "backend"),
        "executor": (get_executor, "local", "lease_timeout_s"),
        "export format": (lambda name, **kw: export(sample_config(), name, **kw), "mixdq", "group"),
        "import format": (lambda name, **kw: import_config("{}", name, **kw), "mixdq", "activations"),
    }


@pytest.mark.parametrize("point", ["backend", "workload", "estimator", "solver", "executor", "export format",
                                   "import format"])
def test_unknown_names_and_options_list_the_valid_ones(point: str) -> None:
    make, name, option = _points()[point]
    with pytest.raises(UnknownNameError, match=f"no-such.*{name}"):  # a workload names the path rule too
        make("no-such")
    with pytest.raises(UnknownNameError, match=f"{point} '{name}' has no option 'no_such'; valid options: .*{option}"):
        make(name, no_such=1)


def _ours(cls: type) -> list[type]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _ours(sub))]


def test_every_error_of_ours_is_a_bitsearch_error() -> None:
    import quant.apply
    import sensitivity.base
    import solvers.problem
    import storage.errors
    import workloads.base
    import workloads.denoisers

    modules = (quant.apply, sensitivity.base, solvers.problem, storage.errors, workloads.base, workloads.denoisers)
    errors = [v for m in modules for v in vars(m).values()
              if isinstance(v, type) and issubclass(v, Exception) and v.__module__.split(".")[0] in
              ("quant", "sensitivity", "solvers", "storage", "workloads", "search")]
    # an assertion-style bug signal is not a user's error: it keeps its traceback at every boundary
    errors = [e for e in errors if not issubclass(e, AssertionError)]
    assert {e.__name__ for e in errors} >= {
        "VerificationError", "ModelLoadError", "EstimatorError", "InfeasibleBudget", "SolverError",
        "SolverTimeout", "StorageError", "StudyNotFoundError", "DuplicateStudyError", "WorkloadError",
    }
    assert [e for e in errors if not issubclass(e, BitsearchError)] == []
    from quant.errors import UnsupportedBits

    assert {UnknownNameError, UnsupportedBits} <= set(_ours(ConfigError))
