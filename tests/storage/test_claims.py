"""Leases: atomic claims under 8 concurrent processes, heartbeats, expiry, retry limit, final states."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from storage import CandidateState, LeaseLostError, Storage
from tests.storage.conftest import bit_config

SPEC = {"version": 1}
WORKERS = 8
CANDIDATES = 48


def _worker(url: str, index: int, barrier: Any, out: Any) -> None:
    try:
        st = Storage(url, create=False)
        owner = f"worker-{index}:{os.getpid()}"
        claimed = []
        barrier.wait(timeout=60)
        while (c := st.claim("race", owner)) is not None:
            claimed.append((c.id, c.attempts))
            st.heartbeat(c.id, owner)
            st.complete(c.id, owner, metrics={"q": float(c.id)}, backend="int8", machine="m",
                        run_labels={"int8-kernel": 1})
        out.put((owner, claimed, None))
    except BaseException as exc:  # report, so the parent fails with the reason instead of hanging
        out.put((f"worker-{index}", [], repr(exc)))


def test_claim_is_atomic_across_8_processes(storage: Storage) -> None:
    storage.create_study("race", SPEC)
    ids = {cid for cid, _ in storage.add_candidates("race", [bit_config(i) for i in range(CANDIDATES)], "ilp")}
    url = storage.url.render_as_string(hide_password=False)
    storage.close()  # no pooled connection crosses the fork
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    barrier, out = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, i, barrier, out)) for i in range(WORKERS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    errors = [(owner, err) for owner, _, err in results if err]
    assert not errors, errors
    claimed = [cid for _, got, _ in results for cid, _ in got]
    assert len(claimed) == len(set(claimed)), "a candidate was claimed twice"
    assert set(claimed) == ids, "a candidate was lost"
    assert all(attempts == 1 for _, got, _ in results for _, attempts in got)
    # the workers really raced (a barrier released them together), not one after another
    assert sum(1 for _, got, _ in results if got) >= 2
    assert storage.count_candidates("race")[CandidateState.COMPLETE] == CANDIDATES
    by_candidate = {e.candidate_id: e.worker for e in storage.list_evaluations("race")}
    assert by_candidate == {cid: owner for owner, got, _ in results for cid, _ in got}


def test_claim_order_and_empty(storage: Storage) -> None:
    storage.create_study("s", SPEC)
    (low, _), = storage.add_candidates("s", [bit_config(0)], "optuna")
    (high, _), = storage.add_candidates("s", [bit_config(1)], "ilp", priority=5)
    first, second = storage.claim("s", "w"), storage.claim("s", "w")
    assert first is not None and second is not None and (first.id, second.id) == (high, low)
    assert first.state is CandidateState.RUNNING and first.lease_owner == "w" and first.attempts == 1
    assert storage.claim("s", "w") is None


def test_lease_expiry_returns_candidate_to_waiting(storage: Storage) -> None:
    storage.create_study("s", SPEC)
    (cid, _), = storage.add_candidates("s", [bit_config(0)], "ilp")
    t0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert storage.claim("s", "dead", now=t0) is not None
    assert storage.reclaim_expired("s", lease_timeout_s=60, max_attempts=3, now=t0 + timedelta(seconds=30)) == []
    assert storage.heartbeat(cid, "dead", now=t0 + timedelta(seconds=50))
    assert storage.reclaim_expired("s", lease_timeout_s=60, max_attempts=3, now=t0 + timedelta(seconds=100)) == []
    (back,) = storage.reclaim_expired("s", lease_timeout_s=60, max_attempts=3, now=t0 + timedelta(seconds=111))
    assert (back.candidate_id, back.state, back.attempts, back.lease_owner) == (cid, CandidateState.WAITING, 1, "dead")
    c = storage.get_candidate(cid)
    assert c.state is CandidateState.WAITING and c.lease_owner is None and "expired" in (c.reason or "")
    # the dead worker comes back: its lease is gone, its result is refused
    assert not storage.heartbeat(cid, "dead")
    again = storage.claim("s", "alive")
    assert again is not None and again.id == cid and again.attempts == 2
    with pytest.raises(LeaseLostError, match="reclaimed"):
        storage.complete(cid, "dead", metrics={"q": 1.0}, backend="int8", machine="m", run_labels={})
    assert storage.complete(cid, "alive", metrics={"q": 2.0}, backend="int8", machine="m",
                            run_labels={}) is CandidateState.COMPLETE
    assert [e.metrics for e in storage.list_evaluations("s")] == [{"q": 2.0}]
    assert storage.get_candidate(cid).reason is None


def test_retry_limit_marks_failed(storage: Storage) -> None:
    storage.create_study("s", SPEC)
    (cid, _), = storage.add_candidates("s", [bit_config(0)], "ilp")
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    for attempt in (1, 2):
        c = storage.claim("s", f"w{attempt}")
        assert c is not None and c.attempts == attempt
        (r,) = storage.reclaim_expired("s", lease_timeout_s=60, max_attempts=2, now=later)
        assert r.state is (CandidateState.WAITING if attempt == 1 else CandidateState.FAILED)
    c = storage.get_candidate(cid)
    assert c.state is CandidateState.FAILED and c.attempts == 2 and "retry limit" in (c.reason or "")
    assert storage.claim("s", "w3") is None
    # resume after a crash: timeout 0 reclaims every RUNNING candidate at once
    storage.add_candidate("s", bit_config(1), "ilp")
    assert storage.claim("s", "gone") is not None
    assert [r.state for r in storage.reclaim_expired("s", lease_timeout_s=0, max_attempts=3)] == [CandidateState.WAITING]


@pytest.mark.parametrize("bad", [{"metrics": {"fid": math.nan}}, {"metrics": {"q": 1.0}, "latency_s": math.inf}])
def test_non_finite_result_fails_never_completes(storage: Storage, bad: dict[str, Any]) -> None:
    storage.create_study("s", SPEC)
    storage.add_candidate("s", bit_config(0), "ilp")
    c = storage.claim("s", "w")
    assert c is not None
    state = storage.complete(c.id, "w", backend="int8", machine="m", run_labels={"int8-kernel": 1}, **bad)
    assert state is CandidateState.FAILED
    got = storage.get_candidate(c.id)
    assert got.state is CandidateState.FAILED and "non-finite" in (got.reason or "")
    assert storage.list_evaluations("s") == [] and storage.get_evaluations(c.id) == []


def test_fail_invalid_release(storage: Storage) -> None:
    storage.create_study("s", SPEC)
    ids = [cid for cid, _ in storage.add_candidates("s", [bit_config(i) for i in range(4)], "ilp")]
    a = storage.claim("s", "w")
    assert a is not None
    with pytest.raises(LeaseLostError):
        storage.fail(a.id, "OOM", owner="someone-else")
    storage.fail(a.id, "out of memory at batch 1", owner="w")
    b = storage.claim("s", "w")
    assert b is not None
    storage.invalid(b.id, "config asks 40 quantized layers, model has 38", owner="w")
    storage.fail(ids[3], "rejected before running")  # coordinator, from WAITING, no lease
    c = storage.claim("s", "w")
    assert c is not None and c.id == ids[2]
    assert storage.release(c.id, "w", "worker shutting down", max_attempts=2) is CandidateState.WAITING
    c = storage.claim("s", "w")
    assert c is not None and c.attempts == 2
    assert storage.release(c.id, "w", "worker shutting down", max_attempts=2) is CandidateState.FAILED
    final = {x.id: (x.state, x.reason) for x in storage.list_candidates("s")}
    assert final == {
        ids[0]: (CandidateState.FAILED, "out of memory at batch 1"),
        ids[1]: (CandidateState.INVALID, "config asks 40 quantized layers, model has 38"),
        ids[2]: (CandidateState.FAILED, "worker shutting down; retry limit reached"),
        ids[3]: (CandidateState.FAILED, "rejected before running"),
    }
    with pytest.raises(LeaseLostError):  # final states are final
        storage.fail(ids[1], "again")
    assert [x.id for x in storage.list_candidates("s", states=["INVALID"])] == [ids[1]]
