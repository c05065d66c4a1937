"""Schemathesis fuzzes the served OpenAPI schema in-process (ASGI transport, no network, a temporary
SQLite database): no request may get a server error or a status code (or body) the schema does not
document (the routes declare 401, 403, 404, 409, 413 and 422). Bounded to well under a minute on
2 cores: a few dozen valid and a few dozen invalid cases per operation, no deadline per case (a
valid create loads the model). Figures (2 cores): ~950 cases in ~25 s, plus ~10 s to start the app.

The app runs with `create_app(run_studies=False)`, its documented switch for this: a create that
passes validation is recorded (model loaded, layers listed, budget checked) but no study runs in
the background, so a fuzzed body cannot start minutes of real quantized evaluations."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (in the dev extras)")
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis import checks as sc  # noqa: E402

TOKEN = "t0ken-for-the-fuzzer-01"
MAX_EXAMPLES = 50  # per operation and mode (valid inputs, invalid inputs)
CHECKS = [sc.not_a_server_error, sc.status_code_conformance, sc.content_type_conformance,
          sc.response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from search.api import create_app

    root = tmp_path_factory.mktemp("fuzz-models")
    (root / "not-a-pipeline").mkdir()
    app = create_app(str(Path(tmp_path_factory.mktemp("fuzz")) / "fuzz.db"), TOKEN, model_roots=[str(root)],
                     run_studies=False)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_the_api_answers_every_fuzzed_request_as_documented(api_schema: Any) -> None:
    from hypothesis import given

    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    cases, t0 = 0, time.monotonic()
    for operation, mode in itertools.product(operations, GenerationMode):
        t1, before = time.monotonic(), cases
        # a create that passes validation loads the model (~0.5 s): fewer of those
        n = MAX_EXAMPLES // 2 if operation.label == "POST /studies" else MAX_EXAMPLES

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def fuzz(case: Any) -> None:
            nonlocal cases
            cases += 1
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)

        try:
            fuzz()
        except Unsatisfiable:  # nothing to make invalid (GET /health has no input)
            assert mode == GenerationMode.NEGATIVE
        print(f"{operation.label} ({mode.value}): {cases - before} cases in {time.monotonic() - t1:.1f} s")
    print(f"schemathesis: {cases} cases over {len(operations)} operations in {time.monotonic() - t0:.1f} s, "
          "no finding")


def test_the_documented_error_responses_are_in_the_schema(api_schema: Any) -> None:
    paths = api_schema.raw_schema["paths"]
    assert set(paths["/studies"]["post"]["responses"]) >= {"202", "401", "403", "409", "413", "422"}
    assert set(paths["/studies/{name}/resume"]["post"]["responses"]) >= {"202", "401", "403", "404", "409", "422"}
    assert set(paths["/studies/{name}/samples.png"]["get"]["responses"]) >= {"200", "401", "404"}
