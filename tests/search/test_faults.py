"""Fault tolerance of evaluations (issue 6): a killed worker, a killed coordinator, NaN metrics, and
the Ray executor with two workers.

Pure lease/storage faults use a fake evaluator (no model); the others run the built-in workload with
tiny settings. The database is the source of truth: every check below reads it.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from search.cli import app
from search.executors import Evaluator, LocalExecutor, Outcome, get_executor
from search.spec import StudySpec
from search.study import Study
from storage import CandidateState, Storage
from tests.workloads.killed_study import cli as _cli
from tests.workloads.killed_study import each_candidate_once as _exactly_once
from tests.workloads.killed_study import launch_and_kill

SPEC = StudySpec(budget=("wbits=4.5",), timestep_groups=2, num_steps=8, trials=3, eval_samples=4,
                 calibration_samples=2, baselines=("W8A8",))
REPO = Path(__file__).resolve().parents[2]


def _quiet(_m: str) -> None:
    pass


class FakeEvaluator(Evaluator):
    """A metric derived from the config, instantly; `nan_for` candidates get NaN."""

    def __init__(self, nan_for: tuple[int, ...] = ()) -> None:
        self.nan_for, self.calls = nan_for, 0

    def __call__(self, candidate: Any) -> Outcome:
        self.calls += 1
        psnr = math.nan if candidate.id in self.nan_for else 20.0 + candidate.config["i"]
        return Outcome(metrics={"psnr_db": psnr}, run_labels={"int8-kernel": 3}, backend="fake-test")


def _fake_study(tmp_path: Path, n: int = 3) -> tuple[str, Storage]:
    url = f"sqlite:///{tmp_path / 'fake.db'}"
    st = Storage(url)
    st.create_study("f", {"version": 1})
    st.add_candidates("f", [{"version": 1, "i": i} for i in range(n)], "import", fidelity="cheap")
    return url, st


# A worker in its own process: claims one candidate, heartbeats, and hangs in its evaluation until killed.
HANGING_WORKER = """
import sys, time
from search.executors import Evaluator, Outcome, Worker
from storage import Storage

class Hang(Evaluator):
    def __call__(self, candidate):
        print("claimed", candidate.id, flush=True)
        time.sleep(120)
        return Outcome(metrics={"psnr_db": 1.0})

Worker(Storage(sys.argv[1], create=False), "f", Hang(), lease_timeout_s=float(sys.argv[2])).run(max_candidates=1)
"""


def test_killed_worker_loses_its_lease_and_the_candidate_is_retried(tmp_path: Path) -> None:
    url, st = _fake_study(tmp_path)
    timeout = 1.0
    proc = subprocess.Popen([sys.executable, "-c", HANGING_WORKER, url, str(timeout)], stdout=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("claimed"), line
        cid = int(line.split()[1])
        time.sleep(2.5 * timeout)
        # alive and heartbeating: its lease survives well past the timeout
        assert st.reclaim_expired("f", lease_timeout_s=timeout, max_attempts=3) == []
        assert st.get_candidate(cid).state == CandidateState.RUNNING
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    fake = FakeEvaluator()
    assert LocalExecutor(lease_timeout_s=timeout).run("f", st, fake) == 3  # waits for the lease, then retries
    again = st.get_candidate(cid)
    assert again.state == CandidateState.COMPLETE and again.attempts == 2
    assert fake.calls == 3
    _exactly_once(st, "f")


def test_worker_error_gives_the_candidate_back_until_the_retry_limit(tmp_path: Path) -> None:
    _, st = _fake_study(tmp_path, n=1)

    class Broken(Evaluator):
        def __call__(self, candidate: Any) -> Outcome:
            raise KeyError("bug")

    for attempt in (1, 2):
        with pytest.raises(KeyError):
            LocalExecutor(max_attempts=2).run("f", st, Broken())
        (cand,) = st.list_candidates("f")
        assert cand.attempts == attempt and "KeyError" in (cand.reason or "")
    assert cand.state == CandidateState.FAILED and "retry limit" in (cand.reason or "")


def test_nan_metric_fails_the_candidate_from_a_fake_evaluator(tmp_path: Path) -> None:
    _, st = _fake_study(tmp_path)
    first = st.list_candidates("f")[0].id
    LocalExecutor().run("f", st, FakeEvaluator(nan_for=(first,)))
    assert st.get_candidate(first).state == CandidateState.FAILED
    assert first not in {e.candidate_id for e in st.list_evaluations("f")}


def test_local_executor_pins_threads_only_while_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a long-lived process (serve, a notebook) keeps its own thread setting after a study ran in it
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen: list[tuple[int, str | None]] = []

    class Recording(FakeEvaluator):
        def __call__(self, candidate: Any) -> Outcome:
            seen.append((torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")))
            return super().__call__(candidate)

    other = 2 if before == 1 else 1
    _, st = _fake_study(tmp_path)
    assert LocalExecutor(threads_per_worker=other).run("f", st, Recording()) == 3
    assert seen == [(other, str(other))] * 3
    assert torch.get_num_threads() == before and "OMP_NUM_THREADS" not in os.environ


def test_executor_registry_and_cli_options_reject_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid executors: local, ray"):
        get_executor("dask")
    with pytest.raises(ValueError, match="valid options: .*lease_timeout_s"):
        get_executor("local", workers=2)
    db = str(tmp_path / "x.db")
    runner = CliRunner()
    for args, msg in [(["--executor", "dask"], "unknown executor 'dask'; valid: local, ray"),
                      (["--executor", "local", "--workers", "2"], "use --executor ray"),
                      (["--executor", "local", "--ray-address", "auto"], "needs --executor ray")]:
        out = runner.invoke(app, ["launch", "--name", "x", "--db", db, *args])
        assert out.exit_code == 2 and msg in out.output, (args, out.output)
    assert not Path(db).exists()  # nothing written


# ---- the built-in workload --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A study with inventory, calibration, sensitivities and candidates stored, nothing evaluated."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("prepared") / "p.db"
    s = Study.create("p", SPEC, str(path))
    s.cache.activation_ranges(_quiet)
    s.propose(_quiet)
    s.storage.close()  # checkpoints the WAL into the file we copy
    yield path
    torch.set_num_threads(threads)  # no thread count leaks into later tests


def _copy(prepared: Path, tmp_path: Path) -> Study:
    path = tmp_path / "s.db"
    shutil.copy(prepared, path)
    return Study.load("p", str(path))


def test_nan_and_inf_metrics_are_failed_and_never_on_the_front(prepared: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    study = _copy(prepared, tmp_path)
    real, poison = study.workload.quality, [math.nan, math.inf, -math.inf]
    poisoned: dict[int, float] = {}  # candidate id -> the value its evaluation returned

    def quality(ref: Any, test: Any) -> dict[str, float]:
        out = real(ref, test)
        if poison:  # the first three candidates evaluated diverged: NaN, +inf (it would top the front), -inf
            out["psnr_db"] = poison.pop(0)
            running = study.storage.list_candidates("p", states=[CandidateState.RUNNING])
            poisoned[running[0].id] = out["psnr_db"]
        return out

    monkeypatch.setattr(study.workload, "quality", quality)
    study.run(progress=_quiet)
    cands = {c.id: c for c in study.storage.list_candidates("p")}
    assert len(cands) >= 4 and len(poisoned) == 3
    for cid, value in poisoned.items():
        assert cands[cid].state == CandidateState.FAILED, (value, cands[cid])
        assert f"non-finite psnr_db = {value}" in (cands[cid].reason or "")
    assert all(c.state == CandidateState.COMPLETE for cid, c in cands.items() if cid not in poisoned)
    assert not set(poisoned) & {p.candidate_id for p in study.front_points()}
    front = study.pareto(("psnr_db", "wbits"))
    assert front and not set(poisoned) & {p.candidate_id for p in front}
    assert all(math.isfinite(p.metrics["psnr_db"]) for p in front)


def test_a_metric_that_raises_fails_that_evaluation_and_the_run_goes_on(prepared: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 (4.3): FCD raised LinAlgError (full_samples=1) outside measure's error handling; the
    run crashed and so did every resume. Now that evaluation is FAILED with the reason, the others go on."""
    import numpy as np

    study = _copy(prepared, tmp_path)

    def distribution(test: Any, offset: int = 0) -> dict[str, float]:
        raise np.linalg.LinAlgError("Eigenvalues did not converge")

    monkeypatch.setattr(study.workload, "distribution", distribution)
    study.run(progress=_quiet)
    cands = study.storage.list_candidates("p")
    promoted = [c for c in cands if c.fidelity == "full"]
    assert promoted and all(c.state == CandidateState.FAILED for c in promoted)
    for c in promoted:
        assert c.reason == "alignment/distribution metric failed: LinAlgError: Eigenvalues did not converge"
    assert all(c.state == CandidateState.COMPLETE for c in cands if c.fidelity == "cheap")
    evals = study.storage.list_evaluations("p")
    assert {e.candidate_id for e in evals} == {c.id for c in cands}  # every cheap evaluation kept
    assert not [e for e in evals if e.fidelity == "full"]  # no failed evaluation stored as a score
    assert study.storage.get_study("p").state.value == "COMPLETE"
    # resume: a new coordinator finds nothing left to do (and does not crash)
    resumed = Study.load("p", str(study.storage.url))
    resumed._workload = study.workload
    resumed.run(progress=_quiet)
    assert [(c.id, c.state, c.reason) for c in resumed.storage.list_candidates("p")] == [
        (c.id, c.state, c.reason) for c in cands]
    # the reason is what a user sees in `bitsearch status`
    out = CliRunner().invoke(app, ["status", "p", "--db", str(study.storage.url)])
    assert out.exit_code == 0, out.output
    assert "LinAlgError" in out.output


def test_the_fake_backend_is_never_recorded_as_measured(prepared: Path, tmp_path: Path) -> None:
    import dataclasses

    stored = _copy(prepared, tmp_path)
    fake = Study("p", dataclasses.replace(stored.spec, backend="fake"), stored.storage)
    assert fake.evaluate(_quiet) >= 4
    evals = fake.storage.list_evaluations("p")
    assert evals and all(e.backend == "fake" and e.run_labels.get("simulated", 0) > 0 for e in evals)
    assert not any(e.measured for e in evals)
    assert all(not p.measured for p in fake.front_points())


def test_killed_coordinator_then_resume_evaluates_each_candidate_once(tmp_path: Path) -> None:
    db = str(tmp_path / "k.db")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    st = launch_and_kill(["--steps", "8", "--timestep-groups", "2", "--trials", "6", "--eval-samples", "4",
                          "--heartbeat-timeout", "1"], db, "k", complete=2, timeout_s=120)
    killed_at = datetime.now(timezone.utc)
    interrupted = {c.id: (c.fidelity, c.lease_owner) for c in st.list_candidates("k", states=[CandidateState.RUNNING])}

    out = subprocess.run(_cli("resume", "k", "--db", db, "--heartbeat-timeout", "1"), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "finished" in out.stdout
    _exactly_once(st, "k")
    # the one being evaluated when the coordinator died ran again, after the kill, by the resumed run (a
    # later promotion re-queues it with its attempts counted afresh for the higher fidelity)
    for cid, (fidelity, killed_owner) in interrupted.items():
        (ev,) = [e for e in st.get_evaluations(cid) if e.fidelity == fidelity]
        assert ev.created_at > killed_at and ev.worker != killed_owner
        cand = st.get_candidate(cid)
        assert cand.attempts == (2 if cand.fidelity == fidelity else 1), (cand.fidelity, cand.attempts)
    assert st.get_study("k").state.value == "COMPLETE"


class Rendezvous(Evaluator):
    """Instant fake measurements, but no evaluation returns until two workers have claimed candidates
    (or `wait_s` pass): a run with one live worker cannot pass for two."""

    def __init__(self, storage: Storage, study: str, wait_s: float = 30.0) -> None:
        self.storage, self.study, self.wait_s = storage, study, wait_s

    def workers(self) -> set[str]:
        running = {c.lease_owner for c in self.storage.list_candidates(self.study, states=[CandidateState.RUNNING])}
        done = {e.worker for e in self.storage.list_evaluations(self.study)}
        return {owner.rsplit(":", 1)[0] for owner in running | done if owner}  # host:pid:worker, not the claim

    def __call__(self, candidate: Any) -> Outcome:
        deadline = time.time() + self.wait_s
        while self.wait_s and len(self.workers()) < 2 and time.time() < deadline:
            time.sleep(0.05)
        self.wait_s = 0.0  # waited once (met or gave up): a lone worker then fails the test quickly
        return Outcome(metrics={"psnr_db": 20.0 + candidate.config["i"]}, run_labels={"int8-kernel": 3},
                       backend="fake-test")


@pytest.mark.slow
def test_ray_executor_runs_evaluations_on_both_workers(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="pip install ray to run the ray executor tests")
    _, st = _fake_study(tmp_path, n=6)
    # a long lease: under load a starved heartbeat must not turn this into a lease-expiry test
    executor = get_executor("ray", workers=2, threads_per_worker=1, num_cpus=2, lease_timeout_s=120)
    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)  # the actors cannot import this test module
    try:
        assert executor.run("f", st, Rendezvous(st, "f")) == 6
    finally:
        ray.cloudpickle.unregister_pickle_by_value(module)
    _exactly_once(st, "f")
    per_worker = Counter(e.worker.rsplit(":", 1)[0] for e in st.list_evaluations("f") if e.worker)
    assert len(per_worker) == 2, per_worker  # two distinct actors (host:pid:id) evaluated
    assert all(str(os.getpid()) not in w.split(":") for w in per_worker)  # in actors, not in this process


class _WorkersElsewhere(LocalExecutor):
    """An executor whose workers load the model in their own processes (as Ray's do); it records what
    the coordinator held when the workers would start, and evaluates nothing."""

    workers_load_the_model = True  # type: ignore[assignment]  (a property on the base)

    def run(self, study: str, storage: Storage, evaluator: Evaluator, **_: object) -> int:
        self.evaluator_model = getattr(evaluator, "workload", "missing")
        return 0


def test_the_coordinator_lets_its_model_go_before_workers_that_load_their_own(prepared: Path,
                                                                             tmp_path: Path) -> None:
    study = _copy(prepared, tmp_path)
    assert study.workload is not None  # loaded, as after the calibration, sensitivity and table stages
    executor = _WorkersElsewhere()
    study.evaluate(_quiet, executor=executor)
    assert executor.evaluator_model is None  # the evaluator sent to the workers carries no model
    assert study._workload is None  # and this process's copy is freed (an SD-size model: GBs)
    assert study.promote(_quiet, dry_run=True) == 0 and study._workload is None  # promotion needs no reload


@pytest.mark.slow
def test_ray_executor_with_two_workers_completes_a_study(prepared: Path, tmp_path: Path) -> None:
    try:
        import ray  # noqa: F401
    except ImportError as e:
        pytest.skip(f"ray is not installed ({e}); pip install ray to run the ray executor test")
    study = _copy(prepared, tmp_path)
    # a long lease: under load a starved heartbeat must not turn this into a lease-expiry test
    executor = get_executor("ray", workers=2, threads_per_worker=1, num_cpus=2, lease_timeout_s=120)
    messages: list[str] = []
    study.run(progress=messages.append, executor=executor)
    _exactly_once(study.storage, "p")
    evals = study.storage.list_evaluations("p")
    assert all(e.measured and e.backend == "int8" for e in evals)
    workers = {e.worker.rsplit(":", 1)[0] for e in evals if e.worker}
    assert 1 <= len(workers) <= 2 and not any(str(os.getpid()) in w.split(":") for w in workers)  # ran in actors
    assert any("ray: 2 worker(s) x 1 thread(s)" in m for m in messages)
