"""The `optuna` solver driving a study: measured multi-objective search, seeded by the ILP, in rounds.

Each round asks Optuna for as many trials as the executor evaluates at once; each trial's knobs
become a config through the ILP inside it (solvers/optuna_search.py), queued as a candidate; the
executor evaluates the round for real; each trial is told its measured quality (minus `psnr_db` of
the `cheap` fidelity) and its cost (the budget's first metric). The ILP's own budget sweep is
enqueued as the first trials (candidates with origin `ilp`; the others have origin `optuna`).

The Optuna study lives in the study's own database, with Optuna's RDBStorage and Optuna's own tables,
named `bitsearch/<study name>`: it resumes with the study, and Optuna's tools open it, e.g.

    optuna-dashboard sqlite:///bitsearch.db

Trial and candidate point at each other: the trial's user attribute `candidate_id`, the candidate's
meta `optuna_trial`. Two trials that propose the same config share one candidate (one evaluation).
After a coordinator crash, trials still RUNNING are told when their candidate's evaluation lands; a
trial that crashed before its candidate was queued is told FAIL (nothing was evaluated for it).

The search ends after `spec.trials` finished trials, or when `spec.patience` trials in a row did not
improve the measured front by more than FRONT_TOLERANCE_DB (the study's `patience`).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

from quant.config import BitConfig
from search.study import CHEAP, QUALITY, Progress, Study, seconds_left
from solvers.optuna_search import SEED_CONFIG, OptunaSolver
from solvers.pareto import trailing_stale
from solvers.problem import InfeasibleBudget, Problem

if TYPE_CHECKING:
    import optuna

    from search.executors.base import Executor

FRONT_TOLERANCE_DB = 0.05  # a front gain below this much quality (dB) is noise, not progress
CANDIDATE_ATTR = "candidate_id"


def optuna_study_name(study: str) -> str:
    return f"bitsearch/{study}"


class OptunaRounds:
    def __init__(self, study: Study, problem: Problem) -> None:
        self.study, self.problem = study, problem
        spec = study.spec
        url = study.storage.url.render_as_string(hide_password=False)
        seeds = max(1, min(5, spec.trials // 3))
        # Few trials: 4 block offsets (not 8) and TPE modelling from the first trial after the seeds.
        # Chosen on bench/search.py (24 trials, builtin): see bench/results/search-ray-cpu-1thread.txt.
        self.solver = OptunaSolver(sampler="tpe", objectives=("degradation", "cost"), storage=url,
                                   study_name=optuna_study_name(study.name), seed=spec.seed, seed_points=seeds,
                                   max_blocks=4, startup_trials=seeds + 1)

    def run(self, ranges: Any, executor: Executor, progress: Progress, deadline: float | None) -> bool:
        """Ask, evaluate and tell rounds until the search is over (True) or `deadline` passes (False)."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        spec = self.study.spec
        ostudy = self.solver.open(self.problem)
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and only labels the dashboard's axes
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ostudy.set_metric_names([f"-{QUALITY}", self.problem.budget.limits[0].metric])
        while True:
            self._tell_finished(ostudy)
            trials = ostudy.get_trials(deepcopy=False)
            finished = sum(t.state.is_finished() for t in trials)
            stale = trailing_stale([tuple(t.values) for t in sorted(trials, key=lambda t: t.number)
                                    if t.state == optuna.trial.TrialState.COMPLETE], (FRONT_TOLERANCE_DB, 0.0))
            if finished >= spec.trials:
                progress(f"optuna: {finished} trials finished")
                return True
            if spec.patience and stale >= spec.patience:
                progress(f"optuna: the front did not improve in the last {stale} trials; stopping "
                         f"after {finished} of {spec.trials}")
                return True
            if seconds_left(deadline) == 0:
                return False
            running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
            asked = max(0, min(executor.parallelism, spec.trials - finished) - running)
            for _ in range(asked):
                self._ask(ostudy, progress)
            progress(f"optuna: round of {asked + running} trial(s), {finished}/{spec.trials} finished")
            self.study.evaluate(ranges, progress, seconds_left(deadline), executor)

    def _ask(self, ostudy: optuna.Study, progress: Progress) -> None:
        import optuna

        trial = ostudy.ask()
        try:
            config = self.solver.suggest(self.problem, trial)
        except InfeasibleBudget as e:
            progress(f"optuna: trial {trial.number} has no config within budget ({e})")
            ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        origin = "ilp" if SEED_CONFIG in trial.user_attrs else "optuna"
        cid, _created = self.study.storage.add_candidate(self.study.name, config.to_dict(), origin, fidelity=CHEAP,
                                                         meta={"optuna_trial": trial.number})
        trial.set_user_attr(CANDIDATE_ATTR, cid)

    def _tell_finished(self, ostudy: optuna.Study) -> None:
        """Tell every RUNNING trial whose candidate's cheap evaluation is in (or that can never get one)."""
        import optuna

        from storage import CandidateState

        storage = self.study.storage
        for t in ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            cid = t.user_attrs.get(CANDIDATE_ATTR)
            if cid is None:  # the coordinator stopped between ask and queueing its candidate
                ostudy.tell(t.number, state=optuna.trial.TrialState.FAIL)
                continue
            cand = storage.get_candidate(cid)
            cheap = next((e for e in storage.get_evaluations(cid) if e.fidelity == CHEAP), None)
            if cheap is None and cand.state in (CandidateState.WAITING, CandidateState.RUNNING):
                continue  # not evaluated yet
            values = (self.solver.objective_values(self.problem, BitConfig.from_dict(cand.config),
                                                   {"degradation": -cheap.metrics[QUALITY]})
                      if cheap is not None and QUALITY in cheap.metrics else (math.nan,))
            if all(math.isfinite(v) for v in values):
                ostudy.tell(t.number, list(values))
            else:  # FAILED or INVALID, or no quality to rank by
                ostudy.tell(t.number, state=optuna.trial.TrialState.FAIL)
