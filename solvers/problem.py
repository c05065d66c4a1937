"""The bit-allocation problem every solver reads: layers, groups, candidates, scores, budget, constraints.

A `Problem` is solver-neutral. It groups layers into *units* (tied layers share one decision; an
untied layer is a unit of one) and precomputes, per (unit, timestep group, candidate bit pair), the
objective coefficient and the linear costs, so that solvers only do arithmetic:

- objective: sum over scores of weight[metric] x predicted degradation (scores are additive);
- step-accrued costs (wbits, bops, latency) are linear in the per-(unit, group) choice, weighted by
  each group's share of the sampler's steps exactly as `quant.cost.costs` does;
- held costs (size, memory) depend on the set of distinct weight bits a unit uses across groups.

`check(config)` is the ground truth: it recomputes costs with `quant.cost.costs` and raises if any
limit is exceeded. Every solver calls it on every config it returns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quant.budget import Budget, Limit
from quant.config import (
    HIGH_PRECISION,
    REGEX_PREFIX,
    BitConfig,
    Bits,
    ConfigError,
    TimestepGroups,
)
from quant.cost import (
    BOPS,
    LATENCY,
    MEMORY,
    SIZE,
    WBITS,
    Costs,
    TargetTables,
    costs,
    entry,
    full_precision_costs,
    packed_weight_bytes,
)
from quant.errors import BitsearchError
from quant.layers import Layer
from quant.scores import Scores

DEGRADATION_LIMIT = "max_degradation."  # prefix naming a cap on predicted degradation as a limit

PinValue = Bits | str | Sequence[Bits | str]
Plan = tuple[Bits, ...]  # one unit's bits in each timestep group


class InfeasibleBudget(ConfigError):
    """No allowed configuration meets a limit; names the binding limit and its smallest feasible value."""

    def __init__(self, message: str, metric: str, limit: float, smallest: float) -> None:
        super().__init__(message)
        self.metric = metric
        self.limit = limit  # in the user's units (relative if the limit was given relative)
        self.smallest = smallest  # same units


class SolverError(BitsearchError, RuntimeError):
    """A solver stopped with neither a solution nor a proof of infeasibility (its own error, a status
    such as HiGHS's "Not Set", a limit). Not an InfeasibleBudget: nothing is known about the budget."""

    def __init__(self, solver: str, status: str, message: str | None = None) -> None:
        super().__init__(message or f"{solver}: {status}")
        self.solver = solver  # "HiGHS" or "CBC"
        self.status = status  # the solver's own status string


class SolverTimeout(SolverError):
    """The solver's time limit ran out before it found any solution."""


class BudgetViolation(AssertionError):
    """A solver produced a config that quant.cost.costs says is over budget (a solver bug)."""


@dataclass(frozen=True)
class Unit:
    """Layers that share one decision (a tie, or a single layer) and their precomputed terms."""

    layers: tuple[Layer, ...]
    candidates: tuple[tuple[Bits, ...], ...]  # per timestep group (pins narrow them)
    objective: tuple[tuple[float, ...], ...]  # [group][candidate] weighted predicted degradation
    degradation: Mapping[str, tuple[tuple[float, ...], ...]]  # per score metric, [group][candidate]
    linear: Mapping[str, tuple[tuple[float, ...], ...]]  # per linear cost metric, [group][candidate]
    weight_bytes: Mapping[int, int]  # packed bytes of all the unit's layers at each weight bits (size)
    held_bytes: Mapping[Bits, int] | None  # bytes each pair's kernels hold, measured (None: no target tables)

    @property
    def fqns(self) -> tuple[str, ...]:
        return tuple(layer.fqn for layer in self.layers)

    def weight_bits(self) -> list[int]:
        return sorted(self.weight_bytes)


class Problem:
    """See the module docstring. Construction validates everything and names the fix.

    - `scores`: one Scores or several (one per metric). `weights` (metric -> float, default 1 each)
      form the objective; a metric in `max_degradation` (metric -> cap on its summed prediction) is a
      constraint and is left out of the objective unless `weights` names it.
    - `candidates`: bit pairs to consider; default all pairs `backend` supports for each layer's kind.
    - `pins`: FQN or `re:` pattern -> bits (one pair, or one per group); exact FQN wins over patterns.
    - `ties`: each entry a list of FQNs/patterns that share bits, or one `re:` pattern with capture
      groups, which ties the layers per distinct captured value (e.g. `re:(.*attn1)\\.to_[qkv]` ties
      q/k/v within each attention).
    - `max_weight_switches`: how often a layer's weight bits may change between consecutive groups.
    - `score_multipliers`: FQN -> factor on its objective terms (the per-block knobs of `optuna`).
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        groups: TimestepGroups,
        scores: Scores | Sequence[Scores],
        budget: Budget | str | Sequence[str],
        *,
        backend: str = "int8",
        candidates: Iterable[Bits | str] | None = None,
        weights: Mapping[str, float] | None = None,
        max_degradation: Mapping[str, float] | None = None,
        tables: TargetTables | None = None,
        pins: Mapping[str, PinValue] | None = None,
        ties: Sequence[str | Sequence[str]] | None = None,
        max_weight_switches: int | None = None,
        weight_group_size: int | None = None,
        score_multipliers: Mapping[str, float] | None = None,
    ) -> None:
        self._kwargs: dict[str, Any] = dict(
            layers=layers, groups=groups, scores=scores, budget=budget, backend=backend,
            candidates=candidates if candidates is None else tuple(candidates), weights=weights,
            max_degradation=max_degradation, tables=tables, pins=pins, ties=ties,
            max_weight_switches=max_weight_switches,
            weight_group_size=weight_group_size, score_multipliers=score_multipliers,
        )
        if not layers:
            raise ConfigError("the problem has no layers; pass the model's inventory (quant.layers.inventory)")
        self.layers = tuple(layers)
        self.groups = groups
        self.budget = budget if isinstance(budget, Budget) else Budget.parse(budget)
        self.tables = tables
        # what a config costs whatever its bits: the ops and parameters outside the quantizable layers
        self.fixed: dict[str, float] = {} if tables is None else {LATENCY: tables.rest_latency_s,
                                                                   MEMORY: float(tables.rest_bytes)}
        self.weight_group_size = weight_group_size
        self.max_weight_switches = max_weight_switches
        if max_weight_switches is not None and max_weight_switches < 0:
            raise ConfigError(f"max_weight_switches must be >= 0, got {max_weight_switches}")
        self.scores = (scores,) if isinstance(scores, Scores) else tuple(scores)
        self._check_scores()
        self.weights, self.max_degradation = self._objective_terms(weights, max_degradation)

        names = [layer.fqn for layer in self.layers]
        if len(set(names)) != len(names):
            raise ConfigError("the layer inventory lists an FQN twice; pass each layer once")
        self._index = {n: i for i, n in enumerate(names)}
        self.fractions = tuple(n / groups.num_steps for n in groups.sizes())
        self.total_params = sum(layer.params for layer in self.layers) or 1

        metrics = [lim.metric for lim in self.budget.limits]
        if LATENCY in metrics and tables is None:
            raise ConfigError("a latency budget needs the target's tables measured on this machine (quant.targets)")
        self.reference: Costs = full_precision_costs(self.layers, groups.num_steps, tables)
        self.caps: dict[str, float] = {lim.metric: lim.absolute(self.reference) for lim in self.budget.limits}
        # what the quantizable layers may spend under each limit (the solvers' rows sum the layers only)
        self.layer_caps = {m: cap - self.fixed.get(m, 0.0) for m, cap in self.caps.items()}

        allowed = self._candidates(backend, self._kwargs["candidates"])
        pinned = self._pins(pins or {}, allowed)
        members = self._ties(ties or [])
        multipliers = dict(score_multipliers or {})
        self.units = tuple(self._unit(m, allowed, pinned, multipliers) for m in members)

    # ---- construction ----------------------------------------------------------------------------
    def replace(self, **changes: Any) -> Problem:
        """A new Problem with some constructor arguments changed (validated again)."""
        unknown = set(changes) - set(self._kwargs)
        if unknown:
            raise TypeError(f"unknown Problem arguments {sorted(unknown)}; valid: {', '.join(self._kwargs)}")
        return Problem(**{**self._kwargs, **changes})

    @property
    def score_multipliers(self) -> Mapping[str, float]:
        return dict(self._kwargs["score_multipliers"] or {})

    def _check_scores(self) -> None:
        if not self.scores:
            raise ConfigError("the problem needs at least one Scores (from a sensitivity estimator)")
        seen: set[str] = set()
        for s in self.scores:
            if s.groups != self.groups:
                raise ConfigError(
                    f"{s.estimator} scores were estimated for timestep groups {s.groups}, the problem uses "
                    f"{self.groups}; re-estimate for these groups or remap them (solvers.problem.remap_scores)"
                )
            if s.metric in seen:
                raise ConfigError(f"two Scores for metric {s.metric!r}; give one per metric")
            seen.add(s.metric)

    def _objective_terms(
        self, weights: Mapping[str, float] | None, max_degradation: Mapping[str, float] | None
    ) -> tuple[dict[str, float], dict[str, float]]:
        have = [s.metric for s in self.scores]
        caps = dict(max_degradation or {})
        for name in [*caps, *(weights or {})]:
            if name not in have:
                raise ConfigError(f"no Scores for metric {name!r}; scores given: {', '.join(have)}")
        for name, cap in caps.items():
            if not cap >= 0:
                raise ConfigError(f"max_degradation[{name!r}] must be >= 0, got {cap}")
        w: dict[str, float] = dict(weights) if weights is not None else {m: 1.0 for m in have if m not in caps}
        if any(v < 0 for v in w.values()):
            raise ConfigError(f"metric weights must be >= 0, got {w}")
        if not any(v > 0 for v in w.values()):
            raise ConfigError("the objective is empty: give a positive weight to at least one metric")
        return w, caps

    def _candidates(self, backend: str, restrict: tuple[Bits | str, ...] | None) -> dict[str, tuple[Bits, ...]]:
        import quant.backends  # noqa: F401  (registers the built-in backends)
        from quant.backends.base import get_backend  # imports torch; only needed here

        be = get_backend(backend)
        pool = [Bits.parse(b) for b in restrict] if restrict is not None else [
            Bits(w, a) for w in (2, 3, 4, 5, 6, 8, HIGH_PRECISION) for a in (4, 6, 8, HIGH_PRECISION)
        ]
        out: dict[str, tuple[Bits, ...]] = {}
        for kind in {layer.kind for layer in self.layers}:
            ok = tuple(sorted({b for b in pool if be.supports(b, kind, self.weight_group_size)}))
            if not ok:
                raise ConfigError(
                    f"backend {backend!r} runs none of the candidate bits {[str(b) for b in pool]} on {kind} "
                    "layers; add bits it supports or choose another backend"
                )
            if restrict is not None and len(ok) < len(set(pool)):
                dropped = sorted(set(pool) - set(ok))
                raise ConfigError(
                    f"backend {backend!r} cannot run {dropped[0]} on {kind} layers; "
                    "drop it from the candidates or use a backend that supports it (e.g. 'fake')"
                )
            out[kind] = ok
        return {layer.fqn: out[layer.kind] for layer in self.layers}

    def _match(self, key: str, what: str) -> list[str]:
        """Layers named by an exact FQN or a `re:` pattern; an error naming the fix if none."""
        if key.startswith(REGEX_PREFIX):
            pattern = re.compile(key[len(REGEX_PREFIX):])
            hits = [layer.fqn for layer in self.layers if pattern.fullmatch(layer.fqn)]
            if not hits:
                raise ConfigError(f"{what} {key!r} matches no layer (patterns match whole FQNs); fix or remove it")
            return hits
        if key not in self._index:
            import difflib

            near = difflib.get_close_matches(key, list(self._index), n=1)
            raise ConfigError(
                f"{what} names unknown layer {key!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                + "; run `bitsearch inspect` for the layer names, or use a 're:' pattern"
            )
        return [key]

    def _pins(self, pins: Mapping[str, PinValue], allowed: Mapping[str, tuple[Bits, ...]]) -> dict[str, Plan]:
        out: dict[str, Plan] = {}
        # regexes first so exact FQNs overwrite them (exact > regex, like BitConfig); the first regex wins
        ordered = [k for k in pins if k.startswith(REGEX_PREFIX)][::-1] + [k for k in pins if not k.startswith(REGEX_PREFIX)]
        for key in ordered:
            value = pins[key]
            raw = [value] if isinstance(value, str | Bits) else list(value)
            plan = tuple(Bits.parse(b) for b in raw)
            if len(plan) == 1:
                plan = plan * len(self.groups)
            if len(plan) != len(self.groups):
                raise ConfigError(
                    f"pin {key!r} gives {len(plan)} bit pairs for {len(self.groups)} timestep groups; "
                    "give one pair, or one per group"
                )
            for fqn in self._match(key, "pin"):
                bad = [b for b in plan if b not in allowed[fqn]]
                if bad:
                    raise ConfigError(
                        f"pin {key!r} sets {fqn} to {bad[0]}, which is not a candidate for it "
                        f"({', '.join(map(str, allowed[fqn]))}); add {bad[0]} to the candidates or pin other bits"
                    )
                out[fqn] = plan
        return out

    def _ties(self, ties: Sequence[str | Sequence[str]]) -> list[list[int]]:
        parent = list(range(len(self.layers)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for tie in ties:
            if isinstance(tie, str):
                if not tie.startswith(REGEX_PREFIX):
                    raise ConfigError(f"tie {tie!r}: give a list of FQNs/patterns, or one 're:' pattern")
                pattern = re.compile(tie[len(REGEX_PREFIX):])
                parts: dict[tuple[str | Any, ...], list[str]] = {}
                for fqn in self._match(tie, "tie"):
                    m = pattern.fullmatch(fqn)
                    assert m is not None
                    parts.setdefault(m.groups(), []).append(fqn)
                sets = list(parts.values())
            else:
                sets = [[f for key in tie for f in self._match(key, "tie")]]
            for names in sets:
                idx = [self._index[n] for n in names]
                for i in idx[1:]:
                    parent[find(i)] = find(idx[0])
        members: dict[int, list[int]] = {}
        for i in range(len(self.layers)):
            members.setdefault(find(i), []).append(i)
        return sorted(members.values())

    def _unit(self, idx: list[int], allowed: Mapping[str, tuple[Bits, ...]], pinned: Mapping[str, Plan],
              multipliers: Mapping[str, float]) -> Unit:
        layers = tuple(self.layers[i] for i in idx)
        fqns = [layer.fqn for layer in layers]
        common = set(allowed[fqns[0]]).intersection(*(allowed[f] for f in fqns))
        plans = {pinned[f] for f in fqns if f in pinned}
        if len(plans) > 1:
            raise ConfigError(f"tied layers {fqns} are pinned to different bits; pin them alike or untie them")
        per_group: list[tuple[Bits, ...]] = []
        for g in range(len(self.groups)):
            cands = tuple(sorted(common if not plans else {next(iter(plans))[g]} & common))
            if not cands:
                raise ConfigError(f"tied layers {fqns} have no candidate bits in common; untie them or widen candidates")
            per_group.append(cands)

        def table(fn: Callable[[int, Bits], float]) -> tuple[tuple[float, ...], ...]:
            return tuple(tuple(fn(g, b) for b in per_group[g]) for g in range(len(self.groups)))

        def score(s: Scores, g: int, b: Bits, scaled: bool) -> float:
            return sum(s.get(f, g, b) * (multipliers.get(f, 1.0) if scaled else 1.0) for f in fqns)

        degradation: dict[str, tuple[tuple[float, ...], ...]] = {s.metric: table(lambda g, b, s=s: score(s, g, b, False)) for s in self.scores}  # type: ignore[misc]
        objective = table(lambda g, b: sum(
            self.weights.get(s.metric, 0.0) * score(s, g, b, True) for s in self.scores
        ))
        params = sum(layer.params for layer in layers)
        macs = sum(layer.macs for layer in layers)
        linear: dict[str, tuple[tuple[float, ...], ...]] = {
            WBITS: table(lambda g, b: self.fractions[g] * params * b.w / self.total_params),
            BOPS: table(lambda g, b: self.fractions[g] * macs * b.w * b.a),
        }
        if self.tables is not None:
            latency = self.tables.latency
            linear[LATENCY] = table(lambda g, b: self.fractions[g] * sum(entry(latency, f, b) for f in fqns))
        wb = {b.w for c in per_group for b in c}
        weight_bytes = {w: sum(packed_weight_bytes(layer, w, self.weight_group_size) for layer in layers) for w in wb}
        held = None if self.tables is None else {
            b: sum(entry(self.tables.memory, f, b) for f in fqns) for c in per_group for b in c}
        return Unit(layers, tuple(per_group), objective, degradation, linear, weight_bytes, held)

    # ---- evaluation of plans (one Plan per unit) ---------------------------------------------------
    def unit_costs(self, u: int, plan: Plan) -> dict[str, float]:
        """Cost contributions of unit `u` at `plan`, in the units of `quant.cost.Costs`."""
        unit = self.units[u]
        out = {m: sum(t[g][unit.candidates[g].index(b)] for g, b in enumerate(plan)) for m, t in unit.linear.items()}
        distinct = {b.w for b in plan}
        out[SIZE] = float(sum(unit.weight_bytes[w] for w in distinct))
        if unit.held_bytes is None:  # packed bytes: a proxy until the target's tables are measured
            out[MEMORY] = out[SIZE]
        else:  # each distinct pair's kernel holds its tensors
            out[MEMORY] = float(sum(unit.held_bytes[b] for b in set(plan)))
        return out

    def unit_terms(self, u: int, plan: Plan) -> tuple[float, dict[str, float]]:
        """(objective, per-metric predicted degradation) of unit `u` at `plan`."""
        unit = self.units[u]
        pos = [unit.candidates[g].index(b) for g, b in enumerate(plan)]
        obj = sum(unit.objective[g][i] for g, i in enumerate(pos))
        deg = {m: sum(t[g][i] for g, i in enumerate(pos)) for m, t in unit.degradation.items()}
        return obj, deg

    def objective(self, plans: Sequence[Plan]) -> float:
        return sum(self.unit_terms(u, p)[0] for u, p in enumerate(plans))

    def switches(self, plan: Plan) -> int:
        return sum(a.w != b.w for a, b in zip(plan, plan[1:], strict=False))

    def config(self, plans: Sequence[Plan]) -> BitConfig:
        """A BitConfig with one exact-FQN rule per layer."""
        rules = {f: [str(b) for b in plan] for unit, plan in zip(self.units, plans, strict=True) for f in unit.fqns}
        return BitConfig(self.groups, rules, self.weight_group_size)

    def plans_of(self, config: BitConfig) -> list[Plan]:
        """The per-unit plans of a config (inverse of `config`); checks ties and candidates."""
        resolved = config.resolve([layer.fqn for layer in self.layers])
        out: list[Plan] = []
        for unit in self.units:
            plan = tuple(resolved[unit.fqns[0]])
            if any(tuple(resolved[f]) != plan for f in unit.fqns):
                raise ConfigError(f"config gives tied layers {list(unit.fqns)} different bits")
            for g, b in enumerate(plan):
                if b not in unit.candidates[g]:
                    raise ConfigError(f"config runs {unit.fqns[0]} at {b} in group {g}, not a candidate")
            out.append(plan)
        return out

    def predicted(self, config: BitConfig) -> dict[str, float]:
        """Predicted degradation per score metric and the weighted objective (key 'objective')."""
        plans = self.plans_of(config)
        out: dict[str, float] = {"objective": 0.0, **{s.metric: 0.0 for s in self.scores}}
        for u, plan in enumerate(plans):
            obj, deg = self.unit_terms(u, plan)
            out["objective"] += obj
            for m, v in deg.items():
                out[m] += v
        return out

    def costs(self, config: BitConfig) -> Costs:
        return costs(config, self.layers, self.tables)

    def violations(self, config: BitConfig, budget: Budget | None = None) -> list[str]:
        """Every way `config` breaks this problem (or `budget` in place of its own), by quant.cost.costs
        and the predicted degradations."""
        out = (budget or self.budget).violations(self.costs(config), self.reference)
        pred = self.predicted(config)
        for metric, cap in self.max_degradation.items():
            if pred[metric] > cap * (1 + 1e-9) + 1e-12:
                out.append(f"predicted {metric} degradation {pred[metric]:.6g} > {cap:.6g}")
        if self.max_weight_switches is not None:
            for unit, plan in zip(self.units, self.plans_of(config), strict=True):
                if self.switches(plan) > self.max_weight_switches:
                    out.append(f"{unit.fqns[0]} switches weight bits {self.switches(plan)} times")
        return out

    def check(self, config: BitConfig, budget: Budget | None = None) -> BitConfig:
        """Return `config` if it satisfies every limit and constraint, else raise BudgetViolation."""
        bad = self.violations(config, budget)
        if bad:
            raise BudgetViolation(f"solver returned a config over budget: {'; '.join(bad)}")
        return config

    def top_plans(self) -> list[Plan]:
        """Every unit at its highest candidate in each group (the greedy start; no weight switches
        unless pins force them)."""
        return [tuple(max(c) for c in unit.candidates) for unit in self.units]

    def in_user_units(self, metric: str, value: float) -> float:
        """An absolute cost expressed the way the budget gave `metric` (relative stays relative)."""
        lim = self.budget.limit(metric)
        if lim is not None and lim.relative:
            return value / Limit(metric, 1.0, relative=True).absolute(self.reference)
        return value

    # ---- feasibility ------------------------------------------------------------------------------
    def diagnose(self, backend: str = "auto", threads: int | None = None) -> InfeasibleBudget:
        """The InfeasibleBudget error for an infeasible problem: the first limit no allowed config meets
        alone, else the first limit that cannot be met together with the others. The smallest reachable
        values are exact minima, found with the ILP (`backend`, `threads`: see solvers.ilp)."""
        # the ILP imports this module: a service of the problem, computed there
        from solvers.ilp import smallest

        names = [lim.metric for lim in self.budget.limits] + [f"{DEGRADATION_LIMIT}{m}" for m in self.max_degradation]
        for others in (False, True):
            for name in names:
                low = smallest(self, name, others, backend, threads)
                cap = (self.max_degradation[name[len(DEGRADATION_LIMIT):]] if name.startswith(DEGRADATION_LIMIT)
                       else self.caps[name])
                if low is None or low > cap * (1 + 1e-9):
                    return self._infeasible(name, cap, low, others)
        return InfeasibleBudget(  # every limit is reachable with the others: the structure itself is infeasible
            "no configuration satisfies the pins, ties and switch limits together; loosen them", "", math.nan, math.nan)

    def _infeasible(self, name: str, cap: float, low: float | None, others: bool) -> InfeasibleBudget:
        given = "given the other limits" if others else "with these candidates, pins, ties and switch limits"
        if low is None:
            return InfeasibleBudget(f"limit {name} cannot be met {given}; loosen the other limits", name,
                                    self.in_user_units(name, cap), math.nan)
        user_cap, user_low = self.in_user_units(name, cap), self.in_user_units(name, low)
        lim = self.budget.limit(name)
        suffix = "x" if lim is not None and lim.relative else ""
        shown = _round_up(user_low)
        return InfeasibleBudget(
            f"budget {name}={user_cap:.6g}{suffix} is infeasible: the smallest {name} any allowed "
            f"configuration reaches {given} is {shown}{suffix}; raise the limit to at least {shown}{suffix}"
            + ("" if others else " or allow lower bits"),
            name, user_cap, user_low,
        )


def _round_up(value: float, digits: int = 6) -> str:
    """`value` shown with `digits` significant digits, rounded up so the shown number is feasible."""
    if value <= 0:
        return f"{value:.{digits}g}"
    step = 10 ** (math.floor(math.log10(value)) - digits + 1)
    return f"{math.ceil(value / step - 1e-9) * step:.{digits}g}"


def remap_scores(scores: Scores, groups: TimestepGroups) -> Scores:
    """Scores for other timestep groups over the same steps: each old group's score is spread evenly
    over its steps, and a new group's score sums its steps (so totals over all steps are kept)."""
    if groups.num_steps != scores.groups.num_steps:
        raise ConfigError(f"cannot remap scores from {scores.groups.num_steps} to {groups.num_steps} steps")
    old_sizes = scores.groups.sizes()
    # weight[new][old] = steps of new group g' in old group g / steps of g
    share = [[0.0] * len(scores.groups) for _ in range(len(groups))]
    for step in range(groups.num_steps):
        g_old = scores.groups.group_of(step)
        share[groups.group_of(step)][g_old] += 1 / old_sizes[g_old]
    sums: dict[tuple[str, int, Bits], float] = {}
    for (fqn, g_old, b), v in scores.values.items():
        for g_new in range(len(groups)):
            if share[g_new][g_old]:
                key = (fqn, g_new, b)
                sums[key] = sums.get(key, 0.0) + v * share[g_new][g_old]
    return Scores(scores.estimator, scores.metric, groups, sums)

