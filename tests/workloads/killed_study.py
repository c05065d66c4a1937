"""A whole study from the CLI with a crash in the middle, for any `--model`: `bitsearch launch` in its own
process, SIGKILLed once it has completed a candidate and has more to do, then pareto (of the partial
study) -> resume -> pareto -> export -> validate; the database must show every candidate evaluated
exactly once at each fidelity it reached. Helpers for test files, not a test module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from typer.testing import CliRunner

from search.cli import app
from storage import CandidateState, Storage, StorageError

REPO = Path(__file__).resolve().parents[2]
# Small enough for a tiny model to run in seconds, big enough that a kill can land mid-study.
TINY_STUDY = ("--estimators", "mse", "--timestep-groups", "2", "--steps", "4", "--trials", "2", "--eval-samples", "2",
              "--calibration-samples", "2", "--full-samples", "2", "--baselines", "W8A8")


def cli(*args: str) -> list[str]:
    """The command line of `bitsearch ARGS` run from this checkout's interpreter."""
    return [sys.executable, "-m", "search.cli", *args]


def each_candidate_once(st: Storage, study: str) -> None:
    """Every candidate COMPLETE with exactly one evaluation at each fidelity it reached (cheap, then
    full if promoted): none lost, none evaluated twice."""
    cands = st.list_candidates(study)
    assert cands and all(c.state == CandidateState.COMPLETE for c in cands), [(c.id, c.state, c.reason) for c in cands]
    per = Counter((e.candidate_id, e.fidelity) for e in st.list_evaluations(study))
    reached = {"cheap": ("cheap",), "full": ("cheap", "full")}
    assert per == {(c.id, f): 1 for c in cands for f in reached[c.fidelity]}


def launch_and_kill(args: list[str], db: str, study: str, complete: int = 1, timeout_s: float = 180) -> Storage:
    """`bitsearch launch ARGS --db DB` in a subprocess, SIGKILLed as soon as `complete` candidates of
    `study` are COMPLETE; asserts it was killed mid-study (work left). Returns the study's storage."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = subprocess.Popen(cli("launch", "--name", study, *args, "--db", db), cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    st = None
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline and launch.poll() is None:
            if st is None and Path(db).exists():
                try:
                    st = Storage(db, create=False)
                    st.get_study(study)
                except StorageError:  # the schema or the study is not written yet
                    st = None
            if st is not None and st.count_candidates(study)[CandidateState.COMPLETE] >= complete:
                break
            time.sleep(0.05)
        assert launch.poll() is None, f"launch ended before it could be killed: {launch.stderr.read()}"  # type: ignore[union-attr]
    finally:
        launch.send_signal(signal.SIGKILL)
        launch.wait()
    assert st is not None
    counts = st.count_candidates(study)
    assert counts[CandidateState.COMPLETE] >= complete, counts
    assert counts[CandidateState.WAITING] + counts[CandidateState.RUNNING] >= 1, counts
    return st


def killed_study_runs_to_the_end(model: str, tmp_path: Path, *options: str, budget: str = "memory=0.6x",
                                 objectives: str | None = None) -> list[dict[str, object]]:
    """The whole CLI flow on `model` (module docstring); returns the final `pareto --format json` rows
    (of `objectives` when given)."""
    db, name = str(tmp_path / "study.db"), "s"
    st = launch_and_kill(["--model", model, "--budget", budget, *TINY_STUDY, *options,
                          "--heartbeat-timeout", "1"], db, name)
    threads = torch.get_num_threads()  # the in-process commands set torch's thread count
    runner = CliRunner()
    try:
        partial = runner.invoke(app, ["pareto", name, "--db", db, "--format", "json"])
        assert partial.exit_code == 0, partial.output
        resumed = runner.invoke(app, ["resume", name, "--db", db, "--heartbeat-timeout", "1"])
        assert resumed.exit_code == 0 and "finished" in resumed.output, resumed.output
        each_candidate_once(st, name)
        shown = ["--objectives", objectives] if objectives else []
        front = runner.invoke(app, ["pareto", name, "--db", db, "--format", "json", *shown])
        assert front.exit_code == 0 and json.loads(front.output), front.output
        exported = runner.invoke(app, ["export", name, "--within-budget", "--db", db, "-o", str(tmp_path / "b.json")])
        assert exported.exit_code == 0 and json.loads((tmp_path / "b.json").read_text()), exported.output
        validated = runner.invoke(app, ["validate", name, "--db", db, "--single", "3", "--mixed", "3", "--images", "1"])
        assert validated.exit_code == 0 and "mse" in validated.output, validated.output
    finally:
        torch.set_num_threads(threads)
    rows: list[dict[str, object]] = json.loads(front.output)
    return rows
