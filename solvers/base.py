"""The Solver contract and the registry of solvers by name.

A Solver is a proposer, modelled on Optuna's samplers (which are told each trial's result in
`after_trial`): the caller asks for configs, measures them however it likes, and tells the solver
what it measured. The loop, as `search.study.Study` and `drive` run it:

    while not solver.done:
        proposals = solver.ask(problem, n)          # n: how many the caller measures at once
        for p in proposals:
            solver.tell(p, measure(p.config))      # in any order, possibly in a later process

- `ask(problem, n) -> list[Proposal]`: configs to measure, each with an opaque `tag` (JSON) that the
  solver reads back when told. `n` is a hint: a one-shot solver (ILP sweep, greedy) answers its whole
  sweep at once and is then `done`; a learning solver (optuna) answers at most `n`. The first answer
  is never empty: a problem no config can satisfy raises `solvers.problem.InfeasibleBudget` naming the
  binding limit and its smallest feasible value (`Problem.diagnose`). InfeasibleBudget only on a
  proof: a solver that stopped without one (an error, a time limit) raises `SolverError`
  (`SolverTimeout`) with the solver's own status.
- `tell(proposal, measurement)`: what was measured for a proposal (objective values, or a failure).
  One-shot solvers ignore it.
- `done`: nothing more to ask (the trial budget is spent, the search stalled, the sweep was given).
- Every proposed config has one rule per layer of the problem, uses only each layer's candidate
  bits, respects pins, ties and switch limits, and satisfies the budget as `quant.cost.costs`
  computes it: implementations call `problem.check(config)` before proposing it.
- Solvers are configured by keyword arguments at construction (`get_solver` rejects unknown names
  and options with the list of valid ones), or by a search caller from its `SearchSettings`
  (`solver_for_search`, which calls the class's `for_search`). A solver that keeps state of its own
  (an Optuna study) keeps it where `SearchSettings.storage` says, so it resumes with its caller; on
  resume, proposals asked but never told are asked again (same tag, same config). One algorithm per
  file; registering happens on import of `solvers` (see `solvers/__init__.py`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from quant.registry import Registry

if TYPE_CHECKING:
    from quant.config import BitConfig
    from solvers.problem import Problem

Json = Any  # a JSON-serialisable value (stored by the caller as it is)


@dataclass(frozen=True)
class Proposal:
    """A config to measure. `tag` is the solver's own (JSON, e.g. an Optuna trial number): the caller
    stores it beside the config and hands the proposal back in `tell`. `origin` labels who proposed it
    (an ILP seed of the optuna solver says "ilp")."""

    config: BitConfig
    origin: str
    tag: Mapping[str, Json] = field(default_factory=dict)


@dataclass(frozen=True)
class Measurement:
    """What the caller measured for a proposal: `values` by objective name, each minimised (the
    `degradation` is minus the measured quality; a budget cost a solver computes from the problem
    itself), or a `failure` (why nothing usable was measured: a failed run, a non-finite value).
    `reference`: where the caller filed the measurement (a candidate id), for cross-links."""

    values: Mapping[str, float] = field(default_factory=dict)
    failure: str | None = None
    reference: int | None = None


@dataclass(frozen=True)
class SearchSettings:
    """What a caller that runs a whole search gives every solver it builds (`Solver.for_search`)."""

    name: str  # the search's name (the study's): names the solver's own state
    trials: int  # how many proposals to measure at most
    seed: int = 0
    patience: int = 0  # proposals in a row that did not improve the measured front before stopping; 0: never
    storage: str | None = None  # a database URL where a solver may keep its own state (the study's)
    quality: str = "quality"  # the measured metric told as `-degradation` (for labels only)
    log: Callable[[str], None] = field(default=lambda message: None, compare=False)


class Solver(ABC):
    name: str = ""

    @classmethod
    def for_search(cls, settings: SearchSettings) -> Solver:
        """This solver as a search caller runs it (defaults for everything `settings` does not say)."""
        return cls()

    @abstractmethod
    def ask(self, problem: Problem, n: int) -> list[Proposal]:
        """Configs to measure next (see the module docstring); never empty on the first call."""

    @abstractmethod
    def tell(self, proposal: Proposal, measurement: Measurement) -> None:
        """What was measured for `proposal`."""

    @property
    @abstractmethod
    def done(self) -> bool:
        """True when there is nothing more to ask."""

    def describe(self) -> str | None:
        """One line on where this solver keeps state of its own (and how to look at it), or None."""
        return None

    def forget(self) -> None:
        """Delete the state this solver keeps of its own (its caller's search is being deleted)."""
        return None

    def solve(self, problem: Problem) -> list[BitConfig]:
        """The configs of the first `ask`: a one-shot solver's whole answer (a learning solver's first
        round, its unmeasured seeds: use `drive` for a search)."""
        return [p.config for p in self.ask(problem, 1)]


class OneShot(Solver):
    """A solver that answers once from predictions alone: `propose` gives every config, then done."""

    _asked = False

    @abstractmethod
    def propose(self, problem: Problem) -> list[BitConfig]:
        """The configs (never empty: InfeasibleBudget instead)."""

    def ask(self, problem: Problem, n: int) -> list[Proposal]:
        configs = self.propose(problem)
        if not configs:  # the contract's last line of defence: say why, with the lowest reachable value
            raise problem.diagnose()
        self._asked = True
        return [Proposal(c, self.name) for c in configs]

    def tell(self, proposal: Proposal, measurement: Measurement) -> None:
        pass  # the answer came from predictions alone: a measurement changes nothing

    @property
    def done(self) -> bool:
        return self._asked


def drive(solver: Solver, problem: Problem, measure: Callable[[BitConfig], Measurement],
          parallelism: int = 1) -> list[tuple[Proposal, Measurement]]:
    """Run `solver` to the end, measuring each proposal in this process with `measure`; every
    (proposal, measurement) in order. A caller with executors of its own writes this loop itself."""
    out: list[tuple[Proposal, Measurement]] = []
    while not solver.done:
        for p in solver.ask(problem, parallelism):
            m = measure(p.config)
            solver.tell(p, m)
            out.append((p, m))
    return out


SOLVERS: Registry[Solver] = Registry("solver", "solvers")
register = SOLVERS.register


def solver_names() -> list[str]:
    return SOLVERS.names()


def get_solver(name: str, **kwargs: Any) -> Solver:
    """The solver registered as `name`, constructed with `kwargs` (both checked)."""
    return SOLVERS.create(name, **kwargs)


def solver_for_search(name: str, settings: SearchSettings) -> Solver:
    """The solver registered as `name`, as a search caller runs it (its `for_search`)."""
    return cast("type[Solver]", SOLVERS.lookup(name)).for_search(settings)
