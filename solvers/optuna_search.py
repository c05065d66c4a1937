"""`optuna`: multi-objective search over MEASURED evaluations, seeded by the ILP's predicted front.

Named `optuna_search` so it does not shadow the `optuna` package.

A proposer (solvers.base): each `ask` asks Optuna for trials; each trial turns a few knobs, solves the
ILP for the resulting problem and proposes that config; the caller measures it and `tell`s the
measured `degradation` (a study tells minus its quality metric). Objectives are minimised; one that
the measurement does not carry and that is a budget metric (wbits, size, memory, bops, latency) is
computed with quant.cost.costs, and "cost" means the budget's first metric, in the budget's units.
The ILP's own budget sweep is enqueued as the first trials, proposing exactly those configs (they ride
along as user attributes; their proposals say origin "ilp", the others "optuna"). Knobs (space="knobs",
the default):

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
constraint. A trial told a failure or a non-finite value FAILs and never reaches the front; a trial
whose knobs leave the ILP no solution FAILs at once (and another is asked). `sampler`: nsga2, or tpe
(multivariate, random for its first `startup_trials`, the enqueued seeds included).

The search is done after `n_trials` finished trials, or when `patience` trials in a row did not
improve the measured front by more than `tolerance` in the first objective.

State lives in Optuna's study, in `storage` (any Optuna storage URL or object; a search passes its
own database, so Optuna's tools open it: `optuna-dashboard sqlite:///bitsearch.db`), named
`study_name` (`bitsearch/<study>` for a search). It resumes with the caller: a new solver on the same
study proposes again every trial asked but never told (its config is a user attribute), so a caller
that stored the proposal finds it (by content) and tells it when its measurement lands; a trial that
died before its config was chosen is told FAIL. A told trial records the caller's `reference` (the
study's candidate id) as its user attribute `candidate_id`; the proposal's tag holds `optuna_trial`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from quant.budget import Budget, Limit
from quant.config import BitConfig, Bits, ConfigError, TimestepGroups
from quant.cost import HELD_COSTS, STEP_COSTS, WBITS, Costs, cost_of
from solvers import ilp
from solvers.base import Measurement, Proposal, SearchSettings, Solver, register
from solvers.pareto import trailing_stale
from solvers.problem import InfeasibleBudget, Problem, remap_scores

if TYPE_CHECKING:
    import optuna

SAMPLERS = ("nsga2", "tpe")
SPACES = ("knobs", "direct")
DIRECT_MAX_LAYERS = 64
FRONT_TOLERANCE = 0.05  # a front gain below this much degradation (a study: dB of quality) is noise
_CONFIG = "config"
SEED_CONFIG = "seed_config"  # the user attribute of an enqueued ILP solution
CANDIDATE_ATTR = "candidate_id"  # the user attribute of a told trial: the caller's reference
TRIAL_TAG = "optuna_trial"  # the proposal tag: the trial's number


def optuna_study_name(search: str) -> str:
    """The Optuna study of the search (the bitsearch study) named `search`."""
    return f"bitsearch/{search}"


@register("optuna")
class OptunaSolver(Solver):
    def __init__(self, n_trials: int = 30, sampler: str = "nsga2", objectives: Sequence[str] = ("degradation", "cost"),
                 space: str = "knobs", storage: str | optuna.storages.BaseStorage | None = None,
                 study_name: str | None = None, seed: int | None = None, seed_points: int = 5,
                 min_scale: float = 0.5, max_group_shift: int = 1, max_blocks: int = 8, ilp_backend: str = "auto",
                 ilp_time_limit: float | None = None, ilp_gap: float = ilp.DEFAULT_GAP, threads: int | None = None,
                 startup_trials: int = 10, patience: int = 0,
                 tolerance: float = FRONT_TOLERANCE, quality: str | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
        if space not in SPACES:
            raise ValueError(f"unknown space {space!r}; valid: {', '.join(SPACES)}")
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        if n_trials < 1 or patience < 0:
            raise ValueError(f"n_trials must be >= 1 and patience >= 0, got {n_trials} and {patience}")
        self.n_trials, self.sampler, self.objectives = n_trials, sampler, tuple(objectives)
        self.space, self.storage, self.study_name, self.seed = space, storage, study_name, seed
        self.seed_points, self.min_scale, self.max_group_shift, self.max_blocks = (
            seed_points, min_scale, max_group_shift, max_blocks)
        self.ilp_backend, self.threads, self.startup_trials = ilp_backend, threads, startup_trials
        self.ilp_time_limit = ilp_time_limit  # seconds per solve (None: until optimal up to ilp_gap)
        self.ilp_gap = ilp_gap
        self.patience, self.tolerance, self.quality = patience, tolerance, quality
        self.log: Callable[[str], None] = log or (lambda message: None)
        self._scale_floor = min_scale  # raised by `_open` to the lowest feasible share of the budget
        self.study: optuna.Study | None = None  # opened by the first `ask`
        self._problem: Problem | None = None
        self._pending: dict[int, optuna.Trial] = {}  # asked, not told, by trial number
        self._resumed: list[Proposal] = []  # pending from an earlier process, handed out by the next ask
        self._stopped = False

    @classmethod
    def for_search(cls, settings: SearchSettings) -> OptunaSolver:
        seeds = max(1, min(5, settings.trials // 3))
        # Few trials: 4 block offsets (not 8) and TPE modelling from the first trial after the seeds.
        # Chosen on bench/search.py (24 trials, builtin): see bench/results/search-ray-cpu-1thread.txt.
        return cls(n_trials=settings.trials, sampler="tpe", storage=settings.storage,
                   study_name=optuna_study_name(settings.name), seed=settings.seed, seed_points=seeds, max_blocks=4,
                   ilp_time_limit=ilp.SEARCH_SOLVE_S, ilp_gap=ilp.SEARCH_GAP,
                   startup_trials=seeds + 1, patience=settings.patience, quality=settings.quality, log=settings.log)

    # ---- the proposer contract --------------------------------------------------------------------
    def ask(self, problem: Problem, n: int) -> list[Proposal]:
        """Trials asked before and never told (after a resume), then new ones up to `n` asked at once
        in all, never past `n_trials` finished or pending."""
        if self.study is None:
            self._open(problem)
        out, self._resumed = self._resumed, []
        while not self._stopped and len(self._pending) < min(n, self.n_trials - self._finished()):
            proposal = self._ask_one(problem)
            if proposal is not None:
                out.append(proposal)
        if out:
            self.log(f"optuna: {len(out)} trial(s) asked, {self._finished()}/{self.n_trials} finished")
        return out

    def tell(self, proposal: Proposal, measurement: Measurement) -> None:
        """Tell the trial of `proposal` its objective values (FAIL on a failure or a non-finite value)."""
        import optuna

        trial = self._pending.pop(int(proposal.tag[TRIAL_TAG]), None)
        if trial is None or self.study is None or self._problem is None:
            raise ValueError(f"trial {proposal.tag.get(TRIAL_TAG)} was not asked by this solver, or was told")
        if measurement.reference is not None:
            trial.set_user_attr(CANDIDATE_ATTR, measurement.reference)
        values = None if measurement.failure is not None else self.objective_values(
            self._problem, proposal.config, measurement.values)
        if values is None or not all(math.isfinite(v) for v in values):
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, list(values))
        self._update()

    @property
    def done(self) -> bool:
        return self._stopped and not self._pending

    def describe(self) -> str | None:
        if self.study_name is None or not isinstance(self.storage, str):
            return None
        return f"optuna study {self.study_name!r} in the same database: optuna-dashboard {self.storage}"

    def forget(self) -> None:
        from contextlib import suppress

        import optuna

        if self.study_name is None or self.storage is None:
            return
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with suppress(KeyError):  # KeyError: the search stopped before its first ask
            optuna.delete_study(study_name=self.study_name, storage=self.storage)

    # ---- the study ---------------------------------------------------------------------------------
    def _open(self, problem: Problem) -> None:
        """Create (or load, from `storage`) the study; a new one gets the ILP seeds enqueued, a loaded
        one hands its untold trials to the next ask."""
        import optuna

        if self.space == "direct" and len(problem.layers) > DIRECT_MAX_LAYERS:
            raise ConfigError(f"space='direct' is for models of at most {DIRECT_MAX_LAYERS} layers "
                              f"(this one has {len(problem.layers)}); use space='knobs'")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
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
        if self.quality is not None:
            with warnings.catch_warnings():  # experimental since Optuna 3.2, and only labels the dashboard's axes
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([{"degradation": f"-{self.quality}", "cost": primary.metric}.get(o, o)
                                        for o in self.objectives])
        low = ilp.smallest(problem, primary.metric, others=True, backend=self.ilp_backend, threads=self.threads)
        if low is None or low > problem.caps[primary.metric] * (1 + 1e-9):  # no config at all: say why now,
            raise problem.diagnose(self.ilp_backend, self.threads)  # not after n_trials failed trials
        self._scale_floor = min(1.0, max(self.min_scale, low / problem.caps[primary.metric]))
        self.study, self._problem = study, problem
        if not study.trials:
            for params, config in self._seeds(problem):
                study.enqueue_trial(params, user_attrs={SEED_CONFIG: config.to_dict()})
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if _CONFIG not in t.user_attrs:  # the caller stopped before this trial's config was chosen
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                continue
            # Trial's constructor is Optuna's public way to reopen a running trial (it wants the storage id)
            self._pending[t.number] = optuna.trial.Trial(study, t._trial_id)
            self._resumed.append(self._proposal(t.number, t.user_attrs, BitConfig.from_dict(t.user_attrs[_CONFIG])))
        self._update()

    def _ask_one(self, problem: Problem) -> Proposal | None:
        """A new trial's proposal; None (the trial told FAIL) when its knobs leave the ILP no solution."""
        import optuna

        assert self.study is not None
        trial = self.study.ask()
        try:
            config = self.suggest(problem, trial)
        except InfeasibleBudget as e:
            self.log(f"optuna: trial {trial.number} has no config within budget ({e})")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self._update()
            return None
        self._pending[trial.number] = trial
        return self._proposal(trial.number, trial.user_attrs, config)

    def _proposal(self, number: int, attrs: Mapping[str, Any], config: BitConfig) -> Proposal:
        return Proposal(config, "ilp" if SEED_CONFIG in attrs else self.name, {TRIAL_TAG: number})

    def _finished(self) -> int:
        assert self.study is not None
        return sum(t.state.is_finished() for t in self.study.get_trials(deepcopy=False))

    def _update(self) -> None:
        """Stop (once, saying why) after `n_trials` finished, or `patience` trials without front progress."""
        import optuna

        assert self.study is not None
        if self._stopped:
            return
        trials = self.study.get_trials(deepcopy=False)
        finished = sum(t.state.is_finished() for t in trials)
        complete = [tuple(t.values) for t in sorted(trials, key=lambda t: t.number)
                    if t.state == optuna.trial.TrialState.COMPLETE]
        stale = trailing_stale(complete, (self.tolerance, *[0.0] * (len(self.objectives) - 1)))
        if finished >= self.n_trials:
            self.log(f"optuna: {finished} trials finished")
            self._stopped = True
        elif self.patience and stale >= self.patience:
            self.log(f"optuna: the front did not improve in the last {stale} trials; stopping "
                     f"after {finished} of {self.n_trials}")
            self._stopped = True

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
                          gap=self.ilp_gap, threads=self.threads, time_limit=self.ilp_time_limit)
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
        return ilp.solve(variant, self.ilp_backend, self.ilp_gap, self.threads, self.ilp_time_limit)

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

    def objective_values(self, problem: Problem, config: BitConfig, measured: Mapping[str, float]) -> tuple[float, ...]:
        """The trial's objective values from its measurements (NaN ones when a value is not finite:
        Optuna then marks the trial FAILED)."""
        c = problem.costs(config)
        values = []
        for name in self.objectives:
            if name in measured:
                v = float(measured[name])
            elif name == "cost" or name in (*STEP_COSTS, *HELD_COSTS):
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
        current = next((x.value for x in limits if x.metric == WBITS), math.inf)
        limits = [x for x in limits if x.metric != WBITS] + [Limit(WBITS, min(cap, current))]
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
