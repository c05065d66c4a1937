"""Solvers: choose per-layer, per-timestep bit-widths under budgets.

`get_solver("ilp" | "greedy" | "optuna", **kwargs)` is a proposer: `ask(problem, n)`, `tell(proposal,
measurement)`, `done` (`solvers.base.drive` runs that loop; `solve(problem)` is a one-shot solver's
answer); see `solvers.base` for the contract and `solvers.problem.Problem` for what a problem holds.
Importing this package registers the built-in solvers; it does not import pulp or optuna (they load
when a solver runs).
"""

from solvers import greedy, ilp, optuna_search  # noqa: F401  (registration side effect)
from solvers.base import Solver, get_solver, solver_names
from solvers.problem import InfeasibleBudget, Problem, SolverError, SolverTimeout

__all__ = ["InfeasibleBudget", "Problem", "Solver", "SolverError", "SolverTimeout", "get_solver", "solver_names"]
