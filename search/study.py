"""A Study: calibrate -> sensitivities -> solver proposals -> real quantized evaluations -> Pareto front.

Everything a study computes goes through `storage.Storage` (the single source of truth), so a
study resumes where it stopped: the inventory, activation ranges, scores and target tables are
cached in the database (`search.cache`), candidates are added idempotently by content hash, and
evaluations claim candidates atomically with a lease, so no candidate is evaluated twice or lost.

Proposals come from the study's solver, a proposer (solvers.base): the study asks it for as many
configs as its executor evaluates at once, queues them, evaluates them (`search.evaluation`) and
tells the solver each one's measured quality, until the solver is done. Candidates that may enter
the front then get the full evaluation (`search.front.promotable`).

    study = Study.create("demo", StudySpec(model="builtin", budget="wbits=4.5"))
    study.run()
    for point in study.pareto(): ...
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from quant.config import ConfigError
from quant.layers import Layer
from quant.scores import Scores
from search.cache import StudyCache
from search.evaluation import CHEAP, FULL, StudyEvaluator, evaluation_counts
from search.executors.base import Executor
from search.front import DEFAULT_OBJECTIVES, FrontPoint, measured_points, pareto, promotable
from search.origins import add_candidates
from search.spec import StudySpec, check_budget
from solvers.base import Measurement, Proposal, Solver
from solvers.problem import Problem
from storage import CandidateState, Storage, StudyState
from workloads.base import Workload
from workloads.metrics import QUALITY

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


class Study:
    def __init__(self, name: str, spec: StudySpec, storage: Storage, workload: Workload | None = None) -> None:
        self.name, self.spec, self.storage = name, spec, storage
        self._workload = workload
        self.cache = StudyCache(name, spec, storage, lambda: self.workload)
        self._evaluator: StudyEvaluator | None = None
        self._full_families: set[str] | None = None

    @classmethod
    def create(cls, name: str, spec: StudySpec, db: str | None = None) -> Study:
        """A new study. The model is loaded, its layers listed and the budget checked against them
        first, so a bad model or an infeasible budget writes nothing to the database."""
        from quant.layers import inventory
        from workloads.base import check_samples, denoiser_inputs

        # each metric's minimum images (FCD: 2), before the model loads: a count the metrics cannot use
        # would otherwise fail every full evaluation of the study
        check_samples(spec.model, eval_samples=spec.eval_samples, full_samples=spec.full_samples,
                      calibration_samples=spec.calibration_samples)
        workload = spec.load_workload()
        check_float_format(workload, spec.backend)
        layers = inventory(workload.denoiser, denoiser_inputs(workload))
        check_budget(spec, layers)
        study = cls(name, spec, Storage(db), workload)
        study.storage.create_study(name, spec.to_dict())
        study.cache.put_layers(layers)
        return study

    @classmethod
    def load(cls, name: str, db: str | None = None, *, readonly: bool = False) -> Study:
        """An existing study (a missing or foreign database raises DatabaseOpenError; nothing is
        created). `readonly` for callers that only read: the database then cannot be altered."""
        storage = Storage(db, create=False, readonly=readonly)
        return cls(name, StudySpec.from_dict(storage.get_study(name).spec), storage)

    def change_estimators(self, estimators: Sequence[str], options: Sequence[str] | None = None) -> list[str]:
        """Switch the study to `estimators` (and `options`; None keeps the stored ones), validated as a new
        spec and stored with the study. Nothing is recalibrated: the inventory, activation ranges and
        target tables in the cache serve any estimator, and `run` scores with those not yet scored.
        Returns the estimators whose stored scores are kept as they are (their options may differ)."""
        from dataclasses import replace

        spec = replace(self.spec, estimators=tuple(estimators),
                       estimator_options=self.spec.estimator_options if options is None else tuple(options))
        self.storage.set_study_spec(self.name, spec.to_dict())
        self.spec = spec
        self.cache = StudyCache(self.name, spec, self.storage, lambda: self.workload)
        self._evaluator = None  # it holds the old spec
        scored = {s["estimator"] for s in self.storage.list_score_sets(self.name)}
        return [e for e in spec.estimators if e in scored]

    @property
    def workload(self) -> Workload:
        if self._workload is None:
            self._workload = self.spec.load_workload()
        return self._workload

    def layers(self, progress: Progress = print) -> list[Layer]:
        return self.cache.layers(progress)

    # ---- the pipeline -------------------------------------------------------------------------
    def run(self, progress: Progress = print, max_seconds: float | None = None,
            executor: Executor | None = None) -> None:
        """Run (or resume) every stage; each stage skips work already in the database. Evaluations run
        on `executor` (default: `local`); `max_seconds` bounds them (the study stays RUNNING, resumable)."""
        from search.executors import LocalExecutor

        deadline = None if max_seconds is None else time.time() + max_seconds
        executor = executor or LocalExecutor()
        self.storage.set_study_state(self.name, StudyState.RUNNING)
        layers = self.layers(progress)
        self.cache.activation_ranges(progress)
        problem = self.problem(layers, self.cache.scores(layers, progress), progress)
        with executor:  # workers stay up across rounds and fidelities
            searched = self.search(problem, executor, progress, deadline)
            self.evaluate(progress, seconds_left(deadline), executor)
            while self.promote(progress) and seconds_left(deadline) != 0:
                self.evaluate(progress, seconds_left(deadline), executor)
        done = searched and self._settled() and not self.promote(_quiet, dry_run=True)
        if done:  # the page's FP-vs-quantized grid is made here and stored: reads never run the model
            from search.samples import make_samples

            make_samples(self, progress)
        self.storage.set_study_state(self.name, StudyState.COMPLETE if done else StudyState.RUNNING)

    def problem(self, layers: Sequence[Layer], scores: Sequence[Scores], progress: Progress = print) -> Problem:
        """The solvers' problem: the study's layers, groups, budget, candidate bits, and per predicted
        metric the scores of the first estimator (in `spec.estimators` order) that predicts it; the
        others are stored and validated, not summed in (two estimates of one metric would count it twice)."""
        first: dict[str, Scores] = {}
        for s in scores:
            first.setdefault(s.metric, s)
        return Problem(list(layers), self.spec.groups, list(first.values()), self.spec.budget,
                       backend=self.spec.backend, candidates=list(self.spec.bits), tables=self.cache.tables(progress))

    def solver(self, progress: Progress = print) -> Solver:
        """The study's solver, keeping any state of its own in the study's database (it resumes too)."""
        from solvers.base import SearchSettings, solver_for_search

        url = self.storage.url.render_as_string(hide_password=False)
        return solver_for_search(self.spec.solver, SearchSettings(self.name, self.spec.trials, self.spec.seed,
                                                                  self.spec.patience, url, QUALITY, progress))

    def search(self, problem: Problem, executor: Executor, progress: Progress, deadline: float | None) -> bool:
        """Ask, queue, evaluate and tell rounds until the solver is done (True) or `deadline` passes
        (False: proposals not yet measured are asked again when the study resumes)."""
        solver = self.solver(progress)
        self._add_baselines()
        while not solver.done:
            if seconds_left(deadline) == 0:
                return False
            t0 = time.perf_counter()
            proposals = solver.ask(problem, executor.parallelism)
            progress(f"{self.spec.solver}: {len(proposals)} proposal(s) in {time.perf_counter() - t0:.1f} s")
            ids = self._queue(proposals)
            self.evaluate(progress, seconds_left(deadline), executor)
            for proposal, cid in zip(proposals, ids, strict=True):
                measurement = self._measurement(cid)
                if measurement is None:  # still queued: the deadline passed during the round
                    return False
                solver.tell(proposal, measurement)
        return True

    def propose(self, progress: Progress = print) -> None:
        """The baselines and the solver's first proposals, queued and not evaluated (`run` goes on from
        there: the solver asks again for what it was never told)."""
        layers = self.layers(progress)
        self._add_baselines()
        self._queue(self.solver(progress).ask(self.problem(layers, self.cache.scores(layers, progress), progress), 1))

    def _queue(self, proposals: Sequence[Proposal]) -> list[int]:
        """Candidate ids of `proposals` (added once: two proposals of one config share a candidate)."""
        return [add_candidates(self.storage, self.name, [p.config.to_dict()], p.origin, fidelity=CHEAP,
                               meta=dict(p.tag))[0][0] for p in proposals]

    def _measurement(self, cid: int) -> Measurement | None:
        """What candidate `cid`'s cheap evaluation measured for the solver (minus QUALITY as its
        degradation), a failure if it has none and never will, None while it is still queued."""
        cand = self.storage.get_candidate(cid)
        cheap = next((e for e in self.storage.get_evaluations(cid) if e.fidelity == CHEAP), None)
        if cheap is None and cand.state in (CandidateState.WAITING, CandidateState.RUNNING):
            return None
        if cheap is None or QUALITY not in cheap.metrics:  # FAILED or INVALID, or no quality to rank by
            return Measurement(failure=cand.reason or f"no {QUALITY} measured", reference=cid)
        return Measurement({"degradation": -cheap.metrics[QUALITY]}, reference=cid)

    def _add_baselines(self) -> None:
        from search.baselines import baseline_configs, baseline_origin

        for name in self.spec.baselines:
            configs = baseline_configs([name], self.spec.bits, self.spec.groups, self.layers())
            add_candidates(self.storage, self.name, [c.to_dict() for c in configs], baseline_origin(name),
                           fidelity=CHEAP)

    def full_metric_families(self) -> set[str]:
        """The workload's alignment and distribution metric families (kept: the model may be let go
        while workers evaluate)."""
        if self._full_families is None:
            self._full_families = set(self.workload.full_metric_families())
        return self._full_families

    def promote(self, progress: Progress = print, dry_run: bool = False) -> int:
        """Queue the `full` evaluation of every cheaply evaluated candidate that may enter a front;
        returns how many (`dry_run`: only counts)."""
        families = self.full_metric_families()
        if not families:  # a full evaluation would generate images and store no metric
            if not dry_run:
                progress(f"full evaluation skipped: workload {self.spec.model} reports no alignment or distribution "
                         "metrics (the cheap evaluation's fidelity metrics are all it measures)")
            return 0
        cheap = {c.id for c in self.storage.list_candidates(self.name, states=[CandidateState.COMPLETE])
                 if c.fidelity == CHEAP}
        todo = [cid for cid in promotable(self.front_points()) if cid in cheap]
        if todo and not dry_run:
            progress(f"multi-fidelity: {len(todo)} candidate(s) that may enter the front get the full evaluation "
                     f"({self.spec.full_samples} images: {' and '.join(sorted(families))} metrics)")
            for cid in todo:
                self.storage.promote(cid, FULL)
        return len(todo)

    def evaluate(self, progress: Progress = print, max_seconds: float | None = None,
                 executor: Executor | None = None) -> int:
        """Evaluate candidates until none is WAITING or RUNNING (or `max_seconds` pass) with `executor`
        (default: `local`, in this process); returns how many this call evaluated."""
        from search.executors import LocalExecutor

        executor = executor or LocalExecutor()
        if executor.workers_load_the_model:
            self.full_metric_families()  # what promotion needs of the model, before the model goes
            self._let_model_go()
        if self._evaluator is None:
            workload = None if executor.workers_load_the_model else self.workload
            self._evaluator = StudyEvaluator(self.name, self.spec, self.storage, workload=workload,
                                             ranges=self.cache.activation_ranges(progress))
        return executor.run(self.name, self.storage, self._evaluator, progress=progress, max_seconds=max_seconds)

    def _let_model_go(self) -> None:
        """Free this process's copy of the model (loaded again if a later stage needs it)."""
        import gc

        if self._workload is not None:
            self._workload = None
            gc.collect()  # pipelines hold reference cycles

    def evaluation_counts(self) -> dict[str, tuple[int, int]]:
        return evaluation_counts(self.storage, self.name)

    def _settled(self) -> bool:
        counts = self.storage.count_candidates(self.name)
        return not counts.get(CandidateState.WAITING) and not counts.get(CandidateState.RUNNING)

    # ---- queries --------------------------------------------------------------------------------
    def front_points(self) -> list[FrontPoint]:
        """Every evaluated candidate with its costs and metrics (no evaluation: no inventory needed)."""
        evaluations = self.storage.list_evaluations(self.name)
        if not evaluations:
            return []
        return measured_points(evaluations, self.layers(), self.cache.solved_tables())

    def pareto(self, objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> list[FrontPoint]:
        return pareto(self.front_points(), objectives)


def check_float_format(workload: Workload, backend: str) -> None:
    """A backend that measures (not simulates) times the model as loaded for its latency table, in
    float32 or bfloat16 (`quant.targets.loaded_format`): refuse another dtype before any stage runs, not
    at the table after calibration and sensitivity."""
    from quant.backends.base import get_backend
    from quant.targets import loaded_format

    if get_backend(backend).simulates:
        return
    try:
        loaded_format(workload.denoiser)
    except ValueError as e:
        raise ConfigError(f"the {backend} backend's {e} (--dtype float32 or bfloat16)") from None


def seconds_left(deadline: float | None) -> float | None:
    """Seconds left before `deadline` (None: unbounded), never negative."""
    return None if deadline is None else max(0.0, deadline - time.time())
