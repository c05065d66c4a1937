"""The Executor contract, the registry of executors by name, and the worker loop they share.

An Executor evaluates a study's WAITING candidates:

- `run(study, storage, evaluator, progress=..., max_seconds=...) -> int` returns once no candidate
  of the study is WAITING or RUNNING, or when `max_seconds` have passed (then no new candidate is
  claimed; the ones being evaluated are finished). It returns how many candidates this call
  evaluated (completed, failed or invalid).
- The database is the single source of truth; an executor only runs work. Workers claim candidates
  from storage themselves (`Storage.claim`: atomic, so no candidate is evaluated twice), extend
  their lease from a background thread while they evaluate, and write results through storage. A
  worker that dies or hangs stops heartbeating; the coordinator's `reclaim_expired` puts its
  candidate back to WAITING (up to `max_attempts`), where another worker picks it up.
- Executors are configured by keyword arguments; `get_executor` rejects unknown names and unknown
  arguments with the list of valid ones. One executor per file; importing `search.executors`
  registers `local` and `ray`.

An `Evaluator` measures one candidate and returns an `Outcome`; it is picklable, so a Ray actor or a
subprocess receives it and calls `setup()` once (load the model, compute the reference) before
evaluating many candidates. Tests inject fake evaluators to exercise faults without a model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quant.errors import ConfigError
from quant.registry import Registry

if TYPE_CHECKING:
    from storage import CandidateInfo, Storage

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


# ---- what one evaluation produces -----------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """A measured candidate, or the reason it is final without a score.

    `failed` (OOM, crash that will repeat, NaN) -> FAILED; `invalid` (the applied model did not match
    the config) -> INVALID; otherwise COMPLETE with `metrics` (a NaN/inf metric still ends FAILED:
    storage refuses to score it)."""

    metrics: Mapping[str, float] = field(default_factory=dict)
    run_labels: Mapping[str, int] = field(default_factory=dict)
    backend: str = ""
    latency_s: float | None = None
    float_latency_s: float | None = None  # the float model's, timed side by side with latency_s
    peak_memory_bytes: int | None = None
    measured: bool | None = None
    duration_s: float | None = None
    failed: str | None = None
    invalid: str | None = None


class Evaluator(ABC):
    """Measures candidates of one study. Picklable; `setup()` runs once per worker process."""

    def setup(self) -> None:  # noqa: B027  (optional hook: most fakes need no setup)
        """Load what every evaluation needs (model, calibration, reference images). Idempotent."""

    @abstractmethod
    def __call__(self, candidate: CandidateInfo) -> Outcome:
        """Evaluate one claimed candidate. Expected failures come back as Outcome(failed=...) or
        Outcome(invalid=...); an exception is a bug or a lost device: the worker gives the candidate
        back (retried up to max_attempts) and re-raises."""


# ---- the executor contract and registry ------------------------------------------------------------
class Executor(ABC):
    """Use as a context manager to keep workers alive across `run` calls (a study that evaluates in
    rounds, like the `optuna` solver's, then loads the model once per worker, not once per round)."""

    name: str = ""

    @property
    def parallelism(self) -> int:
        """How many candidates it evaluates at once (the size of a round worth asking for)."""
        return 1

    @property
    def workers_load_the_model(self) -> bool:
        """Whether its workers load the model themselves, in processes of their own: the coordinator
        then lets its own copy go before they run (on an SD-size model, a copy is GBs)."""
        return False

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:  # noqa: B027  (optional hook: only executors with workers to stop need it)
        """Stop the workers kept alive by the `with` block."""

    @abstractmethod
    def run(self, study: str, storage: Storage, evaluator: Evaluator, *, progress: Progress = _quiet,
            max_seconds: float | None = None) -> int:
        """Evaluate `study`'s candidates until none is WAITING or RUNNING or `max_seconds` pass; returns
        how many this call evaluated (see the module docstring)."""


_EXECUTORS: Registry[Executor] = Registry("executor", "search.executors")
register = _EXECUTORS.register


def executor_names() -> list[str]:
    return _EXECUTORS.names()


def executor_params(name: str) -> list[str]:
    """The keyword arguments executor `name` accepts."""
    return _EXECUTORS.params(name) or []


def get_executor(name: str, **kwargs: Any) -> Executor:
    """The executor registered as `name`, constructed with `kwargs` (both checked)."""
    return _EXECUTORS.create(name, **kwargs)


# ---- threads ---------------------------------------------------------------------------------------
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def pin_threads(n: int) -> None:
    """Pin torch's intra-op and OpenMP threads to `n`. Oversubscribed threads (every worker using
    every core) ran 50x slower on a 2-core machine, so each worker gets its own share. The env vars
    reach OpenMP only if set before it initialises (Ray actors get them in their runtime env too)."""
    if n < 1:
        raise ConfigError(f"threads per worker must be >= 1, got {n}")
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)


@contextlib.contextmanager
def threads_pinned(n: int | None) -> Iterator[None]:
    """`pin_threads(n)` for the duration of a block, then torch's count and the env vars as they were:
    a long-lived process (`bitsearch serve`, a notebook, a test session) keeps its own setting.
    None: leave threads alone."""
    if n is None:
        yield
        return
    import torch

    before, env = torch.get_num_threads(), {var: os.environ.get(var) for var in THREAD_VARS}
    pin_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        for var, value in env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


# ---- leases ------------------------------------------------------------------------------------------
def heartbeat_interval(lease_timeout_s: float) -> float:
    """Four heartbeats per lease timeout: one delayed write (a busy database) does not cost the lease."""
    return max(0.05, lease_timeout_s / 4)


class Heartbeat:
    """A background thread that extends a lease every `interval_s` while the block runs. `lost` turns
    True when storage says the lease was reclaimed (the result will be dropped)."""

    def __init__(self, storage: Storage, candidate_id: int, owner: str, interval_s: float) -> None:
        self.storage, self.candidate_id, self.owner, self.interval_s = storage, candidate_id, owner, interval_s
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{candidate_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not self.storage.heartbeat(self.candidate_id, self.owner):
                    self.lost = True
                    return
            except Exception as e:  # a database hiccup: keep trying until the lease really expires
                log.warning("heartbeat for candidate %s failed: %s", self.candidate_id, e)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ---- the worker loop ----------------------------------------------------------------------------------
def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Claims, evaluates and records candidates of one study until none is WAITING. Used in-process by
    the local executor and inside each Ray actor; the evaluator is set up once, at the first claim."""

    def __init__(self, storage: Storage, study: str, evaluator: Evaluator, *, lease_timeout_s: float = 60.0,
                 max_attempts: int = 3, progress: Progress = _quiet) -> None:
        self.storage, self.study, self.evaluator = storage, study, evaluator
        self.lease_timeout_s, self.max_attempts, self.progress = lease_timeout_s, max_attempts, progress
        self.id = worker_id()
        self._claims = 0

    def run(self, deadline: float | None = None, max_candidates: int | None = None) -> int:
        """Evaluate until nothing is WAITING, `deadline` (time.time()) passes or `max_candidates` are
        done; returns how many were evaluated."""
        done = 0
        while (deadline is None or time.time() < deadline) and (max_candidates is None or done < max_candidates):
            self._claims += 1
            owner = f"{self.id}:{self._claims}"  # unique per claim, as Storage.claim asks
            cand = self.storage.claim(self.study, owner)
            if cand is None:
                break
            self.evaluate(cand, owner)
            done += 1
        return done

    def evaluate(self, cand: CandidateInfo, owner: str) -> None:
        from storage import LeaseLostError

        self.progress(f"evaluate candidate {cand.id} ({getattr(cand.origin, 'value', cand.origin)})")
        with Heartbeat(self.storage, cand.id, owner, heartbeat_interval(self.lease_timeout_s)) as hb:
            try:
                self.evaluator.setup()
                out = self.evaluator(cand)
            except BaseException as e:
                # not an expected failure: give the candidate back (retried up to max_attempts)
                with contextlib.suppress(Exception):  # lease already lost or database gone: expiry handles it
                    self.storage.release(cand.id, owner, f"worker error {type(e).__name__}: {e}",
                                         max_attempts=self.max_attempts)
                raise
        try:
            if out.invalid is not None:
                self.storage.invalid(cand.id, out.invalid, owner=owner)
            elif out.failed is not None:
                self.storage.fail(cand.id, out.failed, owner=owner)
            else:
                from quant.backends.base import measurement  # imports torch: only once a result is in

                # how the run may be reported is quant's rule (run labels, simulating backends), not storage's
                judged = measurement(out.backend, out.run_labels)
                self.storage.complete(cand.id, owner, metrics=out.metrics, backend=out.backend,
                                      machine=socket.gethostname(), run_labels=out.run_labels,
                                      layers_simulated=judged.layers_simulated, measured=judged.flag(out.measured),
                                      latency_s=out.latency_s, float_latency_s=out.float_latency_s,
                                      peak_memory_bytes=out.peak_memory_bytes,
                                      duration_s=out.duration_s)
        except LeaseLostError as e:
            # our lease expired (hb.lost tells whether we noticed in time) and someone else owns the
            # candidate now: their result counts, ours is dropped
            self.progress(f"candidate {cand.id}: result dropped ({'lease lost' if hb.lost else e})")


# ---- the coordinator's side ----------------------------------------------------------------------------
def reclaim_and_count(storage: Storage, study: str, *, lease_timeout_s: float, max_attempts: int,
                      progress: Progress = _quiet) -> tuple[int, int]:
    """Put candidates with expired leases back (or FAIL them at the retry limit); then (WAITING, RUNNING)."""
    from storage import CandidateState

    for r in storage.reclaim_expired(study, lease_timeout_s=lease_timeout_s, max_attempts=max_attempts):
        what = "retry limit reached, FAILED" if r.state == CandidateState.FAILED else "back to WAITING"
        progress(f"candidate {r.candidate_id}: lease of {r.lease_owner} expired on attempt {r.attempts} ({what})")
    counts = storage.count_candidates(study)
    return counts[CandidateState.WAITING], counts[CandidateState.RUNNING]
