"""Property-based fuzzing of the whole HTTP API from its own OpenAPI spec (bounded): no input
may produce a 5xx or an error body that is not OpenAI-shaped."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from gateway.server import guarded_http
from tests.conftest import AppHarness, completion
from tests.fake_upstream import serve_in_thread

ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    harness = AppHarness(Path(tmp_path_factory.mktemp("fuzz")))
    harness.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("ok"))
    )
    harness.upstream.get("/models").mock(
        return_value=httpx.Response(200, json={"object": "list", "data": []})
    )
    # any other path: what an OpenAI-compatible upstream answers to one it does not know
    harness.upstream.route().mock(
        return_value=httpx.Response(
            404,
            json={
                "error": {
                    "message": "no such path",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
        )
    )
    # served as `memgate serve` serves it: the guarded httptools protocol, whose refusal of a
    # malformed or oversized request head is OpenAI-shaped too
    with serve_in_thread(harness.app, http=guarded_http(10.0, 60.0)) as url:
        yield url


def test_api_never_fails_and_errors_are_openai_shaped(served: str) -> None:
    schema = schemathesis.openapi.from_url(served + "/docs/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    seen = 0
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    for operation, mode in itertools.product(operations, modes):

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: Any) -> None:
            nonlocal seen
            seen += 1
            response = case.call(base_url=served, timeout=30)
            where = f"{case.method} {case.formatted_path} {case.query} -> {response.status_code}"
            assert response.status_code < 500, (where, response.text)
            if response.status_code >= 400:
                assert "json" in str(response.headers.get("content-type")), (where, response.text)
                body = response.json()
                assert set(body) == {"error"}, (where, body)
                assert set(body["error"]) == ERROR_KEYS, (where, body)
                assert isinstance(body["error"]["message"], str)

        try:
            check()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE:
                raise
            # an operation with no parameters and no body has no invalid input to make
    assert seen >= 200
