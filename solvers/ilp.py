"""`ilp`: the exact solver. A PuLP integer program, solved with HiGHS (highspy) or CBC.

Model, for units u (tied layers share one), timestep groups g and candidate pairs p:
    x[u,g,p] in {0,1},  sum_p x[u,g,p] = 1                       one choice per (unit, group)
    min  sum objective[u,g,p] x[u,g,p]                            weighted predicted degradation
                                                                  (scaled to >= 1: _objective_scale)
    wbits, bops, latency:  sum coef[u,g,p] x[u,g,p] <= cap         step-weighted, as quant.cost
    size:   y[u,w] >= sum_{p: p.w = w} x[u,g,p]  for every g;  sum bytes[u,w] y[u,w] <= cap
            (y is a "copy of weight precision w is kept" flag; continuous in [0,1] suffices: with x
            integral the cheapest feasible y is 0/1)
    memory: as size with the measured bytes each distinct pair's kernel holds (packed bytes without tables)
    switches: c[u,g] >= W[u,g](w) - W[u,g-1](w) for every w (W = "group g uses weight bits w"),
            sum_g c[u,g] <= max_weight_switches
    max_degradation[m]:  sum degradation_m[u,g,p] x[u,g,p] <= cap_m
Budget rows are divided by the W16A16 reference so every row is O(1) and a sweep only changes a
right-hand side. Every returned config is re-checked with quant.cost.costs (Problem.check).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from quant.budget import Budget, Limit
from quant.config import BitConfig
from quant.cost import LATENCY, MEMORY, STEP_COSTS, Costs, cost_of
from solvers.base import OneShot, SearchSettings, register
from solvers.problem import DEGRADATION_LIMIT as _DEG
from solvers.problem import Plan, Problem, SolverError, SolverTimeout

BACKENDS = ("auto", "highs", "cbc")
DEFAULT_GAP = 1e-6  # relative MIP gap: "optimal" up to one part in a million
# A search's solves (each point of its sweep, Optuna's seeds) stop at HiGHS's default gap of 1e-4 or after
# SEARCH_SOLVE_S with the best config found. A PixArt-size problem (287 layers x 2 groups, 28 alike
# blocks: a symmetric knapsack whose bound creeps) ran 20 minutes at one point without closing a 1e-6
# gap, and its 8-point sweep took 5-8 minutes with 60 s a point. A looser gap is no way out: at 1e-2 it
# took 17 s (re-solved on 1 HiGHS thread), but on small problems nearby sweep points then return one
# config (a warm start within 1% of a looser budget's optimum is accepted), so a study measures fewer
# candidates than it asked for (a tiny DiT study held 2 with 2 trials and a baseline)
SEARCH_GAP = 1e-4
SEARCH_SOLVE_S = 15.0
HIGHS_FEASIBILITY_TOLERANCE = 1e-9  # HiGHS's default 1e-6 lets budget rows run over (see _highs_class)
_SOLVER_NAMES = {"highs": "HiGHS", "cbc": "CBC"}


@dataclass(frozen=True)
class SweepPoint:
    value: float  # the swept limit, in the budget's units (relative if it was given relative)
    config: BitConfig
    objective: float  # predicted (weighted) degradation
    costs: Costs
    seconds: float


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown ILP backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    try:
        import highspy  # noqa: F401
    except ImportError:
        return "cbc"
    # bench/solvers.py: HiGHS is faster than CBC on every SDXL-size problem we measured
    return "highs"


class _Model:
    """The PuLP model of a problem. `objective=None` minimises predicted degradation; a metric name
    minimises that cost instead (used to find the smallest feasible value of a limit). Limits named
    in `skip` are left out."""

    def __init__(self, problem: Problem, objective: str | None = None, skip: Collection[str] = ()) -> None:
        import pulp

        self.problem = p = problem
        self.prob = pulp.LpProblem("bits", pulp.LpMinimize)
        self.last_args: tuple[str, float, int | None, float | None, bool] = ("auto", DEFAULT_GAP, None, None, False)
        G = len(p.groups)
        self.x: list[list[list[Any]]] = [
            [[pulp.LpVariable(f"x_{u}_{g}_{i}", cat="Binary") for i in range(len(unit.candidates[g]))]
             for g in range(G)]
            for u, unit in enumerate(p.units)
        ]
        for u, xs in enumerate(self.x):
            for g, row in enumerate(xs):
                self.prob += pulp.LpAffineExpression([(v, 1.0) for v in row]) == 1, f"one_{u}_{g}"

        wanted = {m for m in p.caps if m not in skip}
        wanted |= {f"{_DEG}{m}" for m in p.max_degradation if f"{_DEG}{m}" not in skip}
        if objective is not None:
            wanted.add(objective)
        self.scale: dict[str, float] = {}
        exprs = {name: self._expr(name) for name in sorted(wanted)}
        for name, expr in exprs.items():
            if name == objective:
                continue
            self.prob += expr <= self._cap(name), f"limit_{name}"
        if p.max_weight_switches is not None and G > 1:
            self._switch_limits(p.max_weight_switches)
        if objective is None:
            s = self.objective_scale = _objective_scale(p)
            self.prob += pulp.LpAffineExpression(
                [(v, c / s) for u, unit in enumerate(p.units) for g in range(G)
                 for v, c in zip(self.x[u][g], unit.objective[g], strict=True) if c]
            )
        else:
            self.prob += exprs[objective]

    def _cap(self, name: str, value: float | None = None) -> float:
        p = self.problem
        if name.startswith(_DEG):
            cap = value if value is not None else p.max_degradation[name[len(_DEG):]]
        else:  # the rows sum the layers: what the rest of the model spends comes off the limit
            cap = (value if value is not None else p.caps[name]) - p.fixed.get(name, 0.0)
        return cap / self.scale[name]

    def set_cap(self, name: str, absolute: float) -> None:
        self.prob.constraints[f"limit_{name}"].changeRHS(self._cap(name, absolute))

    def _expr(self, name: str) -> Any:
        import pulp

        p, G = self.problem, len(self.problem.groups)
        terms: list[tuple[Any, float]] = []
        if name.startswith(_DEG):
            metric = name[len(_DEG):]
            self.scale[name] = p.max_degradation[metric] or 1.0
            for u, unit in enumerate(p.units):
                for g in range(G):
                    terms += zip(self.x[u][g], unit.degradation[metric][g], strict=True)
        elif name in STEP_COSTS:
            self.scale[name] = (cost_of(p.reference, name) if name != LATENCY or p.reference.latency_s else 0.0) or 1.0
            for u, unit in enumerate(p.units):
                for g in range(G):
                    terms += zip(self.x[u][g], unit.linear[name][g], strict=True)
        elif name == MEMORY and p.tables is not None:  # measured: every distinct pair's kernel holds its tensors
            self.scale[name] = cost_of(p.reference, name)
            terms = self._pair_copy_terms()
        else:  # size, or memory without tables: every distinct weight precision is a copy
            self.scale[name] = cost_of(p.reference, name)
            terms = self._copy_terms()
        s = self.scale[name]
        return pulp.LpAffineExpression([(v, c / s) for v, c in terms if c])

    @functools.cached_property
    def _weight_flags(self) -> list[dict[int, list[Any]]]:
        """W[u][w][g]: the sum of x over group g's candidates with weight bits w (an expression)."""
        import pulp

        out = []
        for u, unit in enumerate(self.problem.units):
            flags: dict[int, list[Any]] = {}
            for w in unit.weight_bits():
                flags[w] = [pulp.LpAffineExpression([(v, 1.0) for v, b in zip(self.x[u][g], cands, strict=True)
                                                     if b.w == w])
                            for g, cands in enumerate(unit.candidates)]
            out.append(flags)
        return out

    def _copy_terms(self) -> list[tuple[Any, float]]:
        import pulp

        if not hasattr(self, "_y"):
            self._y: list[dict[int, Any]] = []
            for u, flags in enumerate(self._weight_flags):
                ys = {}
                for w, per_group in flags.items():
                    ys[w] = y = pulp.LpVariable(f"y_{u}_{w}", 0, 1)
                    for g, f in enumerate(per_group):
                        self.prob += y >= f, f"copy_{u}_{w}_{g}"
                self._y.append(ys)
        return [(y, float(self.problem.units[u].weight_bytes[w])) for u, ys in enumerate(self._y) for w, y in ys.items()]

    def _pair_copy_terms(self) -> list[tuple[Any, float]]:
        """z[u][b] >= x[u][g][b] in every group: pair b's kernel is held if any group runs it."""
        import pulp

        terms: list[tuple[Any, float]] = []
        for u, unit in enumerate(self.problem.units):
            assert unit.held_bytes is not None
            for i, b in enumerate(sorted(unit.held_bytes)):
                z = pulp.LpVariable(f"z_{u}_{i}", 0, 1)
                for g, cands in enumerate(unit.candidates):
                    if b in cands:
                        self.prob += z >= self.x[u][g][cands.index(b)], f"pair_{u}_{i}_{g}"
                terms.append((z, float(unit.held_bytes[b])))
        return terms

    def _switch_limits(self, limit: int) -> None:
        import pulp

        for u, flags in enumerate(self._weight_flags):
            if len(flags) < 2:
                continue
            changes = []
            for g in range(1, len(self.problem.groups)):
                c = pulp.LpVariable(f"c_{u}_{g}", 0, 1)
                for w, per_group in flags.items():
                    self.prob += c >= per_group[g] - per_group[g - 1], f"switch_{u}_{g}_{w}"
                changes.append(c)
            self.prob += pulp.lpSum(changes) <= limit, f"switches_{u}"

    # ---- solving ---------------------------------------------------------------------------------
    def solve(self, backend: str, gap: float, threads: int | None, time_limit: float | None,
              warm_start: bool = False) -> bool:
        """True if a solution was found (optimal up to `gap`, or the best within `time_limit`), False if
        the solver proved there is none; SolverError (SolverTimeout) if it stopped with neither."""
        import pulp

        self.last_args = (backend, gap, threads, time_limit, warm_start)

        backend = resolve_backend(backend)
        # gapAbs=0: stop on the relative gap only. Both solvers also stop on an ABSOLUTE gap (HiGHS
        # mip_abs_gap defaults to 1e-6, CBC's allowableGap to 1e-10), which on a small objective
        # ends the search far from the relative gap asked for
        if backend == "cbc":
            solver = pulp.PULP_CBC_CMD(msg=False, gapRel=gap, gapAbs=0.0, threads=threads, timeLimit=time_limit,
                                       warmStart=warm_start)
        else:
            solver = _highs_class()(msg=False, gapRel=gap, gapAbs=0.0, threads=threads, timeLimit=time_limit,
                                    warm_start=warm_start)
        t0 = time.perf_counter()
        try:
            self.prob.solve(solver)
        except pulp.PulpSolverError as e:  # e.g. the CBC binary failed to run
            raise SolverError(_SOLVER_NAMES[backend], "error", f"{_SOLVER_NAMES[backend]}: {e}") from e
        seconds = time.perf_counter() - t0
        status = pulp.LpStatus[self.prob.status]
        if status == "Optimal" and all(v.varValue is not None for xs in self.x for row in xs for v in row):
            return True
        # CBC stopped by the clock in its preprocessing writes "Integer infeasible" (seen with limits of
        # 1 ms): once the limit is spent its infeasibility is no proof. HiGHS says kTimeLimit instead.
        cbc_clock = backend == "cbc" and time_limit is not None and seconds >= time_limit
        if status == "Infeasible" and not cbc_clock:
            return False
        raise self._failure(backend, time_limit, cbc_clock)

    def _failure(self, backend: str, time_limit: float | None, cbc_clock: bool) -> SolverError:
        """The error for a solve that ended with neither a solution nor a proof, with the solver's status."""
        import pulp

        name = _SOLVER_NAMES[backend]
        if backend == "highs":
            import highspy

            code = self.prob.solverModel.getModelStatus()
            status = self.prob.solverModel.modelStatusToString(code)
            timed_out = code == highspy.HighsModelStatus.kTimeLimit
        else:
            status, timed_out = pulp.LpStatus[self.prob.status], cbc_clock
        if timed_out and time_limit is not None:
            return SolverTimeout(name, status, f"{name}: time limit of {time_limit:g} s reached without a "
                                               "solution; raise the time limit")
        return SolverError(name, status)

    def plans(self) -> list[Plan]:
        # the largest value per (unit, group), not `== 1`: solvers return 1 - 1e-9 and friends
        return [tuple(cands[max(range(len(row)), key=lambda i, row=row: row[i].varValue or 0.0)]  # type: ignore[misc]
                      for row, cands in zip(xs, unit.candidates, strict=True))
                for xs, unit in zip(self.x, self.problem.units, strict=True)]


def _objective_scale(problem: Problem) -> float:
    """What the objective row is divided by: the smallest objective any config can reach (every
    choice at its least degrading candidate), so the solver's objective is >= 1 at every budget.

    A relative MIP gap is not enough on its own: HiGHS also prunes every node whose bound is within
    an ABSOLUTE mip_feasibility_tolerance (1e-6) of the incumbent, whatever mip_rel_gap says, and real
    sensitivity scores sum to ~1e-5, so unscaled it stopped ~1e-4 (relative) from the optimum and
    greedy beat it. Floored at 1e-9 of the worst case (all-zero minima, e.g. clipped scores), which
    bounds the coefficients by 1e9."""
    rows = [row for unit in problem.units for row in unit.objective if row]
    best = sum(min(row) for row in rows)
    worst = sum(max(row) for row in rows)
    return max(best, worst * 1e-9) if worst > 0 else 1.0


# HiGHS keeps ONE process-wide task scheduler, sized by the `threads` of the first solve that starts it,
# and refuses every later solve asking another count: status "Not Set", no solution (highspy 1.15.1 and
# 1.16.0; issue 11). A fixed thread count for the whole process would still break as soon as anything
# else in it (pulp called directly, a notebook, another library) started the scheduler with another
# count, and would ignore the caller's count (Ray workers pin theirs). So each solve that names a count
# drops the scheduler first and `run` starts one of that size (~0.5 ms). The reset must not happen
# under a running solve, hence one HiGHS solve at a time per process: the scheduler is global anyway.
_HIGHS_LOCK = threading.Lock()


def _reset_highs_scheduler(threads: int | None) -> None:
    """Make the next HiGHS run start a scheduler of `threads` threads. None (HiGHS's 0, "automatic")
    is accepted by a scheduler of any size: nothing to drop."""
    if threads is not None:
        import highspy

        highspy.Highs.resetGlobalScheduler(True)  # blocking: the old workers have exited on return


def _construct_highs_silently() -> None:
    """HiGHS prints its banner ("Running HiGHS ... Copyright ...") to the process's stdout from C++ when
    the first `Highs` object of a process is built, before pulp can set `output_flag`, so it lands in
    every command's output. Building that first object with file descriptor 1 on /dev/null takes the
    banner; later objects print nothing. (A thread printing in that instant would lose its line.)"""
    import highspy

    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


@functools.cache
def _highs_class() -> type:
    """pulp's HiGHS interface, plus warm start (pulp 3.3 has none for HiGHS): hand the variables'
    current values to highspy as a starting solution before `run`."""
    import pulp

    _construct_highs_silently()

    class WarmHiGHS(pulp.HiGHS):
        def __init__(self, warm_start: bool = False, **kw: Any) -> None:
            # HiGHS accepts rows up to 1e-6 over (absolute, on rows scaled to caps ~0.3): quant.cost then
            # finds the budget exceeded by a few 1e-6, _extract tightens the row and re-solves, and the
            # result is the optimum of a TIGHTER budget (seen as 5e-6 relative objective loss on SDXL,
            # and as warm and cold sweeps disagreeing by far more than the MIP gap). At 1e-9 a retry,
            # if any, tightens by ~1e-9: no measurable loss (and no slower on SDXL).
            for option in ("mip_feasibility_tolerance", "primal_feasibility_tolerance"):
                kw.setdefault(option, HIGHS_FEASIBILITY_TOLERANCE)
            super().__init__(**kw)
            self.warm_start = warm_start

        def callSolver(self, lp: Any) -> None:
            if self.warm_start:
                import highspy

                values = [v.varValue for v in lp.variables()]
                if all(v is not None for v in values):
                    sol = highspy.HighsSolution()
                    sol.col_value = [float(v) for v in values]
                    sol.value_valid = True
                    lp.solverModel.setSolution(sol)
            with _HIGHS_LOCK:
                _reset_highs_scheduler(self.threads)
                lp.solverModel.run()

    return WarmHiGHS


# ---- the solver -----------------------------------------------------------------------------------
def _extract(model: _Model, budget: Budget | None = None, retries: int = 3) -> BitConfig:
    """The model's solution as a checked BitConfig. A solver may accept a row a hair over its cap
    (feasibility tolerance ~1e-7, larger than quant.budget's 1e-9): tighten that row and re-solve."""
    p = model.problem
    for _ in range(retries):
        config = p.config(model.plans())
        c = p.costs(config)
        over = False
        for lim in (budget or p.budget).limits:
            value, cap = cost_of(c, lim.metric), lim.absolute(p.reference)
            if value > cap * (1 + 1e-9):
                over = True
                row = model.prob.constraints[f"limit_{lim.metric}"]
                row.changeRHS(-row.constant - (value - cap) / model.scale[lim.metric] * 2 - 1e-12)
        if not over:
            return p.check(config, budget)
        model.solve(*model.last_args)
    return p.check(p.config(model.plans()), budget)


def solve(problem: Problem, backend: str = "auto", gap: float = DEFAULT_GAP, threads: int | None = None,
          time_limit: float | None = None) -> BitConfig:
    """The optimal config under the problem's budget (or the best found within `time_limit`);
    InfeasibleBudget if the solver proves there is none, SolverError if it stops without either."""
    model = _Model(problem)
    if not model.solve(backend, gap, threads, time_limit):
        raise problem.diagnose(backend, threads)
    return _extract(model)


def smallest(problem: Problem, name: str, others: bool = False, backend: str = "auto",
             threads: int | None = None) -> float | None:
    """The smallest value of limit `name` (a budget metric or `max_degradation.<metric>`) any allowed
    config reaches, in absolute units: alone (pins, ties, candidates, switch limits only), or under
    the `others` limits too. None if even that is infeasible."""
    skip = set(problem.caps) | {f"{_DEG}{m}" for m in problem.max_degradation}
    model = _Model(problem, objective=name, skip={name} if others else skip)
    if not model.solve(backend, 0.0, threads, None):
        return None
    config = problem.config(model.plans())
    if name.startswith(_DEG):
        return problem.predicted(config)[name[len(_DEG):]]
    return cost_of(problem.costs(config), name)


def sweep(problem: Problem, values: Sequence[float], metric: str | None = None, backend: str = "auto",
          warm_start: bool = True, gap: float = DEFAULT_GAP, threads: int | None = None,
          time_limit: float | None = None) -> list[SweepPoint]:
    """The predicted Pareto front over `values` of one limit (default the budget's first), in that
    limit's units; other limits stay. Solved tightest first: each solution is feasible for the next,
    looser budget, so it is handed to the solver as its starting incumbent. Infeasible values are
    skipped with a warning; a solve that ends without a solution or a proof raises SolverError."""
    metric = metric or problem.budget.limits[0].metric
    base = problem.budget.limit(metric)
    if base is None:
        raise ValueError(f"sweep metric {metric!r} is not in the budget {problem.budget}; add a limit on it")
    model = _Model(problem)
    points: list[SweepPoint] = []
    skipped: list[float] = []
    have_start = False
    for value in sorted(values):
        lim = Limit(metric, value, base.relative)
        budget = Budget(tuple(lim if x.metric == metric else x for x in problem.budget.limits))
        for x in budget.limits:  # every row: a retry in _extract may have tightened one
            model.set_cap(x.metric, x.absolute(problem.reference))
        t0 = time.perf_counter()
        if not model.solve(backend, gap, threads, time_limit, warm_start and have_start):
            skipped.append(value)
            continue
        config = _extract(model, budget)
        have_start = True
        points.append(SweepPoint(value, config, problem.objective(model.plans()), problem.costs(config),
                                 time.perf_counter() - t0))
    if skipped:
        warnings.warn(f"sweep skipped infeasible {metric} values {skipped}", stacklevel=2)
    return points


@register("ilp")
class IlpSolver(OneShot):
    """Exact integer program: one optimal config, or with `sweep` (values of the budget's first limit,
    or of `sweep_metric`) or `points` (that many values evenly over the last `span` of the first limit,
    e.g. 4.05..4.5 for wbits=4.5 and span 0.1) the predicted Pareto front of those budgets."""

    def __init__(self, backend: str = "auto", gap: float = DEFAULT_GAP, threads: int | None = None,
                 time_limit: float | None = None, sweep: Sequence[float] | None = None,
                 sweep_metric: str | None = None, points: int | None = None, span: float = 0.1) -> None:
        resolve_backend(backend)  # reject unknown names now
        if time_limit is not None and not 0 < time_limit < math.inf:
            raise ValueError(f"ILP time_limit must be a positive number of seconds, got {time_limit}")
        if points is not None and points < 1:
            raise ValueError(f"ILP points must be >= 1, got {points}")
        if not 0 <= span < 1:
            raise ValueError(f"ILP span must be in [0, 1), got {span}")
        self.backend, self.gap, self.threads, self.time_limit = backend, gap, threads, time_limit
        self.values, self.sweep_metric, self.points, self.span = sweep, sweep_metric, points, span

    @classmethod
    def for_search(cls, settings: SearchSettings) -> IlpSolver:
        # a study measures the front just under its target budget, one proposal per trial
        return cls(points=settings.trials, gap=SEARCH_GAP, time_limit=SEARCH_SOLVE_S)

    def propose(self, problem: Problem) -> list[BitConfig]:
        values = self.values
        if values is None and self.points is not None:
            hi = problem.budget.limits[0].value
            lo = (1 - self.span) * hi
            values = [lo + (hi - lo) * i / max(1, self.points - 1) for i in range(self.points)]
        if values is None:
            return [solve(problem, self.backend, self.gap, self.threads, self.time_limit)]
        points = sweep(problem, values, self.sweep_metric, self.backend, True, self.gap, self.threads,
                       self.time_limit)
        from solvers.pareto import non_dominated

        keep = non_dominated([(pt.objective, pt.value) for pt in points])
        return [points[i].config for i in keep]  # empty when every value is infeasible: OneShot diagnoses
