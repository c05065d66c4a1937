"""`optuna`: multi-objective search over MEASURED evaluations, seeded by the ILP's predicted front.

Named `optuna_search` so it does not shadow the `optuna` package.

Each trial turns a few knobs, solves the ILP for the resulting problem, and measures the config with
the caller's `evaluate(config) -> {name: value}` (search/ passes real quantized runs). Objectives
are minimised; a name that `evaluate` does not return and that is a budget metric (wbits, size,
memory, bops, latency) is computed with quant.cost.costs, and "cost" means the budget's first
metric, in the budget's units. Knobs (space="knobs", the default):

- budget_scale in [max(min_scale, lowest feasible / limit), 1]: multiplies the budget's first limit
  (so every config is within the user's budget and the front spans cheaper ones);
- weight_<metric> (log-uniform 0.1..10), when the problem has several score metrics;
- weight_share in [0, 1]: how the budget splits between weights and activations, as an extra cap on
  average weight bits between the lowest and highest the candidates allow (1 = no extra cap);
- shift_<i> in [-max_group_shift, max_group_shift]: moves timestep-group boundary i (scores are
  remapped with solvers.problem.remap_scores);
- offset_<block> in [-1, 1]: a block's predicted degradation is multiplied by 4**offset, i.e. the
  ILP treats it as that many bits more (or less) sensitive (quantization noise power is ~4x per bit).

space="direct" (at most 64 layers): one categorical per (unit, group), budget as an Optuna
constraint. Either way the ILP sweep's configs are enqueued as the first trials (exactly those
configs: they ride along as user attributes). Trials with NaN/inf measurements FAIL and never reach
the front. `storage` is any Optuna storage URL (the service passes its database). `sampler`: nsga2,
or tpe (multivariate, random for its first `startup_trials`, the enqueued seeds included).

Two ways to drive it: `solve`/`study` run `optimize` with `evaluate` measuring each trial in turn;
a caller that measures trials elsewhere (search/ evaluates a round of trials on its executors) uses
`open` (the study, seeds enqueued), `suggest` (a trial's config) and `objective_values` (what to
tell Optuna) with Optuna's ask/tell interface, and passes no `evaluate`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from quant.budget import Budget, Limit, cost_of
from quant.config import BitConfig, Bits, ConfigError, TimestepGroups
from quant.cost import Costs
from solvers import ilp
from solvers.base import Solver, register
from solvers.problem import InfeasibleBudget, Problem, remap_scores

if TYPE_CHECKING:
    import optuna

Evaluate = Callable[[BitConfig], Mapping[str, float]]
SAMPLERS = ("nsga2", "tpe")
SPACES = ("knobs", "direct")
DIRECT_MAX_LAYERS = 64
_CONFIG = "config"
SEED_CONFIG = "seed_config"  # the user attribute of an enqueued ILP solution


@register("optuna")
class OptunaSolver(Solver):
    def __init__(self, evaluate: Evaluate | None = None, n_trials: int = 30, sampler: str = "nsga2",
                 objectives: Sequence[str] = ("degradation", "cost"), space: str = "knobs",
                 storage: str | None = None, study_name: str | None = None, seed: int | None = None,
                 seed_points: int = 5, min_scale: float = 0.5, max_group_shift: int = 1, max_blocks: int = 8,
                 ilp_backend: str = "auto", threads: int | None = None, startup_trials: int = 10) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
        if space not in SPACES:
            raise ValueError(f"unknown space {space!r}; valid: {', '.join(SPACES)}")
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        self.evaluate, self.n_trials, self.sampler, self.objectives = evaluate, n_trials, sampler, tuple(objectives)
        self.space, self.storage, self.study_name, self.seed = space, storage, study_name, seed
        self.seed_points, self.min_scale, self.max_group_shift, self.max_blocks = (
            seed_points, min_scale, max_group_shift, max_blocks)
        self.ilp_backend, self.threads, self.startup_trials = ilp_backend, threads, startup_trials
        self._scale_floor = min_scale  # raised by `open` to the lowest feasible share of the budget

    def solve(self, problem: Problem) -> list[BitConfig]:
        study = self.study(problem)
        return [BitConfig.from_dict(t.user_attrs[_CONFIG]) for t in study.best_trials
                if all(v <= 0 for v in t.constraints.values())]

    # ---- the study ---------------------------------------------------------------------------------
    def study(self, problem: Problem) -> optuna.Study:
        """Create (or load, from `storage`) the study, enqueue the ILP seeds if new, run `n_trials`,
        measuring each with `evaluate`."""
        if self.evaluate is None:
            raise ValueError("the optuna solver measures configs: pass evaluate=callable(config) -> dict of metrics "
                             "(or drive it with open/suggest/objective_values)")
        study = self.open(problem)
        study.optimize(lambda t: self._measure(problem, t, self.suggest(problem, t)), n_trials=self.n_trials,
                       catch=(InfeasibleBudget,))
        return study

    def open(self, problem: Problem) -> optuna.Study:
        """Create (or load, from `storage`) the study; a new one gets the ILP seeds enqueued."""
        import optuna

        if self.space == "direct" and len(problem.layers) > DIRECT_MAX_LAYERS:
            raise ConfigError(f"space='direct' is for models of at most {DIRECT_MAX_LAYERS} layers "
                              f"(this one has {len(problem.layers)}); use space='knobs'")

        if self.sampler == "nsga2":
            sampler: optuna.samplers.BaseSampler = optuna.samplers.NSGAIISampler(seed=self.seed)
        else:
            with warnings.catch_warnings():  # multivariate TPE is "experimental" since Optuna 2.2
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # multivariate: the knobs interact (budget share x group shifts x block offsets)
                sampler = optuna.samplers.TPESampler(seed=self.seed, multivariate=True,
                                                     n_startup_trials=self.startup_trials)
        study = optuna.create_study(
            storage=self.storage, study_name=self.study_name, load_if_exists=self.study_name is not None,
            directions=["minimize"] * len(self.objectives), sampler=sampler,
        )
        primary = problem.budget.limits[0]
        low = ilp.smallest(problem, primary.metric, others=True, backend=self.ilp_backend, threads=self.threads)
        if low is None:
            raise ilp.diagnose(problem, self.ilp_backend, self.threads)
        self._scale_floor = min(1.0, max(self.min_scale, low / problem.caps[primary.metric]))
        if not study.trials:
            for params, config in self._seeds(problem):
                study.enqueue_trial(params, user_attrs={SEED_CONFIG: config.to_dict()})
        return study

    def suggest(self, problem: Problem, trial: optuna.Trial) -> BitConfig:
        """The config trial `trial` proposes (recorded as its user attribute `config`); raises
        InfeasibleBudget when its knobs leave the ILP no solution."""
        config = (self._knob_config if self.space == "knobs" else self._direct_config)(problem, trial)
        trial.set_user_attr(_CONFIG, config.to_dict())
        return config

    def _seeds(self, problem: Problem) -> list[tuple[dict[str, Any], BitConfig]]:
        primary = problem.budget.limits[0]
        lo = self._scale_floor
        scales = [lo + (1 - lo) * i / max(self.seed_points - 1, 1)
                  for i in range(self.seed_points)]
        front = ilp.sweep(problem, [primary.value * s for s in scales], primary.metric, self.ilp_backend,
                          threads=self.threads)
        out = []
        for point in front:
            if self.space == "knobs":
                scale = min(max(point.value / primary.value, lo), 1.0)
                params: dict[str, Any] = {"budget_scale": scale, "weight_share": 1.0}
                params |= {f"weight_{m}": problem.weights.get(m, 1.0) for m in self._weight_knobs(problem)}
                params |= {f"shift_{i}": 0 for i in range(1, len(problem.groups))} if self.max_group_shift else {}
                params |= {f"offset_{b}": 0.0 for b in _blocks(problem, self.max_blocks)}
            else:
                params = {_param(unit.fqns[0], g): str(b) for u, (unit, plan) in
                          enumerate(zip(problem.units, problem.plans_of(point.config), strict=True))
                          for g, b in enumerate(plan) if len(unit.candidates[g]) > 1}
            out.append((params, point.config))
        return out

    def _weight_knobs(self, problem: Problem) -> list[str]:
        return [s.metric for s in problem.scores] if len(problem.scores) > 1 else []

    def _knob_config(self, problem: Problem, trial: optuna.Trial) -> BitConfig:
        scale = trial.suggest_float("budget_scale", self._scale_floor, 1.0)
        weights = {m: trial.suggest_float(f"weight_{m}", 0.1, 10.0, log=True) for m in self._weight_knobs(problem)}
        share = trial.suggest_float("weight_share", 0.0, 1.0)
        shifts = [trial.suggest_int(f"shift_{i}", -self.max_group_shift, self.max_group_shift)
                  for i in range(1, len(problem.groups))] if self.max_group_shift else []
        blocks = _blocks(problem, self.max_blocks)
        offsets = {b: trial.suggest_float(f"offset_{b}", -1.0, 1.0) for b in blocks}
        if SEED_CONFIG in trial.user_attrs:  # an enqueued ILP solution: measure exactly that config
            return BitConfig.from_dict(trial.user_attrs[SEED_CONFIG])
        changes: dict[str, Any] = {"budget": _budget(problem, scale, share)}
        if weights:
            changes["weights"] = weights
        groups = _shifted(problem.groups, shifts)
        if groups != problem.groups:
            changes["groups"] = groups
            changes["scores"] = [remap_scores(s, groups) for s in problem.scores]
        if any(offsets.values()):
            changes["score_multipliers"] = {
                f: problem.score_multipliers.get(f, 1.0) * 4.0 ** offsets[b]
                for b, members in blocks.items() for f in members}
        variant = problem.replace(**changes)
        return ilp.solve(variant, self.ilp_backend, threads=self.threads)

    def _direct_config(self, problem: Problem, trial: optuna.Trial) -> BitConfig:
        plans = []
        for unit in problem.units:
            plans.append(tuple(
                Bits.parse(trial.suggest_categorical(_param(unit.fqns[0], g), [str(b) for b in cands]))
                if len(cands) > 1 else cands[0] for g, cands in enumerate(unit.candidates)))
        config = problem.config(plans)
        if SEED_CONFIG in trial.user_attrs:
            config = BitConfig.from_dict(trial.user_attrs[SEED_CONFIG])
        c = problem.costs(config)
        over = max(_value(c, lim.metric) / lim.absolute(problem.reference) - 1 for lim in problem.budget.limits)
        trial.set_constraint("budget", over)
        return config

    def _measure(self, problem: Problem, trial: optuna.Trial, config: BitConfig) -> tuple[float, ...]:
        assert self.evaluate is not None
        measured = dict(self.evaluate(config))
        for k, v in measured.items():
            trial.set_user_attr(f"measured_{k}", float(v))
        return self.objective_values(problem, config, measured)

    def objective_values(self, problem: Problem, config: BitConfig, measured: Mapping[str, float]) -> tuple[float, ...]:
        """The trial's objective values from its measurements (NaN ones when a value is not finite:
        Optuna then marks the trial FAILED)."""
        c = problem.costs(config)
        values = []
        for name in self.objectives:
            if name in measured:
                v = float(measured[name])
            elif name == "cost" or name in ("wbits", "size", "memory", "bops", "latency"):
                metric = problem.budget.limits[0].metric if name == "cost" else name
                v = problem.in_user_units(metric, _value(c, metric))
            else:
                raise KeyError(f"objective {name!r} is neither returned by evaluate ({sorted(measured)}) "
                               "nor a budget metric")
            values.append(v)
        if not all(math.isfinite(v) for v in values):
            return tuple(math.nan for _ in values)  # Optuna marks the trial FAILED
        return tuple(values)


def _param(fqn: str, group: int) -> str:
    return f"{fqn}|{group}"


def _value(c: Costs, metric: str) -> float:
    return cost_of(c, metric)


def _budget(problem: Problem, scale: float, share: float) -> Budget:
    """The budget with its first limit scaled and, for share < 1, an extra cap on average weight bits."""
    first, *rest = problem.budget.limits
    limits = [Limit(first.metric, first.value * scale, first.relative), *rest]
    if share < 1:
        lo = sum(min(b.w for c in u.candidates for b in c) * sum(x.params for x in u.layers) for u in problem.units)
        hi = sum(max(b.w for c in u.candidates for b in c) * sum(x.params for x in u.layers) for u in problem.units)
        cap = (lo + share * (hi - lo)) / problem.total_params
        current = next((x.value for x in limits if x.metric == "wbits"), math.inf)
        limits = [x for x in limits if x.metric != "wbits"] + [Limit("wbits", min(cap, current))]
    return Budget(tuple(limits))


def _shifted(groups: TimestepGroups, shifts: Sequence[int]) -> TimestepGroups:
    """Group starts moved by `shifts`; the original groups if a move would empty a group."""
    starts = [0, *(s + d for s, d in zip(groups.starts[1:], shifts, strict=True))]
    if any(b <= a for a, b in zip(starts, starts[1:], strict=False)) or starts[-1] >= groups.num_steps:
        return groups
    return TimestepGroups(groups.num_steps, tuple(starts))


def _blocks(problem: Problem, max_blocks: int) -> dict[str, list[str]]:
    """Layers by block (`down_blocks.1`, `mid_block`, `conv_in`, ...), merged into at most
    `max_blocks` contiguous chunks named after their first block."""
    by_block: dict[str, list[str]] = {}
    for layer in problem.layers:
        parts = layer.fqn.split(".")
        key = ".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else parts[0]
        by_block.setdefault(key, []).append(layer.fqn)
    if len(by_block) <= 1 or max_blocks < 1:
        return {}
    names = list(by_block)
    size = math.ceil(len(names) / max_blocks)
    return {names[i]: [f for n in names[i:i + size] for f in by_block[n]] for i in range(0, len(names), size)}
