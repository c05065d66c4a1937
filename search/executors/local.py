"""The `local` executor: one worker in this process (the default for the smallest runs)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from quant.errors import ConfigError
from search.executors.base import (
    Evaluator,
    Executor,
    Progress,
    Worker,
    _quiet,
    reclaim_and_count,
    register,
    threads_pinned,
)

if TYPE_CHECKING:
    from storage import Storage


@register("local")
class LocalExecutor(Executor):
    """Claims and evaluates candidates one at a time in this process, heartbeating from a thread.

    When nothing is WAITING but candidates are RUNNING under other owners (a coordinator killed
    mid-evaluation, or another one still working), it waits, reclaiming leases as they expire,
    until the study has no WAITING or RUNNING candidate left.

    threads_per_worker: torch/OpenMP threads for this process (None: leave as they are).
    lease_timeout_s: a lease without a heartbeat for this long is reclaimed.
    max_attempts: claims per candidate before an expired lease makes it FAILED.
    """

    def __init__(self, threads_per_worker: int | None = None, lease_timeout_s: float = 60.0,
                 max_attempts: int = 3) -> None:
        if lease_timeout_s <= 0 or max_attempts < 1:
            raise ConfigError("lease_timeout_s must be > 0 and max_attempts >= 1")
        self.threads_per_worker, self.lease_timeout_s, self.max_attempts = threads_per_worker, lease_timeout_s, max_attempts

    def run(self, study: str, storage: Storage, evaluator: Evaluator, *, progress: Progress = _quiet,
            max_seconds: float | None = None) -> int:
        with threads_pinned(self.threads_per_worker):
            return self._run(study, storage, evaluator, progress, max_seconds)

    def _run(self, study: str, storage: Storage, evaluator: Evaluator, progress: Progress,
             max_seconds: float | None) -> int:
        deadline = None if max_seconds is None else time.time() + max_seconds
        worker = Worker(storage, study, evaluator, lease_timeout_s=self.lease_timeout_s,
                        max_attempts=self.max_attempts, progress=progress)
        done, waited = 0, False
        while deadline is None or time.time() < deadline:
            waiting, running = reclaim_and_count(storage, study, lease_timeout_s=self.lease_timeout_s,
                                                 max_attempts=self.max_attempts, progress=progress)
            if waiting:
                done += worker.run(deadline)
            elif running:
                if not waited:
                    progress(f"{running} candidate(s) RUNNING elsewhere: waiting for them to finish or for "
                             f"their leases to expire ({self.lease_timeout_s:g} s without a heartbeat)")
                    waited = True
                time.sleep(min(1.0, self.lease_timeout_s / 4))
            else:
                break
        return done
