"""A Study: calibrate -> sensitivities -> solver proposals -> real quantized evaluations -> Pareto front.

Everything a study computes goes through `storage.Storage` (the single source of truth), so a
study resumes where it stopped: the inventory, activation ranges and sensitivity scores are cached
in the database, candidates are added idempotently by content hash, and evaluations claim
candidates atomically with a lease, so no candidate is evaluated twice and none is lost.

Proposals come from the study's solver, a proposer (solvers.base): the study asks it for as many
configs as its executor evaluates at once, queues them as candidates, evaluates them and tells the
solver each one's measured quality, until the solver is done (a one-shot solver after its first
answer). A proposal's tag is kept as its candidate's meta.

Evaluations are multi-fidelity. Every candidate gets the `cheap` one: `eval_samples` images, fidelity
to full precision (PSNR, SSIM, per-step SQNR). Candidates that may enter the front (non-dominated on
quality vs weight bits, or vs bit-ops, among the cheap evaluations) are promoted to the `full` one: the
alignment and distribution metrics on `full_samples` other images. A candidate's metrics are the
union of its evaluations'.

    study = Study.create("demo", StudySpec(model="builtin", budget=("wbits=4.5",)))
    study.run()
    for point in study.pareto(): ...
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from quant.budget import Budget
from quant.config import BitConfig, Bits, ConfigError, TimestepGroups
from search.executors.base import Evaluator, Executor, Outcome
from search.origins import UNIFORM, add_candidates
from solvers.base import Measurement, Proposal, Solver

if TYPE_CHECKING:
    from solvers.problem import Problem

SPEC_VERSION = 1
CHEAP, FULL = "cheap", "full"  # evaluation fidelities (see the module docstring)
QUALITY = "psnr_db"  # the cheap quality metric that promotion and the optuna solver rank by
PROMOTION_COSTS = ("wbits", "bops_g")  # a candidate on the quality front vs either gets the full evaluation
Progress = Callable[[str], None]


def check_estimators(names: Sequence[str]) -> None:
    from sensitivity.base import estimator_names

    valid = estimator_names()
    if not names:
        raise ConfigError(f"give at least one sensitivity estimator; valid: {', '.join(valid)}")
    unknown = [e for e in names if e not in valid]
    if unknown:
        raise ConfigError(f"unknown estimator {unknown[0]!r}; valid: {', '.join(valid)}")


def check_solver(name: str) -> None:
    from solvers.base import solver_names

    if name not in solver_names():
        raise ConfigError(f"unknown solver {name!r}; valid: {', '.join(solver_names())}")


def check_backend(name: str) -> None:
    """A study's backend runs every evaluation: an unknown one must fail before the study is stored,
    not in its first evaluation, where it would leave a RUNNING study behind."""
    import quant.backends  # noqa: F401  (registers the built-in backends)
    from quant.backends.base import backend_names

    if name not in backend_names():
        raise ConfigError(f"unknown backend {name!r}; valid: {', '.join(backend_names())}")


def check_text(what: str, value: str) -> None:
    """Names, paths and spec strings end up in SQL text columns, file paths and one-line messages:
    PostgreSQL refuses NUL, the OS refuses it in paths, and control characters forge output lines."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"{what} {value!r} contains a control character (e.g. NUL or newline); remove it")


SEED_LIMIT = 2**32  # numpy's seeds stop there; estimators derive further seeds from it (seed * 1009 + g)


def check_budget(spec: StudySpec, layers: Sequence[Any]) -> None:
    """Reject a budget that no config of `spec.bits` meets. Every budget metric grows with the bits of
    each layer independently, so the cheapest uniform config reaches each limit's lowest value.
    Latency limits are checked by the solver once the study has measured its latency table."""
    from quant.budget import cost_of
    from quant.cost import costs, full_precision_costs

    reference = full_precision_costs(layers, spec.num_steps)
    for lim in Budget.parse(list(spec.budget)).limits:
        if lim.metric == "latency":
            continue
        low = min(cost_of(costs(BitConfig.uniform(spec.groups, b), layers), lim.metric) for b in spec.bits)
        cap = lim.absolute(reference)
        if low > cap * (1 + 1e-9):
            lowest = lim.value * low / cap
            raise ConfigError(f"budget {lim} is infeasible: the lowest {lim.metric} the bits {', '.join(spec.bits)} "
                              f"reach on this model is {lowest:.4g}{'x' if lim.relative else ''}; raise the limit or "
                              "allow lower bits")


@dataclass(frozen=True)
class StudySpec:
    """What a study searches; stored as versioned JSON with the study.

    `trials`: proposals of the ilp/greedy sweep, or Optuna trials (its ILP seeds included).
    `eval_samples`: images of the `cheap` fidelity; `full_samples`: of the `full` one (see the module).
    `patience`: the optuna solver stops after this many trials in a row that did not improve the
    measured front (0: never; ilp and greedy propose their whole sweep at once)."""

    model: str = "builtin"
    budget: tuple[str, ...] = ("wbits=4.5",)
    estimators: tuple[str, ...] = ("gradient",)
    solver: str = "ilp"
    timestep_groups: int = 3
    num_steps: int = 20
    trials: int = 8
    bits: tuple[str, ...] = ("W8A8", "W6A8", "W4A8", "W8A16", "W4A16")
    backend: str = "int8"
    eval_samples: int = 20
    calibration_samples: int = 10
    seed: int = 0
    baselines: tuple[str, ...] = ("W8A8", "W4A8")
    full_samples: int = 40
    patience: int = 8

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            for text in (value,) if isinstance(value, str) else value if isinstance(value, tuple) else ():
                check_text(f.name, str(text))
        Budget.parse(list(self.budget))  # raises a clear error on a malformed budget
        for b in (*self.bits, *self.baselines):
            Bits.parse(b)
        if not 1 <= self.timestep_groups <= self.num_steps:
            raise ConfigError(f"timestep_groups must be between 1 and num_steps ({self.num_steps})")
        check_estimators(self.estimators)
        check_solver(self.solver)
        if min(self.trials, self.eval_samples, self.calibration_samples, self.full_samples) < 1:
            raise ConfigError("trials, eval_samples, calibration_samples and full_samples must be >= 1")
        if self.patience < 0:
            raise ConfigError("patience must be >= 0 (0: never stop early)")
        if not 0 <= self.seed < SEED_LIMIT:
            raise ConfigError(f"seed must be between 0 and {SEED_LIMIT - 1}, got {self.seed}")
        check_backend(self.backend)

    @property
    def groups(self) -> TimestepGroups:
        return TimestepGroups.uniform(self.num_steps, self.timestep_groups)

    def to_dict(self) -> dict[str, Any]:
        return {"version": SPEC_VERSION, **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudySpec:
        if d.get("version") != SPEC_VERSION:
            raise ConfigError(f"study spec version {d.get('version')} is not supported (expected {SPEC_VERSION})")
        names = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        return cls(**kwargs)


@dataclass(frozen=True)
class FrontPoint:
    """A candidate's measurements: the union of its evaluations' metrics (`fidelities` says which ran)."""

    candidate_id: int
    origin: str
    metrics: dict[str, float]
    costs: dict[str, float]
    measured: bool
    config: dict[str, Any] = field(repr=False)
    fidelities: tuple[str, ...] = ()


class Study:
    def __init__(self, name: str, spec: StudySpec, storage: Any) -> None:
        self.name, self.spec, self.storage = name, spec, storage
        self._workload: Any = None
        self._layers: list[Any] | None = None
        self._evaluator: StudyEvaluator | None = None

    # ---- create / load ------------------------------------------------------------------------
    @classmethod
    def create(cls, name: str, spec: StudySpec, db: str | None = None) -> Study:
        """A new study. The model is loaded, its layers listed and the budget checked against them
        first, so a bad model or an infeasible budget writes nothing to the database."""
        from quant.layers import inventory
        from storage import Storage
        from workloads.base import check_samples, load_workload

        # each metric's minimum images (FCD: 2), before the model loads: a count the metrics cannot use
        # would otherwise fail every full evaluation of the study
        check_samples(spec.model, eval_samples=spec.eval_samples, full_samples=spec.full_samples,
                      calibration_samples=spec.calibration_samples)
        workload = load_workload(spec.model, num_steps=spec.num_steps)
        st = Storage(db)
        study = cls(name, spec, st)
        study._workload = workload
        layers = inventory(workload.denoiser, study._example_inputs())
        check_budget(spec, layers)
        st.create_study(name, spec.to_dict())
        st.add_layers(name, [asdict(layer) for layer in layers])
        return study

    @classmethod
    def load(cls, name: str, db: str | None = None, *, readonly: bool = False) -> Study:
        """An existing study (a missing or foreign database raises DatabaseOpenError; nothing is
        created). `readonly` for callers that only read: the database then cannot be altered."""
        from storage import Storage

        st = Storage(db, create=False, readonly=readonly)
        info = st.get_study(name)
        return cls(name, StudySpec.from_dict(info.spec), st)

    # ---- the pipeline -------------------------------------------------------------------------
    def run(self, progress: Progress = print, max_seconds: float | None = None,
            executor: Executor | None = None) -> None:
        """Run (or resume) every stage; each stage skips work already in the database. Evaluations run
        on `executor` (default: `local`); `max_seconds` bounds them (the study stays RUNNING, resumable)."""
        from search.executors import LocalExecutor
        from storage import StudyState

        deadline = None if max_seconds is None else time.time() + max_seconds
        executor = executor or LocalExecutor()
        self.storage.set_study_state(self.name, StudyState.RUNNING)
        layers = self.layers(progress)
        ranges = self.activation_ranges(progress)
        scores = self.sensitivities(layers, progress)
        with executor:  # workers stay up across rounds and fidelities
            searched = self.search(self.problem(layers, scores, progress), ranges, executor, progress, deadline)
            self.evaluate(ranges, progress, seconds_left(deadline), executor)
            while self.promote(progress) and seconds_left(deadline) != 0:
                self.evaluate(ranges, progress, seconds_left(deadline), executor)
        done = searched and self._done() and not self.promote(lambda m: None, dry_run=True)
        if done:  # the page's FP-vs-quantized grid is made here and stored: reads never run the model
            from search.samples import make_samples

            make_samples(self, progress)
        self.storage.set_study_state(self.name, StudyState.COMPLETE if done else StudyState.RUNNING)

    @property
    def workload(self) -> Any:
        if self._workload is None:
            from workloads.base import load_workload

            self._workload = load_workload(self.spec.model, num_steps=self.spec.num_steps)
        return self._workload

    def layers(self, progress: Progress = print) -> list[Any]:
        from quant.layers import Layer, inventory

        if self._layers is None:
            stored = self.storage.get_layers(self.name)
            if not stored:
                progress("inventory: one forward with hooks")
                found = inventory(self.workload.denoiser, self._example_inputs())
                self.storage.add_layers(self.name, [asdict(layer) for layer in found])
                stored = self.storage.get_layers(self.name)
            self._layers = [Layer(d["fqn"], d["kind"], tuple(d["weight_shape"]), d["params"], d["macs"])
                            for d in stored]
        return self._layers

    def _example_inputs(self) -> dict[str, Any]:
        """The denoiser's keyword inputs of its first real call (so MACs match the sampler's batch)."""
        captured: dict[str, Any] = {}

        def grab(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if not captured:
                captured.update(kwargs)
                captured["__args__"] = args
                raise _Captured

        handle = self.workload.denoiser.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.workload.generate(self.workload.batch(1, split="calibration"))
        except _Captured:
            pass
        finally:
            handle.remove()
        args = captured.pop("__args__")
        names = ["sample", "timestep"]  # diffusers denoisers take (sample, timestep, ...) positionally
        if "hidden_states" in captured or type(self.workload.denoiser).__name__.endswith("Transformer2DModel"):
            names = ["hidden_states", "timestep"]
        return {**dict(zip(names, args, strict=False)), **captured}

    def activation_ranges(self, progress: Progress = print) -> Any:
        from quant.calibrate import ActivationRanges, calibrate_activations

        cached = self._artifact("activation_ranges")
        if cached is not None:
            return ActivationRanges.from_dict(json.loads(cached))
        progress(f"calibration: {self.spec.calibration_samples} images x {self.spec.num_steps} steps")
        wl = self.workload
        per_step = TimestepGroups.uniform(self.spec.num_steps, self.spec.num_steps)  # serves any grouping
        ranges = calibrate_activations(wl.denoiser, per_step,
                                       wl.calibration_run(wl.batch(self.spec.calibration_samples, "calibration")))
        self._put_json("activation_ranges", ranges.to_dict())
        return ranges

    def sensitivities(self, layers: Sequence[Any], progress: Progress = print) -> list[Any]:
        from quant.scores import Scores
        from sensitivity.base import get_estimator

        out: list[Scores] = []
        for name in self.spec.estimators:
            estimator = get_estimator(name, seed=self.spec.seed)
            sets = {s["metric"] for s in self.storage.list_score_sets(self.name) if s["estimator"] == name}
            if sets:
                out.extend(Scores.from_table(self.storage.get_scores(self.name, name, m)) for m in sorted(sets))
                continue
            progress(f"sensitivity: {name} over {len(layers)} layers x {self.spec.timestep_groups} groups")
            scores = estimator.estimate(self.workload, list(layers), list(self.spec.bits), self.spec.groups)
            self.storage.put_scores(self.name, **scores.to_table())
            out.append(scores)
        return out

    def validate(self, progress: Progress = print, *, n_single: int = 12, n_mixed: int = 12,
                 n_images: int = 4) -> list[dict[str, Any]]:
        """How well each of the study's score sets ranks REAL degradation: `sensitivity.measure` on
        held-out prompts/seeds (single layers and random mixed configs, quantized with the study's
        backend; one measurement serves every estimator), then Spearman/Kendall per metric. Stored
        as the study's latest `validation` artifact (see `validation()`); returned as dicts."""
        from sensitivity import correlate, measure

        layers = self.layers(progress)
        scores = self.sensitivities(layers, progress)
        bits = sorted({b for s in scores for (_, _, b) in s.values})
        progress(f"validation: {n_single} single-layer and {n_mixed} mixed configs x {n_images} held-out images")
        measured = measure(self.workload, [x.fqn for x in layers], bits, self.spec.groups, n_single=n_single,
                           n_mixed=n_mixed, n_images=n_images, seed=self.spec.seed, backend=self.spec.backend)
        results = [correlate(s, measured).to_dict() for s in scores]
        self._put_json("validation", results)
        return results

    def validation(self) -> list[dict[str, Any]] | None:
        """The latest stored validation (see `validate`), or None."""
        stored = self._artifact("validation")
        return None if stored is None else list(json.loads(stored))

    def _artifact(self, kind: str) -> bytes | None:
        """The data of the study's latest artifact of `kind` (the study's cached intermediate results)."""
        stored = self.storage.list_artifacts(self.name, kind=kind)
        return None if not stored else self.storage.get_artifact(max(a.id for a in stored)).data

    def _put_json(self, kind: str, value: Any) -> None:
        self.storage.put_artifact(self.name, kind, f"{kind}.json", data=json.dumps(value).encode(),
                                  media_type="application/json")

    def problem(self, layers: Sequence[Any], scores: Sequence[Any], progress: Progress = print) -> Any:
        """The solvers' problem: the study's layers, groups, budget, candidate bits, and per predicted
        metric the scores of the first estimator (in `spec.estimators` order) that predicts it; the
        others are stored and validated, not summed in (two estimates of one metric would count it twice)."""
        from solvers.problem import Problem

        first: dict[str, Any] = {}
        for s in scores:
            first.setdefault(s.metric, s)
        budget = Budget.parse(list(self.spec.budget))
        latency = self.latency_table(progress) if any(lim.metric == "latency" for lim in budget.limits) else None
        return Problem(list(layers), self.spec.groups, list(first.values()), budget, backend=self.spec.backend,
                       candidates=list(self.spec.bits), latency=latency)

    def latency_table(self, progress: Progress = print) -> Any:
        """Per-layer seconds per denoiser forward at each candidate bit-width on this machine and thread
        count (quant.latency), measured once and cached in the database for every study of the model.
        The study records which machine's table it solved with (see `solved_latency_table`)."""
        import socket

        import torch

        from quant.latency import measure_latency

        machine = f"{socket.gethostname()}/{torch.get_num_threads()}t"
        wanted = {Bits(16, 16), *(Bits.parse(b) for b in self.spec.bits)}
        table = self._stored_latency(machine)
        if self._artifact("latency_machine") is None:
            self._put_json("latency_machine", machine)
        if not table or any(not wanted <= set(per) for per in table.values()):
            progress(f"latency table: {len(self.layers())} layers x {len(wanted)} bit-widths on {machine}")
            inputs = self._example_inputs()
            table = {fqn: dict(per) for fqn, per in measure_latency(
                self.workload.denoiser, lambda: self.workload.denoiser(**inputs), sorted(wanted), self.spec.backend,
                self.activation_ranges(progress)).items()}
            self.storage.put_latency(self.spec.model, self.spec.backend, machine,
                                     {(fqn, b.w, b.a): s for fqn, per in table.items() for b, s in per.items()})
        return table

    def solved_latency_table(self) -> Any:
        """The latency table this study solved with (read from the database, never measured), or None."""
        machine = self._artifact("latency_machine")
        return None if machine is None else self._stored_latency(json.loads(machine)) or None

    def _stored_latency(self, machine: str) -> dict[str, dict[Bits, float]]:
        table: dict[str, dict[Bits, float]] = {}
        for (fqn, w, a), seconds in self.storage.get_latency(self.spec.model, self.spec.backend, machine).items():
            table.setdefault(fqn, {})[Bits(w, a)] = seconds
        return table

    def solver(self, progress: Progress = print) -> Solver:
        """The study's solver, keeping any state of its own in the study's database (it resumes too)."""
        from solvers.base import SearchSettings, solver_for_search

        url = self.storage.url.render_as_string(hide_password=False)
        settings = SearchSettings(self.name, self.spec.trials, self.spec.seed, self.spec.patience, url, QUALITY,
                                  progress)
        return solver_for_search(self.spec.solver, settings)

    def search(self, problem: Problem, ranges: Any, executor: Executor, progress: Progress,
               deadline: float | None) -> bool:
        """Ask, queue, evaluate and tell rounds until the solver is done (True) or `deadline` passes
        (False: proposals not yet measured are asked again when the study resumes)."""
        solver = self.solver(progress)
        self._add_baselines()
        while not solver.done:
            if seconds_left(deadline) == 0:
                return False
            proposals = solver.ask(problem, executor.parallelism)
            ids = self._queue(proposals)
            self.evaluate(ranges, progress, seconds_left(deadline), executor)
            for proposal, cid in zip(proposals, ids, strict=True):
                measurement = self._measurement(cid)
                if measurement is None:  # still queued: the deadline passed during the round
                    return False
                solver.tell(proposal, measurement)
        return True

    def propose(self, layers: Sequence[Any], scores: Sequence[Any], progress: Progress = print) -> None:
        """The baselines and the solver's first proposals, queued and not evaluated (`run` goes on from
        there: the solver asks again for what it was never told)."""
        solver = self.solver(progress)
        self._add_baselines()
        self._queue(solver.ask(self.problem(layers, scores, progress), 1))

    def _queue(self, proposals: Sequence[Proposal]) -> list[int]:
        """Candidate ids of `proposals` (added once: two proposals of one config share a candidate)."""
        return [add_candidates(self.storage, self.name, [p.config.to_dict()], p.origin, fidelity=CHEAP,
                               meta=dict(p.tag))[0][0] for p in proposals]

    def _measurement(self, cid: int) -> Measurement | None:
        """What candidate `cid`'s cheap evaluation measured for the solver (minus QUALITY as its
        degradation), a failure if it has none and never will, None while it is still queued."""
        from storage import CandidateState

        cand = self.storage.get_candidate(cid)
        cheap = next((e for e in self.storage.get_evaluations(cid) if e.fidelity == CHEAP), None)
        if cheap is None and cand.state in (CandidateState.WAITING, CandidateState.RUNNING):
            return None
        if cheap is None or QUALITY not in cheap.metrics:  # FAILED or INVALID, or no quality to rank by
            return Measurement(failure=cand.reason or f"no {QUALITY} measured", reference=cid)
        return Measurement({"degradation": -cheap.metrics[QUALITY]}, reference=cid)

    def _add_baselines(self) -> None:
        uniform = [BitConfig.uniform(self.spec.groups, b).to_dict() for b in self.spec.baselines]
        add_candidates(self.storage, self.name, uniform, UNIFORM, fidelity=CHEAP)

    def promote(self, progress: Progress = print, dry_run: bool = False) -> int:
        """Queue the `full` evaluation of every cheaply evaluated candidate that may enter a front (of
        quality vs weight bits, or vs bit-ops); returns how many (`dry_run`: only counts)."""
        from solvers.pareto import non_dominated
        from storage import CandidateState

        cheap = {c.id for c in self.storage.list_candidates(self.name, states=[CandidateState.COMPLETE])
                 if c.fidelity == CHEAP}
        points = [p for p in self.front_points() if QUALITY in p.metrics]
        fronts = {i for cost in PROMOTION_COSTS for i in non_dominated([[-p.metrics[QUALITY], p.costs[cost]]
                                                                         for p in points])}
        todo = [points[i].candidate_id for i in sorted(fronts) if points[i].candidate_id in cheap]
        if todo and not dry_run:
            progress(f"multi-fidelity: {len(todo)} candidate(s) that may enter the front get the full evaluation "
                     f"({self.spec.full_samples} images: alignment and distribution metrics)")
            for cid in todo:
                self.storage.promote(cid, FULL)
        return len(todo)

    def evaluate(self, ranges: Any, progress: Progress = print, max_seconds: float | None = None,
                 executor: Executor | None = None) -> int:
        """Evaluate candidates until none is WAITING or RUNNING (or `max_seconds` pass) with `executor`
        (default: `local`, in this process); returns how many this call evaluated."""
        from search.executors import LocalExecutor

        executor = executor or LocalExecutor()
        return executor.run(self.name, self.storage, self.evaluator(ranges), progress=progress,
                            max_seconds=max_seconds)

    def evaluator(self, ranges: Any = None) -> StudyEvaluator:
        """This study's evaluator; in this process it reuses the loaded workload and `ranges`. The same
        object for the same `ranges`, so an executor's live workers serve every round of the study."""
        if self._evaluator is None or self._evaluator._ranges is not ranges:
            self._evaluator = StudyEvaluator(self.name, self.spec, self.storage, study=self, ranges=ranges)
        return self._evaluator

    def _reference(self) -> tuple[Any, Any]:
        batch = self.workload.batch(self.spec.eval_samples)
        return batch, self.workload.generate(batch, record_steps=True)

    def measure(self, cand: Any, ranges: Any, reference: Callable[[], tuple[Any, Any]]) -> Outcome:
        """One real quantized run of a candidate at its fidelity: `cheap`, fidelity to the full-precision
        images of `reference()` (batch, generation); `full`, alignment and distribution metrics on
        `full_samples` eval images after those (other seeds). latency_s: CPU seconds per image-step."""
        from quant.apply import VerificationError, quantized
        from quant.backends.base import measurement

        full = cand.fidelity == FULL
        if full:
            batch, ref = self.workload.batch(self.spec.full_samples, offset=self.spec.eval_samples), None
        else:
            batch, ref = reference()
        try:
            config = BitConfig.from_dict(cand.config)
            with quantized(self.workload.denoiser, config, self.spec.backend, ranges) as qm:
                qm.reset_record()
                t0 = time.thread_time()
                test = self.workload.generate(batch, on_step=qm.set_step, record_steps=not full)
                seconds = time.thread_time() - t0
                # how the layers ran during this generation (each layer and group that was called),
                # not only how they were planned to run
                labels = dict(Counter[str](lbl for per in qm.executed_labels().values() for lbl in per.values()))
        except VerificationError as e:
            return Outcome(invalid=f"verification failed: {e}")
        except (ConfigError, ValueError, RuntimeError) as e:  # RuntimeError includes torch's OOM
            return Outcome(failed=f"{type(e).__name__}: {e}")
        try:  # one bad metric (a bug, too few images, a singular covariance) fails this evaluation only
            if full:
                metrics = {**self.workload.alignment(batch, test),
                           **self.workload.distribution(test, offset=self.spec.eval_samples)}
            else:
                metrics = self.workload.quality(ref, test)
        except Exception as e:
            family = "alignment/distribution" if full else "quality"
            return Outcome(failed=f"{family} metric failed: {type(e).__name__}: {e}")
        measured = measurement(self.spec.backend, labels).measured
        return Outcome(metrics=metrics, run_labels=labels, backend=self.spec.backend,
                       latency_s=seconds / (self.spec.num_steps * len(batch.prompts)), measured=measured,
                       duration_s=seconds)

    def evaluation_counts(self) -> dict[str, tuple[int, int]]:
        """(done, queued so far) evaluations per fidelity: done counts stored evaluations and candidates
        that ended FAILED or INVALID at that fidelity; queued adds those WAITING or RUNNING."""
        counts = self.storage.count_by_fidelity(self.name)
        out = {}
        for f in (CHEAP, FULL):
            c = counts.get(f, {})
            done = c.get("evaluations", 0) + c.get("FAILED", 0) + c.get("INVALID", 0)
            out[f] = (done, done + c.get("WAITING", 0) + c.get("RUNNING", 0))
        return out

    def _done(self) -> bool:
        from storage import CandidateState

        counts = self.storage.count_candidates(self.name)
        return not counts.get(CandidateState.WAITING) and not counts.get(CandidateState.RUNNING)

    # ---- queries --------------------------------------------------------------------------------
    def front_points(self) -> list[FrontPoint]:
        """Every evaluated candidate with its costs and the union of its evaluations' metrics (stored
        metrics are finite: NaN never reaches the front)."""
        from quant.cost import costs

        evaluations: dict[int, list[Any]] = {}
        for ev in self.storage.list_evaluations(self.name):
            evaluations.setdefault(ev.candidate_id, []).append(ev)
        if not evaluations:  # nothing to cost: no inventory needed (reads never compute)
            return []
        layers = self.layers()
        latency = self.solved_latency_table()
        points = []
        for cid, evs in evaluations.items():
            c = costs(BitConfig.from_dict(evs[0].config), layers, latency)
            cost = {"wbits": c.avg_weight_bits, "size_mb": c.weight_bytes / 1e6, "bops_g": c.bops / 1e9}
            if c.latency_s is not None:  # predicted from the latency table (the evaluation holds the measured one)
                cost["latency_ms"] = 1e3 * c.latency_s
            points.append(FrontPoint(cid, _origin(evs[0].origin), {k: v for ev in evs for k, v in ev.metrics.items()},
                                     cost, all(ev.measured for ev in evs), evs[0].config,
                                     tuple(ev.fidelity for ev in evs)))
        return points

    def pareto(self, objectives: Sequence[str] = ("psnr_db", "wbits")) -> list[FrontPoint]:
        """Non-dominated points among those measured on every objective (an alignment metric exists only
        for candidates with a `full` evaluation): metrics in MAXIMISED are maximised, the rest minimised.
        `quality` names the study's quality metric (QUALITY)."""
        from solvers.pareto import non_dominated

        objectives = [objective_name(o) for o in objectives]
        every = self.front_points()
        known = {*(k for p in every for k in p.metrics), *(k for p in every for k in p.costs)}
        unknown = [o for o in objectives if o not in known]
        if every and unknown:
            raise ConfigError(f"unknown objective {unknown[0]!r}; valid: {', '.join(sorted(known))}")
        points = [p for p in every if all(o in p.metrics or o in p.costs for o in objectives)]
        rows = [[_minimised(p, o) for o in objectives] for p in points]
        keep = non_dominated(rows) if rows else []
        return sorted((points[i] for i in keep), key=lambda p: _minimised(p, objectives[-1]))


class StudyEvaluator(Evaluator):
    """Real quantized evaluations of one study's candidates. Picklable: a Ray actor receives the study
    name, spec and storage, and `setup()` loads the workload, the stored activation ranges and the
    full-precision reference once, then evaluates many candidates."""

    def __init__(self, name: str, spec: StudySpec, storage: Any, *, study: Study | None = None,
                 ranges: Any = None) -> None:
        self.name, self.spec, self.storage = name, spec, storage
        self._study, self._ranges = study, ranges
        self._reference: tuple[Any, Any] | None = None  # computed at the first cheap evaluation

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec.to_dict(), "storage": self.storage}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], StudySpec.from_dict(state["spec"]), state["storage"])  # type: ignore[misc]

    def setup(self) -> None:
        if self._study is None:
            self._study = Study(self.name, self.spec, self.storage)
        if self._ranges is None:
            self._ranges = self._study.activation_ranges(lambda m: None)  # cached by the coordinator
        _ = self._study.workload  # load the model before the first claim

    def __call__(self, candidate: Any) -> Outcome:
        self.setup()
        assert self._study is not None
        return self._study.measure(candidate, self._ranges, self.reference)

    def reference(self) -> tuple[Any, Any]:
        if self._reference is None:
            assert self._study is not None
            self._reference = self._study._reference()
        return self._reference


class _Captured(Exception):
    """Stops the first denoiser call once its inputs are captured."""


def _origin(origin: Any) -> str:
    return str(getattr(origin, "value", origin))


def objective_name(objective: str) -> str:
    """An objective as the front knows it: `quality` is the quality metric the study ranks by."""
    return QUALITY if objective == "quality" else objective


def seconds_left(deadline: float | None) -> float | None:
    """Seconds left before `deadline` (None: unbounded), never negative."""
    return None if deadline is None else max(0.0, deadline - time.time())


MAXIMISED = ("psnr_db", "sqnr_db", "ssim", "prompt_accuracy", "prompt_probability", "clip_score", "clip_score_real")


def _minimised(point: FrontPoint, objective: str) -> float:
    if objective in point.costs:
        return point.costs[objective]
    value = point.metrics[objective]
    return -value if objective in MAXIMISED else value
