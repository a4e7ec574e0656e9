"""Memory API input checking and error bodies, on fakes."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient

from tests.unit.test_chat import assert_openai_error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"nope": 1}, "nope"),
        ({"memories": [{"content": "x", "bogus": 2}]}, "memories[0].bogus"),
        ({"memories": [{"content": 1}]}, "memories[0].content"),
        ({"memories": [{"content": " "}]}, "memories[0].content"),
        ({"memories": [{"content": "x", "metadata": {"a": [1]}}]}, "memories[0].metadata"),
        ({"memories": [{"content": "x", "metadata": {"$a": 1}}]}, "memories[0].metadata"),
        ({"memories": [{"content": "x", "created_at": "soon"}]}, "memories[0].created_at"),
        ({"memories": []}, "memories"),
    ],
)
def test_add_names_the_bad_parameter(client: TestClient[Any], body: Any, param: str) -> None:
    error = assert_openai_error(client.post("/v1/memory/memories", json=body), 400)
    assert error["param"] == param
    assert error["code"] == "invalid_value"


@pytest.mark.parametrize(
    ("body", "param"),
    [({"query": "   "}, "query"), ({"query": "x", "k": 101}, "k"), ({"k": 3}, "query")],
)
def test_search_names_the_bad_parameter(client: TestClient[Any], body: Any, param: str) -> None:
    error = assert_openai_error(client.post("/v1/memory/search", json=body), 400)
    assert error["param"] == param


def test_unknown_ids_are_404(client: TestClient[Any]) -> None:
    error = assert_openai_error(client.get("/v1/memory/memories/mem_nope"), 404)
    assert error["type"] == "not_found_error"
    assert_openai_error(client.delete("/v1/memory/memories/mem_nope"), 404)


def test_created_at_offsets_are_normalised_to_utc(client: TestClient[Any]) -> None:
    body = {"memories": [{"content": "x", "created_at": "2024-05-01T10:00:00+02:00"}]}
    (mid,) = client.post("/v1/memory/memories?namespace=t", json=body).json()["ids"]
    got = client.get(f"/v1/memory/memories/{mid}?namespace=t").json()
    assert got["created_at"] == "2024-05-01T08:00:00.000000Z"
