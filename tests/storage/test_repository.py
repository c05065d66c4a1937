"""Round trips of every table through the storage API, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import math
from datetime import timezone
from typing import Any

import pytest

from quant.config import BitConfig, Bits, TimestepGroups
from quant.layers import Layer
from quant.scores import Scores
from storage import (
    CandidateState,
    DuplicateStudyError,
    Storage,
    StudyNotFoundError,
    StudyState,
    config_hash,
)
from tests.storage.conftest import bit_config

SPEC = {"version": 1, "model": "builtin", "budgets": {"wbits": 4.5}, "timestep_groups": 3}


def test_study_round_trip(storage: Storage) -> None:
    info = storage.create_study("s1", SPEC)
    assert info.name == "s1" and info.spec == SPEC and info.spec_version == 1 and info.state is StudyState.CREATED
    assert info.created_at.tzinfo is not None
    with pytest.raises(DuplicateStudyError, match="bitsearch resume s1"):
        storage.create_study("s1", SPEC)
    assert storage.create_study("s1", {"version": 1}, load_if_exists=True).spec == SPEC
    storage.set_study_state("s1", "RUNNING")
    again = storage.get_study("s1")
    assert again.state is StudyState.RUNNING and again.updated_at >= info.updated_at
    assert [s.name for s in storage.list_studies()] == ["s1"]
    with pytest.raises(StudyNotFoundError, match=r"'nope'.*studies there: s1"):
        storage.get_study("nope")
    with pytest.raises(ValueError, match="version"):
        storage.create_study("s2", {"model": "builtin"})
    with pytest.raises(ValueError, match="finite"):
        storage.create_study("s2", {"version": 1, "x": float("nan")})


def test_layers_round_trip(storage: Storage) -> None:
    storage.create_study("s", SPEC)
    layers = [Layer("conv_in", "conv", (64, 4, 3, 3), 2304, 10**10), Layer("blocks.0.attn1.to_q", "linear", (128, 128), 16384, 99)]
    assert storage.add_layers("s", layers) == 2
    extra = dataclasses.asdict(Layer("conv_out", "conv", (4, 64, 3, 3), 2304, 5))
    assert storage.add_layers("s", [dataclasses.asdict(layers[0]), extra]) == 1  # known FQN skipped
    back = [Layer(**{**d, "weight_shape": tuple(d["weight_shape"])}) for d in storage.get_layers("s")]
    assert back == [*layers, Layer(**extra)]


def test_scores_round_trip(storage: Storage) -> None:
    storage.create_study("s", SPEC)
    groups = TimestepGroups.uniform(20, 3)
    values = {("a.b", g, Bits.parse(b)): 0.1 * g + i for g in range(3) for i, b in enumerate(("W4A8", "W8A8"))}
    stderr = {k: 0.01 for k in list(values)[:2]}
    scores = Scores("gradient", "quality", groups, values, stderr)
    assert storage.get_scores("s", "gradient", "quality") is None
    storage.put_scores("s", **scores.to_table(), params={"prompts": 8, "seed": 0})
    stored = storage.get_scores("s", "gradient", "quality")
    assert stored is not None and stored["values"][("a.b", 2, 4, 8)] == pytest.approx(0.2)  # plain numbers
    assert Scores.from_table(stored) == scores
    # replacing a set keeps one set per (estimator, metric)
    storage.put_scores("s", **Scores("gradient", "quality", groups, {("a.b", 0, Bits(4, 8)): 2.0}).to_table())
    sets = storage.list_score_sets("s")
    assert [(x["estimator"], x["metric"], x["count"], x["params"]) for x in sets] == [("gradient", "quality", 1, {})]


def test_scores_are_rows_of_plain_numbers_storage_checks_only_as_numbers(storage: Storage) -> None:
    # no codec of ours: any estimator and metric name, any bits, groups as opaque JSON
    storage.create_study("s", SPEC)
    rows: dict[str, Any] = {"estimator": "toy", "metric": "any-metric", "timestep_groups": {"opaque": [1, 2]}}
    storage.put_scores("s", **rows, values={("x", 0, 3, 5): 1.5}, stderr={("x", 0, 3, 5): 0.5})
    assert storage.get_scores("s", "toy", "any-metric") == {**rows, "values": {("x", 0, 3, 5): 1.5},
                                                             "stderr": {("x", 0, 3, 5): 0.5}}
    with pytest.raises(ValueError, match="must be finite"):
        storage.put_scores("s", **rows, values={("x", 0, 3, 5): math.nan})
    with pytest.raises(ValueError, match="has no score"):
        storage.put_scores("s", **rows, values={("x", 0, 3, 5): 1.0}, stderr={("y", 0, 3, 5): 0.1})


def test_candidate_add_is_idempotent(storage: Storage) -> None:
    storage.create_study("s", SPEC)
    cfg = bit_config(0)
    cid, created = storage.add_candidate("s", cfg, "ilp", meta={"predicted": {"wbits": 4.4}})
    assert created
    reordered = dict(reversed(list(cfg.items())))
    assert storage.add_candidate("s", reordered, "optuna") == (cid, False)
    added = storage.add_candidates("s", [cfg, bit_config(1), bit_config(1)], "greedy")
    new = added[1][0]  # PostgreSQL sequences skip ids on conflicts: ids are not consecutive
    assert added == [(cid, False), (new, True), (new, False)]
    cands = storage.list_candidates("s")
    assert len(cands) == 2
    c = cands[0]
    assert c.config == cfg and BitConfig.from_dict(c.config).to_dict() == cfg
    assert c.config_hash == config_hash(cfg) and c.origin == "ilp" and c.state is CandidateState.WAITING
    assert c.meta == {"predicted": {"wbits": 4.4}} and c.attempts == 0 and c.lease_owner is None
    assert storage.find_candidate("s", reordered) == c
    assert [x.id for x in storage.list_candidates("s", origins=["greedy"])] == [new]
    # the same config in another study is another candidate
    storage.create_study("t", SPEC)
    assert storage.add_candidate("t", cfg, "import")[1]
    with pytest.raises(ValueError, match="BitConfig.to_dict"):
        storage.add_candidate("s", {"rules": {}}, "ilp")
    # origins are free text (search checks them against the solver registry): a new solver needs no migration
    assert storage.add_candidate("s", bit_config(2), "a-solver-registered-later")[1]
    assert [c.origin for c in storage.list_candidates("s", origins=["a-solver-registered-later"])] == [
        "a-solver-registered-later"]
    for bad in ("", "x" * 65, "two\nlines"):
        with pytest.raises(ValueError, match="origin"):
            storage.add_candidate("s", bit_config(3), bad)


def test_evaluation_round_trip(storage: Storage) -> None:
    storage.create_study("s", SPEC)
    (a, _), (b, _) = storage.add_candidates("s", [bit_config(0), bit_config(1)], "ilp")
    ca = storage.claim("s", "w1")
    cb = storage.claim("s", "w2")
    assert ca is not None and cb is not None and {ca.id, cb.id} == {a, b}
    assert ca.heartbeat_at is not None and ca.heartbeat_at.tzinfo == timezone.utc
    labels = {"int8-kernel": 10, "weight-only-kernel": 2}
    state = storage.complete(ca.id, "w1", metrics={"fid_proxy": 0.12, "clip": 31.0}, backend="int8",
                             machine="host1", run_labels=labels, measured=True, latency_s=0.5,
                             peak_memory_bytes=2**33, duration_s=12.5)
    assert state is CandidateState.COMPLETE
    storage.complete(cb.id, "w2", metrics={"fid_proxy": 0.2}, backend="fake", machine="host1",
                     run_labels={"int8-kernel": 8, "simulated": 4}, layers_simulated=4, latency_s=0.4)
    with pytest.raises(ValueError, match="simulated"):
        storage.complete(cb.id, "w2", metrics={}, backend="fake", machine="h", run_labels={"simulated": 1},
                         layers_simulated=1, measured=True)
    evs = storage.list_evaluations("s")
    assert [e.candidate_id for e in evs] == [ca.id, cb.id]
    e = evs[0]
    assert e.metrics == {"fid_proxy": 0.12, "clip": 31.0} and e.latency_s == 0.5 and e.peak_memory_bytes == 2**33
    assert e.run_labels == labels and (e.layers_real, e.layers_simulated) == (12, 0) and e.measured
    assert (e.backend, e.machine, e.worker, e.duration_s) == ("int8", "host1", "w1", 12.5)
    assert e.config == ca.config and e.fidelity == "full"
    sim = evs[1]
    assert (sim.layers_real, sim.layers_simulated, sim.measured) == (8, 4, False)
    assert [x.candidate_id for x in storage.list_evaluations("s", measured_only=True)] == [ca.id]
    assert storage.get_evaluations(cb.id) == [sim]
    assert storage.count_candidates("s")[CandidateState.COMPLETE] == 2


@pytest.mark.parametrize(("labels", "simulated", "why"), [
    ({}, 0, "no run labels"),
    ({"int8-kernel": 3, "simulated": 1}, 1, "1 layers ran simulated"),
])
def test_measured_contradicting_the_counts_is_refused(storage: Storage, labels: dict[str, int], simulated: int,
                                                       why: str) -> None:
    # the generic half of the measured rule, in storage's own terms; which labels and backends simulate
    # is quant's rule (tests/quant/test_measurement.py)
    storage.create_study("s", SPEC)
    storage.add_candidates("s", [bit_config(0), bit_config(1)], "ilp")
    c = storage.claim("s", "w")
    assert c is not None
    with pytest.raises(ValueError, match=f"{why}.*cannot be reported as measured"):
        storage.complete(c.id, "w", metrics={"q": 1.0}, backend="int8", machine="m", run_labels=labels,
                         layers_simulated=simulated, measured=True)
    with pytest.raises(ValueError, match="not a count"):
        storage.complete(c.id, "w", metrics={"q": 1.0}, backend="int8", machine="m", run_labels=labels,
                         layers_simulated=sum(labels.values()) + 1)
    assert storage.get_candidate(c.id).state is CandidateState.RUNNING and storage.list_evaluations("s") == []
    # left out, the same run is recorded as estimated, not measured
    assert storage.complete(c.id, "w", metrics={"q": 1.0}, backend="int8", machine="m", run_labels=labels,
                            layers_simulated=simulated) is CandidateState.COMPLETE
    real = storage.claim("s", "w2")
    assert real is not None
    storage.complete(real.id, "w2", metrics={"q": 2.0}, backend="int8", machine="m", run_labels={"int8-kernel": 4},
                     measured=True)
    assert {e.candidate_id: e.measured for e in storage.list_evaluations("s")} == {c.id: False, real.id: True}


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_infinite_metric_fails_the_candidate(storage: Storage, value: float) -> None:
    storage.create_study("s", SPEC)
    storage.add_candidate("s", bit_config(0), "ilp")
    c = storage.claim("s", "w")
    assert c is not None
    state = storage.complete(c.id, "w", metrics={"psnr_db": 20.0, "fcd": value}, backend="int8", machine="m",
                             run_labels={"int8-kernel": 1})
    assert state is CandidateState.FAILED
    got = storage.get_candidate(c.id)
    assert got.state is CandidateState.FAILED and f"non-finite fcd = {value}" in (got.reason or "")
    assert storage.list_evaluations("s") == []


def test_promote_to_higher_fidelity(storage: Storage) -> None:
    storage.create_study("s", SPEC)
    storage.add_candidate("s", bit_config(0), "ilp", fidelity="cheap")
    c = storage.claim("s", "w")
    assert c is not None and c.fidelity == "cheap"
    storage.complete(c.id, "w", metrics={"mse": 1.0}, backend="int8", machine="m", run_labels={"int8-kernel": 1})
    storage.promote(c.id, "full", priority=10)
    assert storage.count_by_fidelity("s") == {"cheap": {"evaluations": 1}, "full": {"WAITING": 1}}
    again = storage.claim("s", "w")
    assert again is not None and again.id == c.id and again.fidelity == "full" and again.attempts == 1
    storage.complete(c.id, "w", metrics={"fid": 3.0}, backend="int8", machine="m", run_labels={"int8-kernel": 1})
    assert {e.fidelity: e.metrics for e in storage.get_evaluations(c.id)} == {"cheap": {"mse": 1.0}, "full": {"fid": 3.0}}
    assert [e.candidate_id for e in storage.list_evaluations("s", fidelity="full")] == [c.id]
    assert storage.count_by_fidelity("s") == {"cheap": {"evaluations": 1}, "full": {"COMPLETE": 1, "evaluations": 1}}


def test_artifacts_round_trip(storage: Storage) -> None:
    storage.create_study("s", SPEC)
    (cid, _), = storage.add_candidates("s", [bit_config(0)], "ilp")
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    a = storage.put_artifact("s", "sample_grid", "grid.png", data=png, media_type="image/png", candidate_id=cid)
    b = storage.put_artifact("s", "pareto_plot", "pareto.png", path="/tmp/out/pareto.png", media_type="image/png")
    got = storage.get_artifact(a)
    assert got.data == png and got.size == len(png) and got.candidate_id == cid and got.media_type == "image/png"
    listed = storage.list_artifacts("s")
    assert [x.id for x in listed] == [a, b] and all(x.data is None for x in listed)
    assert storage.get_artifact(b).path == "/tmp/out/pareto.png"
    assert [x.id for x in storage.list_artifacts("s", kind="sample_grid", candidate_id=cid)] == [a]
    with pytest.raises(ValueError, match="exactly one"):
        storage.put_artifact("s", "x", "y")


def test_delete_study(storage: Storage) -> None:
    storage.create_study("s", SPEC)
    storage.add_layers("s", [{"fqn": "a", "kind": "linear", "weight_shape": [2, 2], "params": 4, "macs": 4}])
    storage.add_candidate("s", bit_config(0), "ilp")
    c = storage.claim("s", "w")
    assert c is not None
    storage.complete(c.id, "w", metrics={"q": 1.0}, backend="int8", machine="m", run_labels={})
    storage.put_artifact("s", "k", "n", data=b"x", candidate_id=c.id)
    storage.delete_study("s")
    assert storage.list_studies() == []
