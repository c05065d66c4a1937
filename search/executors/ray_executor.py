"""The `ray` executor: N long-lived Ray actors, each loading the workload once and evaluating many
candidates. `ray.init()` starts a local Ray by default; `address=` joins a cluster (use a PostgreSQL
database then: every worker must reach it).

Ray only runs work; the database is the source of truth. Actors claim candidates from storage
themselves, heartbeat while they evaluate, and write results through storage. The coordinator (this
process) reclaims expired leases, replaces actors that die, and stops when the study has no WAITING
or RUNNING candidate left or the wall-clock budget is spent.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from quant.errors import ConfigError
from search.executors.base import (
    THREAD_VARS,
    Evaluator,
    Executor,
    Progress,
    Worker,
    _quiet,
    pin_threads,
    reclaim_and_count,
    register,
)

if TYPE_CHECKING:
    from storage import Storage



class _EvalActor:
    """The body of one Ray actor (wrapped with ray.remote at run time, so importing this module
    does not import ray)."""

    def __init__(self, storage: Storage, study: str, evaluator: Evaluator, threads: int, lease_timeout_s: float,
                 max_attempts: int) -> None:
        pin_threads(threads)  # the env vars already came with the runtime env; torch needs telling too
        self.worker = Worker(storage, study, evaluator, lease_timeout_s=lease_timeout_s, max_attempts=max_attempts)

    def run(self, seconds_left: float | None) -> int:
        # the deadline is taken on this machine's clock: clocks of cluster nodes may disagree
        deadline = None if seconds_left is None else time.time() + seconds_left
        # load the model before claiming: a lease is not held (nor an attempt spent) while loading
        self.worker.evaluator.setup()
        return self.worker.run(deadline)

    def info(self) -> dict[str, Any]:
        import os

        import torch

        return {"pid": os.getpid(), "torch_threads": torch.get_num_threads(),
                "omp": os.environ.get("OMP_NUM_THREADS"), "worker": self.worker.id}


class _StartProbe:
    """An actor that only imports what an evaluator runs (`start_seconds`)."""

    def __init__(self) -> None:
        import diffusers  # noqa: F401  (the diffusers workload's evaluators load a pipeline)

        import search.evaluation  # noqa: F401

    def ready(self) -> bool:
        return True


def start_seconds(workers: int, threads_per_worker: int = 1) -> float:
    """Wall seconds for a local Ray to start and `workers` actors to come up, each importing what an
    evaluator runs (torch, diffusers, this package): what a study's Ray run spends before its workers
    load the model. Starts and stops a Ray of its own, unless this process has one (then the actors only)."""
    ray = _ray()
    t0 = time.perf_counter()
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        env = _runtime_env(threads_per_worker)
        # no CPUs reserved: every probe comes up at once, as the workers do where the CPUs suffice
        probes = [ray.remote(_StartProbe).options(num_cpus=0, runtime_env=env).remote() for _ in range(workers)]
        ray.get([p.ready.remote() for p in probes])
        seconds = time.perf_counter() - t0
        for p in probes:
            ray.kill(p)
    finally:
        if started:
            ray.shutdown()
    return seconds


def _runtime_env(threads: int) -> dict[str, dict[str, str]]:
    """An actor's runtime env: its thread variables set before it imports torch."""
    return {"env_vars": {var: str(threads) for var in THREAD_VARS}}


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise RuntimeError("the ray executor needs Ray: pip install 'ray>=2.40'") from e
    return ray


@register("ray")
class RayExecutor(Executor):
    """workers: number of actors (each loads the model once).
    threads_per_worker: torch/OpenMP threads per actor, and the CPUs each actor reserves.
    address: a Ray cluster to join (None: start a local Ray in this process).
    num_cpus: CPUs of the local Ray (None: all of this machine's).
    lease_timeout_s: a lease without a heartbeat for this long is reclaimed.
    max_attempts: claims per candidate before an expired lease makes it FAILED.
    max_restarts: dead actors replaced before giving up (None: 3 per worker).
    """

    def __init__(self, workers: int = 1, threads_per_worker: int = 1, address: str | None = None,
                 num_cpus: int | None = None, lease_timeout_s: float = 60.0, max_attempts: int = 3,
                 max_restarts: int | None = None) -> None:
        if workers < 1 or threads_per_worker < 1:
            raise ConfigError("workers and threads_per_worker must be >= 1")
        if lease_timeout_s <= 0 or max_attempts < 1:
            raise ConfigError("lease_timeout_s must be > 0 and max_attempts >= 1")
        self.workers, self.threads_per_worker, self.address, self.num_cpus = workers, threads_per_worker, address, num_cpus
        self.lease_timeout_s, self.max_attempts = lease_timeout_s, max_attempts
        self.max_restarts = 3 * workers if max_restarts is None else max_restarts
        self.actors: dict[int, Any] = {}  # the live actor handles (tests kill one to exercise restarts)
        self._session = False  # inside `with`: actors (and a Ray we started) outlive each run()
        self._started_ray = False
        self._bound: tuple[str, int] | None = None  # (study, id(evaluator)) the live actors serve

    @property
    def parallelism(self) -> int:
        return self.workers

    @property
    def workers_load_the_model(self) -> bool:
        return True

    def __enter__(self) -> RayExecutor:
        self._session = True
        return self

    def close(self) -> None:
        self._session = False
        self._stop()

    def _stop(self) -> None:
        if self.actors:
            ray = _ray()
            for actor in self.actors.values():
                ray.kill(actor)
            self.actors.clear()
        self._bound = None
        if self._started_ray:
            _ray().shutdown()
            self._started_ray = False

    def run(self, study: str, storage: Storage, evaluator: Evaluator, *, progress: Progress = _quiet,
            max_seconds: float | None = None) -> int:
        ray = _ray()
        if not ray.is_initialized():
            if self.address is not None and storage.url.get_backend_name() == "sqlite":
                progress("warning: workers on other machines cannot reach a SQLite file; use PostgreSQL")
            ray.init(address=self.address, num_cpus=self.num_cpus if self.address is None else None,
                     include_dashboard=False, log_to_driver=False, logging_level="WARNING")
            self._started_ray = True
        if self._bound != (study, id(evaluator)):  # actors serve one study's evaluator
            for actor in self.actors.values():
                ray.kill(actor)
            self.actors.clear()
            self._bound = (study, id(evaluator))
        try:
            return self._coordinate(ray, study, storage, evaluator, progress, max_seconds)
        finally:
            if not self._session:
                self._stop()

    def _coordinate(self, ray: Any, study: str, storage: Storage, evaluator: Evaluator, progress: Progress,
                    max_seconds: float | None) -> int:
        from ray.exceptions import RayActorError, RayTaskError

        start = time.time()
        deadline = None if max_seconds is None else start + max_seconds
        cpus = ray.cluster_resources().get("CPU", 0)
        if self.workers * self.threads_per_worker > cpus:
            progress(f"warning: {self.workers} workers x {self.threads_per_worker} threads need more than the "
                     f"{cpus:g} CPUs Ray has; some workers will wait for a CPU")
        env = _runtime_env(self.threads_per_worker)
        remote_cls = ray.remote(_EvalActor).options(num_cpus=self.threads_per_worker, runtime_env=env)
        runs: dict[Any, int] = {}  # in-flight actor.run() -> worker index

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.time())

        def spawn(i: int) -> None:
            self.actors[i] = remote_cls.remote(storage, study, evaluator, self.threads_per_worker,
                                               self.lease_timeout_s, self.max_attempts)

        def submit(i: int) -> None:
            runs[self.actors[i].run.remote(left())] = i

        if not self.actors:
            for i in range(self.workers):
                spawn(i)
            progress(f"ray: {self.workers} worker(s) x {self.threads_per_worker} thread(s)")
        done, restarts, last = 0, 0, None
        poll = min(1.0, self.lease_timeout_s / 4)
        while True:
            waiting, running = reclaim_and_count(storage, study, lease_timeout_s=self.lease_timeout_s,
                                                 max_attempts=self.max_attempts, progress=progress)
            if (waiting, running) != last:
                progress(f"ray: {waiting} waiting, {running} running, {done} evaluated by this run")
                last = (waiting, running)
            over = deadline is not None and time.time() >= deadline
            if not waiting and not running:
                # nothing is left to claim; an actor that finished its last candidate may not have
                # returned yet: collect what it evaluated, else this run's count comes out short
                done += self._collect(ray, runs)
                break
            if over and not runs:
                break
            if over and time.time() > deadline + self.lease_timeout_s:  # type: ignore[operator]
                progress("ray: workers did not stop after the budget; their candidates will be reclaimed")
                break
            if waiting and not over:
                for i in set(self.actors) - set(runs.values()):
                    submit(i)
            if not runs:
                time.sleep(poll)  # candidates RUNNING elsewhere: wait for them or their leases
                continue
            ready, _ = ray.wait(list(runs), num_returns=1, timeout=poll)
            for ref in ready:
                i = runs.pop(ref)
                try:
                    done += ray.get(ref)
                except (RayActorError, RayTaskError) as e:
                    # the actor died (its candidate comes back when the lease expires) or the evaluator
                    # raised (the worker gave its candidate back): replace the actor, within limits
                    restarts += 1
                    cause = type(e).__name__ if isinstance(e, RayActorError) else str(e).splitlines()[0]
                    if restarts > self.max_restarts:
                        raise RuntimeError(f"ray workers failed {restarts} times; last: {cause}") from e
                    progress(f"ray: worker {i} failed ({cause}); starting a new one ({restarts}/{self.max_restarts})")
                    ray.kill(self.actors[i])
                    spawn(i)
        return done

    def _collect(self, ray: Any, runs: dict[Any, int]) -> int:
        """Evaluations reported by the actors' outstanding runs (each returns once it finds nothing to
        claim); a run that failed or does not return within a lease timeout counts nothing."""
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        done = 0
        for ref in list(runs):
            with contextlib.suppress(GetTimeoutError, RayActorError, RayTaskError):
                done += ray.get(ref, timeout=self.lease_timeout_s)
        runs.clear()
        return done
