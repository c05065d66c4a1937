from __future__ import annotations

import pytest

from solvers import get_solver, solver_names


def test_registry_names_and_errors() -> None:
    assert {"ilp", "greedy", "optuna"} <= set(solver_names())
    with pytest.raises(ValueError, match="valid solvers: greedy, ilp, optuna"):
        get_solver("annealing")
    with pytest.raises(ValueError, match="valid options: backend, gap"):
        get_solver("ilp", solver="cbc")
    with pytest.raises(ValueError, match="valid: auto, highs, cbc"):
        get_solver("ilp", backend="gurobi")
    assert get_solver("ilp", backend="cbc").name == "ilp"
    with pytest.raises(ValueError, match="time_limit must be a positive number of seconds, got 0"):
        get_solver("ilp", time_limit=0)
