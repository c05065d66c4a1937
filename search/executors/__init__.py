"""Executors run a study's evaluations: `local` (in this process) and `ray` (actors, local or a cluster).

    from search.executors import get_executor
    executor = get_executor("ray", workers=2, threads_per_worker=1)
    executor.run("demo", storage, evaluator)
"""

from search.executors.base import (
    Evaluator,
    Executor,
    Heartbeat,
    Outcome,
    Worker,
    executor_names,
    executor_params,
    get_executor,
    pin_threads,
    register,
    threads_pinned,
)
from search.executors.local import LocalExecutor
from search.executors.ray_executor import RayExecutor

__all__ = ["Evaluator", "Executor", "Heartbeat", "LocalExecutor", "Outcome", "RayExecutor", "Worker",
           "executor_names", "executor_params", "get_executor", "pin_threads", "register",
           "threads_pinned"]
