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


def test_a_memory_changed_keeps_its_earlier_version(harness: Any, client: Any) -> None:
    added = client.post(
        "/v1/memory/memories?namespace=p",
        json={"memories": [{"content": "I live in Lisbon", "metadata": {"v": 1}}]},
    ).json()["ids"][0]
    r = client.patch(
        f"/v1/memory/memories/{added}?namespace=p",
        json={"content": "I live in Porto", "metadata": {"v": 2}},
    )
    assert r.status_code == 200, r.text
    changed = r.json()
    assert (changed["id"], changed["content"], changed["metadata"]) == (
        added,
        "I live in Porto",
        {"v": 2},
    )
    assert client.get(f"/v1/memory/memories/{added}?namespace=p").json()["content"] == (
        "I live in Porto"
    )
    hits = client.post("/v1/memory/search?namespace=p", json={"query": "Porto"}).json()["data"]
    assert hits[0]["content"] == "I live in Porto"  # re-embedded
    history = client.get(f"/v1/memory/memories/{added}/history?namespace=p").json()["data"]
    assert [(v["content"], v["metadata"]) for v in history] == [("I live in Lisbon", {"v": 1})]
    assert history[0]["replaced_at"] >= history[0]["created_at"]
    assert_openai_error(client.patch(f"/v1/memory/memories/{added}?namespace=p", json={}), 400)
    assert_openai_error(
        client.patch(f"/v1/memory/memories/{added}?namespace=p", json={"role": "a b"}), 400
    )
    assert_openai_error(
        client.patch("/v1/memory/memories/mem_nope?namespace=p", json={"content": "x"}), 404
    )
    assert client.delete(f"/v1/memory/memories/{added}?namespace=p").status_code == 200
    assert harness.store.versions("p", added) == []  # its history went with it
