"""The Solver contract and the registry of solvers by name.

A Solver turns a `solvers.problem.Problem` into bit configurations:

- `solve(problem) -> list[BitConfig]`: one config (single-budget solvers) or several (a predicted
  or measured Pareto front, best objective first is NOT implied). Never empty: a problem no config
  can satisfy raises `solvers.problem.InfeasibleBudget` naming the binding limit and its smallest
  feasible value. InfeasibleBudget only on a proof: a solver that stopped without one (an error, a
  time limit) raises `solvers.problem.SolverError` (`SolverTimeout`) with the solver's own status.
- Every returned config has one rule per layer of the problem, uses only each layer's candidate
  bits, respects pins, ties and switch limits, and satisfies the budget as `quant.cost.costs`
  computes it: implementations call `problem.check(config)` before returning it.
- Solvers are configured by keyword arguments at construction; `get_solver` rejects unknown names
  and unknown arguments with the list of valid ones. One algorithm per file; registering happens on
  import of `solvers` (see `solvers/__init__.py`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from quant.registry import Registry

if TYPE_CHECKING:
    from quant.config import BitConfig
    from solvers.problem import Problem


class Solver(ABC):
    name: str = ""

    @abstractmethod
    def solve(self, problem: Problem) -> list[BitConfig]:
        """Configs for `problem`, each within its budget (see the module docstring)."""


_SOLVERS: Registry[Solver] = Registry("solver", "solvers")
register = _SOLVERS.register


def solver_names() -> list[str]:
    return _SOLVERS.names()


def get_solver(name: str, **kwargs: Any) -> Solver:
    """The solver registered as `name`, constructed with `kwargs` (both checked)."""
    return _SOLVERS.create(name, **kwargs)
