"""Memory filters: equality and ``$in`` on metadata and role, for search and list, and the
conversation id a chat can carry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from memory.hybrid import HybridStore
from memory.local_copy import LocalCopy
from memory.records import Memory, filter_problem, matches, new_id
from tests.conftest import AppHarness, completion, wait_until
from tests.fakes import FakeEmbedder, MemStore
from tests.unit.test_chat import assert_openai_error

NOTE = Memory(id="n", namespace="a", content="x", role="fact", metadata={"c": "c1", "n": 1})


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"c": "c1"}, True),
        ({"c": "c2"}, False),
        ({"c": {"$in": ["c2", "c1"]}}, True),
        ({"role": "fact", "n": 1}, True),
        ({"role": {"$in": ["user", "assistant"]}}, False),
        ({"n": True}, False),  # 1 is not True
        ({"n": 1.0}, True),
        ({"missing": "x"}, False),
    ],
)
def test_matches(where: dict[str, Any], expected: bool) -> None:
    assert filter_problem(where) is None
    assert matches(NOTE, where) is expected


@pytest.mark.parametrize(
    "where",
    [{}, [], {"c": {"$gt": 1}}, {"c": {"$in": []}}, {"c": [1]}, {"$c": 1}, {"role": "a b"}],
)
def test_bad_filters_are_named(where: Any) -> None:
    assert filter_problem(where)


def test_the_local_copy_filters_pages_and_lexical_matches(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    store = HybridStore(MemStore(), LocalCopy(tmp_path / "index", pair_gap=0))
    items = [
        Memory(
            id=new_id(float(i)),
            namespace="a",
            content=f"walrus note {i}",
            created_at=float(i),
            metadata={"conversation_id": f"c{i % 3}"},
        )
        for i in range(40)
    ]
    store.add(items, embedder.embed([m.content for m in items]))
    where = {"conversation_id": "c1"}
    want = [m.id for m in reversed(items) if m.metadata["conversation_id"] == "c1"]
    page, more = store.list("a", limit=5, where=where)
    assert [m.id for m in page] == want[:5]
    assert more
    page, more = store.list("a", limit=50, after=page[-1].id, where=where)
    assert [m.id for m in page] == want[5:]
    assert not more
    lexical = store.search_text("a", "walrus note", 100, where)
    assert {m.id for m, _ in lexical} == set(want)
    dense = store.search("a", embedder.embed(["walrus note"])[0], 100, where=where)
    assert {h.memory.id for h in dense} == set(want)
    store.close()


def test_search_and_list_filters_and_the_conversation_header(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    harness.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("Noted."))
    )
    for conversation, text in (("trip", "I fly to Lisbon on May 3"), ("work", "Deadline is May 5")):
        r = client.post(
            "/v1/memory/chat/completions?namespace=f",
            json={"model": "m", "messages": [{"role": "user", "content": text}]},
            headers={"x-memory-conversation": conversation},
        )
        assert r.status_code == 200
    wait_until(lambda: harness.store.count("f") == 4)
    trip = json.dumps({"conversation_id": "trip"})
    listed = client.get("/v1/memory/memories", params={"namespace": "f", "filter": trip}).json()
    assert {m["content"] for m in listed["data"]} == {"I fly to Lisbon on May 3", "Noted."}
    assert all(m["metadata"]["conversation_id"] == "trip" for m in listed["data"])
    user_only = json.dumps({"role": "user", "conversation_id": {"$in": ["trip", "work"]}})
    listed = client.get("/v1/memory/memories", params={"namespace": "f", "filter": user_only})
    assert {m["content"] for m in listed.json()["data"]} == {
        "I fly to Lisbon on May 3",
        "Deadline is May 5",
    }
    hits = client.post(
        "/v1/memory/search?namespace=f",
        json={"query": "May Lisbon deadline fly", "filter": {"conversation_id": "trip"}},
    ).json()["data"]
    assert hits
    assert all(h["metadata"]["conversation_id"] == "trip" for h in hits)
    unfiltered = client.post(
        "/v1/memory/search?namespace=f", json={"query": "May Lisbon deadline fly"}
    ).json()["data"]
    assert "Deadline is May 5" in {h["content"] for h in unfiltered}
    bad = client.get("/v1/memory/memories", params={"namespace": "f", "filter": "{nope"})
    assert assert_openai_error(bad, 400)["param"] == "filter"
    bad = client.post("/v1/memory/search?namespace=f", json={"query": "x", "filter": {"a": []}})
    assert assert_openai_error(bad, 400)["param"] == "filter"
    r = client.post(
        "/v1/memory/chat/completions?namespace=f",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        headers={"x-memory-conversation": "has spaces"},
    )
    assert assert_openai_error(r, 400)["param"] == "x-memory-conversation"
