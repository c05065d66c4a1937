"""The HTTP API: auth, validation, limits, and a study launched through it matching the CLI's front."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from search.api import MAX_BODY_BYTES, create_app
from search.study import Study
from search.validation import validate

TOKEN = "t0ken-for-tests-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TINY = {"num_steps": 8, "trials": 2, "eval_samples": 4, "calibration_samples": 2, "timestep_groups": 2,
        "baselines": ["W8A8"]}


@pytest.fixture(scope="module")
def db(tmp_path_factory):  # type: ignore[no-untyped-def]
    return str(tmp_path_factory.mktemp("api") / "api.db")


@pytest.fixture(scope="module")
def roots(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("models")
    (root / "pipe").mkdir()
    return root


@pytest.fixture(scope="module")
def client(db, roots):  # type: ignore[no-untyped-def]
    return TestClient(create_app(db, TOKEN, model_roots=[str(roots)]))


def test_health_and_openapi(client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/studies", "/studies/{name}/pareto", "/studies/{name}/candidates/{candidate_id}/export"} <= set(paths)


def test_writes_and_reads_need_the_token(client, db) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        assert client.post("/studies", json={"name": "x", **TINY}, headers=headers).status_code == 401
        assert client.get("/studies", headers=headers).status_code == 401
    assert client.get("/studies", headers=AUTH).status_code == 200
    open_client = TestClient(create_app(db, TOKEN, open_reads=True))
    assert open_client.get("/studies").status_code == 200
    assert open_client.post("/studies", json={"name": "x", **TINY}).status_code == 401
    no_token = TestClient(create_app(db, None, open_reads=True))  # read-only server: every write refused
    r = no_token.post("/studies", json={"name": "x", **TINY}, headers=AUTH)
    assert r.status_code == 401 and "writes are disabled" in r.json()["detail"]


@pytest.mark.parametrize("body, field", [
    ({"name": "x", **TINY, "timestep_groups": 0}, "timestep_groups"),
    ({"name": "x", **TINY, "budget": ["wbits=abc"]}, "budget"),
    ({"name": "x", **TINY, "budget": "wbits=4.5"}, "budget"),
    ({"name": "x", **TINY, "bits": ["W3Q9"]}, "bits"),
    ({"name": "x", **TINY, "estimators": ["magic"]}, "estimators"),
    ({"name": "../x", **TINY}, "name"),
    ({"name": "x", **TINY, "num_steps": "many"}, "num_steps"),
    ({"name": "x", **TINY, "unknown": 1}, "unknown"),
])
def test_bad_bodies_are_422_with_field_errors(client, body, field) -> None:
    r = client.post("/studies", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert any(field in err["loc"] for err in r.json()["detail"]), r.json()


def test_timestep_groups_above_steps_is_422(client) -> None:
    r = client.post("/studies", json={"name": "x", **TINY, "timestep_groups": 9}, headers=AUTH)
    assert r.status_code == 422 and "timestep_groups" in r.text


def test_model_paths_are_restricted_to_roots(client, roots, tmp_path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for model in (str(outside), str(roots / ".." / "elsewhere"), "/etc"):
        r = client.post("/studies", json={"name": "x", **TINY, "model": model}, headers=AUTH)
        assert r.status_code == 403 and "outside the configured model roots" in r.json()["detail"], r.text
    r = TestClient(create_app(str(tmp_path / "o.db"), TOKEN)).post(
        "/studies", json={"name": "x", **TINY, "model": str(roots / "pipe")}, headers=AUTH)
    assert r.status_code == 403 and "only 'builtin'" in r.json()["detail"]
    # inside a root, but not a pipeline: refused by the loader, and nothing is written
    r = client.post("/studies", json={"name": "x", **TINY, "model": str(roots / "pipe")}, headers=AUTH)
    assert r.status_code == 422, r.text
    assert client.get("/studies/x", headers=AUTH).status_code == 404


def test_oversized_body_is_413(client) -> None:
    body = {"name": "x", **TINY, "model": "a" * (MAX_BODY_BYTES + 1)}
    assert client.post("/studies", json=body, headers=AUTH).status_code == 413
    r = client.post("/studies", content=iter([b"{", b" " * MAX_BODY_BYTES, b"}"]),
                    headers={**AUTH, "Content-Type": "application/json"})  # streamed, no Content-Length
    assert r.status_code == 413


def test_unknown_study_is_404(client) -> None:
    assert client.get("/studies/nope", headers=AUTH).status_code == 404
    assert client.get("/studies/nope/pareto", headers=AUTH).status_code == 404


def test_study_launched_through_the_api_matches_the_cli_front(client, db) -> None:
    import torch

    torch.set_num_threads(1)
    r = client.post("/studies", json={"name": "api", **TINY}, headers=AUTH)
    assert r.status_code == 202, r.text
    assert client.post("/studies", json={"name": "api", **TINY}, headers=AUTH).status_code == 409
    deadline = time.monotonic() + 120
    while True:
        info = client.get("/studies/api", headers=AUTH).json()
        if info["state"] in ("COMPLETE", "FAILED") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert info["state"] == "COMPLETE", info
    assert info["total"] == info["done"] == info["candidates"]["COMPLETE"] > 0
    assert info["spec"]["num_steps"] == 8
    cheap_done, cheap_queued = info["evaluations"]["cheap"]
    assert cheap_done == cheap_queued == info["total"] and info["evaluations"]["full"][0] >= 1
    assert info["validation"] is None  # none run yet

    front = client.get("/studies/api/pareto", params={"objectives": "psnr_db,wbits"}, headers=AUTH).json()
    expected = Study.load("api", db).pareto(("psnr_db", "wbits"))
    assert front and [p["candidate_id"] for p in front] == [p.candidate_id for p in expected]
    bad = client.get("/studies/api/pareto", params={"objectives": "psnr_db,nope"}, headers=AUTH)
    assert bad.status_code == 422 and "unknown metric or cost" in bad.text

    cands = client.get("/studies/api/candidates", params={"state": "COMPLETE", "origin": "uniform"},
                       headers=AUTH).json()
    assert len(cands) == 1 and cands[0]["origin"] == "uniform"
    assert client.get("/studies/api/candidates", params={"state": "DONE"}, headers=AUTH).status_code == 422

    cid = front[0]["candidate_id"]
    for fmt in ("json", "yaml", "mixdq", "torchao", "modelopt", "step-policy"):
        r = client.get(f"/studies/api/candidates/{cid}/export", params={"format": fmt, "group": 0}, headers=AUTH)
        assert r.status_code == 200 and r.text, (fmt, r.text)
    assert client.get(f"/studies/api/candidates/{cid}/export", params={"format": "pickle"},
                      headers=AUTH).status_code == 422

    stored = validate(Study.load("api", db), lambda m: None, n_single=3, n_mixed=3, n_images=1)
    assert client.get("/studies/api", headers=AUTH).json()["validation"] == stored
    page = client.get("/studies/api/page", headers=AUTH).text
    assert 'id="validation"' in page and "gradient (quality)" in page
    accuracy = {p.candidate_id: p.metrics.get("prompt_accuracy") for p in expected}
    assert any(f"<td>{a:.3f}</td>" in page for a in accuracy.values() if a is not None)
    assert client.get("/studies/api/candidates/999999/export", headers=AUTH).status_code == 404


@pytest.mark.slow
def test_api_studies_run_on_the_servers_executor(tmp_path) -> None:
    import os

    pytest.importorskip("ray", reason="the ray executor needs Ray")
    from search.executors import get_executor

    db = str(tmp_path / "ray.db")
    made: list[object] = []

    def ray_executor() -> object:
        made.append(get_executor("ray", workers=2, threads_per_worker=1, num_cpus=2, lease_timeout_s=10))
        return made[-1]

    api = TestClient(create_app(db, TOKEN, executor=ray_executor))  # type: ignore[arg-type]
    assert api.post("/studies", json={"name": "r", **TINY}, headers=AUTH).status_code == 202
    deadline = time.monotonic() + 240
    while (info := api.get("/studies/r", headers=AUTH).json())["state"] not in ("COMPLETE", "FAILED"):
        assert time.monotonic() < deadline, info
        time.sleep(0.5)
    assert info["state"] == "COMPLETE" and len(made) == 1
    workers = {e.worker.rsplit(":", 1)[0] for e in Study.load("r", db).storage.list_evaluations("r") if e.worker}
    assert workers and not any(str(os.getpid()) in w.split(":") for w in workers)  # evaluated in Ray actors


def test_empty_option_lists_are_valid_but_empty_bits_are_not() -> None:
    from pydantic import ValidationError

    from search.api.models import StudyCreate

    body = StudyCreate(name="x", workload_options=[], estimator_options=[], baselines=[])
    assert body.workload_options == [] and body.estimator_options == []
    with pytest.raises(ValidationError, match="bits"):
        StudyCreate(name="x", bits=[])
