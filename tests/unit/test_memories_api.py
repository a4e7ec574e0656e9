"""Memory API input checking and error bodies, on fakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from gateway.config import KeySettings, key_hash
from memory.records import Memory, from_rfc3339
from tests.conftest import AppHarness, completion, wait_until
from tests.fakes import FakeEmbedder
from tests.unit.test_chat import assert_openai_error, upstream_bodies


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


# -- the total of a namespace ---------------------------------------------------------------


def test_a_namespace_count_is_open_to_any_key_of_that_namespace(tmp_path: Path) -> None:
    keys = (
        KeySettings(
            name="team", key_sha256=key_hash("kt"), namespaces=("team-*",), memory_api=True
        ),
        KeySettings(name="chat", key_sha256=key_hash("kc"), namespaces=("team-a",)),
    )
    h = AppHarness(tmp_path, keys=keys)
    team = {"authorization": "Bearer kt"}
    with h.client() as client:
        memories = [{"content": f"note {i}"} for i in range(3)]
        added = client.post(
            "/v1/memory/memories?namespace=team-a", json={"memories": memories}, headers=team
        )
        assert added.status_code == 200, added.text
        r = client.get("/v1/memory/namespaces/team-a", headers=team)
        assert r.status_code == 200, r.text
        assert r.json() == {"namespace": "team-a", "count": 3, "object": "namespace"}
        assert client.get("/v1/memory/namespaces/team-b", headers=team).json()["count"] == 0
        client.delete(
            f"/v1/memory/memories/{added.json()['ids'][0]}?namespace=team-a", headers=team
        )
        assert client.get("/v1/memory/namespaces/team-a", headers=team).json()["count"] == 2
        # the list of namespaces stays for admins; another key's namespace, a chat-only key
        assert_openai_error(client.get("/v1/memory/namespaces", headers=team), 403)
        error = assert_openai_error(client.get("/v1/memory/namespaces/other", headers=team), 403)
        assert error["param"] == "namespace"
        chat = {"authorization": "Bearer kc"}
        error = assert_openai_error(client.get("/v1/memory/namespaces/team-a", headers=chat), 403)
        assert "memory management API" in error["message"]
        assert_openai_error(client.get("/v1/memory/namespaces/team-a"), 401)
        error = assert_openai_error(client.get("/v1/memory/namespaces/a%20b", headers=team), 400)
        assert error["code"] == "invalid_namespace"


# -- listing between two times --------------------------------------------------------------


def _days(client: TestClient[Any], ns: str, n: int, **extra: Any) -> list[str]:
    """``n`` memories, one a day from 2024-03-01 at 08:00 UTC; their ids, oldest first."""
    memories = [
        {"content": f"day {i + 1}", "created_at": f"2024-03-{i + 1:02d}T08:00:00Z", **extra}
        for i in range(n)
    ]
    r = client.post(f"/v1/memory/memories?namespace={ns}", json={"memories": memories})
    assert r.status_code == 200, r.text
    ids: list[str] = r.json()["ids"]
    return ids


def _contents(client: TestClient[Any], ns: str, **params: Any) -> tuple[list[str], bool]:
    r = client.get("/v1/memory/memories", params={"namespace": ns, **params})
    assert r.status_code == 200, r.text
    return [m["content"] for m in r.json()["data"]], r.json()["has_more"]


def test_list_between_two_times_pages_exactly(harness: AppHarness, client: TestClient[Any]) -> None:
    ids = _days(client, "d", 10)
    # at or after the one, strictly before the other
    got = _contents(client, "d", created_after="2024-03-03T08:00:00Z",
                    created_before="2024-03-06T08:00:00Z")  # fmt: skip
    assert got == (["day 5", "day 4", "day 3"], False)
    # a date alone is its midnight (UTC); an offset is honoured
    assert _contents(client, "d", created_after="2024-03-09") == (["day 10", "day 9"], False)
    assert _contents(client, "d", created_before="2024-03-02T09:30:00+01:00") == (
        ["day 2", "day 1"],
        False,
    )
    # paging: has_more is false when the next memory is outside the range
    first = _contents(client, "d", limit=2, created_after="2024-03-05", created_before="2024-03-09")
    assert first == (["day 8", "day 7"], True)
    after = ids[6]  # day 7, the last of the first page
    assert _contents(client, "d", limit=2, after=after, created_after="2024-03-05",
                     created_before="2024-03-09") == (["day 6", "day 5"], False)  # fmt: skip
    # a cursor above the upper bound: the bound wins; below it: the cursor wins
    assert _contents(client, "d", limit=1, after=ids[9], created_before="2024-03-03") == (
        ["day 2"],
        True,
    )
    assert _contents(client, "d", after=ids[1], created_before="2024-03-08") == (["day 1"], False)
    # the upper bound is the page cursor: one read of the store for the page, however many
    # newer memories there are
    harness.store.calls.clear()
    assert _contents(client, "d", limit=1, created_before="2024-03-02") == (["day 1"], False)
    assert harness.store.calls.count("list") == 1
    # an empty or inverted range; with a filter
    assert _contents(client, "d", created_after="2024-03-20") == ([], False)
    assert _contents(client, "d", created_after="2024-03-05", created_before="2024-03-04") == (
        [],
        False,
    )
    _days(client, "d", 4, role="fact")
    role = '{"role": "fact"}'
    assert _contents(client, "d", filter=role, created_after="2024-03-02",
                     created_before="2024-03-04") == (["day 3", "day 2"], False)  # fmt: skip


def test_list_between_times_keeps_old_ids_at_the_bound_out(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    """An id made before ids carried their time, created exactly at the upper bound, sorts
    below the bound's cursor: it is still left out."""
    at = from_rfc3339("2024-03-05T00:00:00Z")
    old = [
        Memory(id=f"mem_{'0' * 16}8{'0' * 15}", namespace="o", content="at the bound",
               role="user", created_at=at),
        Memory(id=f"mem_{'f' * 16}8{'0' * 15}", namespace="o", content="just before",
               role="user", created_at=at - 1e-6),
    ]  # fmt: skip
    harness.store.add(old, FakeEmbedder().embed([m.content for m in old]))
    assert _contents(client, "o", created_before="2024-03-05") == (["just before"], False)
    assert _contents(client, "o", created_after="2024-03-05") == (["at the bound"], False)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"created_after": "yesterday"}, "created_after"),
        ({"created_before": "2024-13-01"}, "created_before"),
        ({"created_before": ""}, "created_before"),
    ],
)
def test_list_names_a_bad_time(client: TestClient[Any], params: Any, param: str) -> None:
    error = assert_openai_error(client.get("/v1/memory/memories", params=params), 400)
    assert (error["param"], error["code"]) == (param, "invalid_value")


# -- the preview of a memory chat's injection ------------------------------------------------

FACTS = [
    "I live in Lisbon near the river",
    "My sister lives in Lisbon too",
    "Lisbon trams are my favourite way to get around",
    "I moved to Lisbon in 2019 from Porto",
]


def test_recall_is_what_the_memory_chat_injects(tmp_path: Path) -> None:
    h = AppHarness(tmp_path, recall={"token_budget": 40})
    h.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("Lisbon."))
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where in Lisbon do I live?"},
    ]
    with h.client() as client:
        body = {"memories": [{"content": f, "created_at": "2024-05-01T10:00:00Z"} for f in FACTS]}
        assert client.post("/v1/memory/memories?namespace=al", json=body).status_code == 200
        r = client.post("/v1/memory/recall?namespace=al", json={"messages": messages})
        assert r.status_code == 200, r.text
        preview = r.json()
        assert set(preview) == {"object", "namespace", "data", "message"}
        assert (preview["object"], preview["namespace"]) == ("memory.recall", "al")
        # the budget cut some of the search's hits, best first
        hits = client.post(
            "/v1/memory/search?namespace=al", json={"query": "Where in Lisbon do I live?"}
        ).json()["data"]
        assert len(hits) >= 3
        assert 1 <= len(preview["data"]) < len(hits)
        assert preview["data"] == hits[: len(preview["data"])]
        assert preview["message"]["role"] == "system"
        for memory in preview["data"]:
            assert memory["content"] in preview["message"]["content"]
        # the same recall for a whole chat body; for the query shorthand of one user message
        chat = {"model": "gpt-test", "messages": messages, "temperature": 0}
        assert client.post("/v1/memory/recall?namespace=al", json=chat).json() == preview
        shorthand = client.post(
            "/v1/memory/recall?namespace=al", json={"query": "Where in Lisbon do I live?"}
        ).json()
        assert (
            shorthand
            == client.post("/v1/memory/recall?namespace=al", json={"messages": messages[1:]}).json()
        )
        assert shorthand["message"] == preview["message"]
        # the real memory chat: the upstream receives exactly that message, after the client's
        r = client.post("/v1/memory/chat/completions?namespace=al", json=chat)
        assert r.status_code == 200, r.text
        assert r.headers["x-memory-recalled"] == str(len(preview["data"]))
        sent = upstream_bodies(h)[-1]["messages"]
        assert sent == [messages[0], preview["message"], messages[1]]
        # nothing was remembered by the previews: only the chat's exchange was
        wait_until(lambda: h.store.count("al") == len(FACTS) + 2)


def test_recall_with_nothing_to_inject(tmp_path: Path) -> None:
    h = AppHarness(tmp_path, recall={"enabled": False})
    with h.client() as client:
        body = {"memories": [{"content": "I live in Lisbon"}]}
        assert client.post("/v1/memory/memories?namespace=n", json=body).status_code == 200
        quiet = {"object": "memory.recall", "namespace": "n", "data": [], "message": None}
        # recall switched off: the chat injects nothing, whatever the namespace holds
        r = client.post(
            "/v1/memory/recall?namespace=n", json={"query": "Where do I live in Lisbon"}
        )
        assert r.json() == quiet
    h = AppHarness(tmp_path / "on")
    with h.client() as client:
        r = client.post("/v1/memory/recall?namespace=empty", json={"query": "Where do I live?"})
        assert r.status_code == 200, r.text
        assert r.json() == {**quiet, "namespace": "empty"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [1]}, "messages[0]"),
        ({"messages": [{"content": "hi"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": 2}]}, "messages[1]"),
        ({"query": "   "}, "query"),
        ({"query": 3}, "query"),
        ({"query": "a", "messages": [{"role": "user", "content": "a"}]}, "query"),
    ],
)
def test_recall_names_the_bad_parameter(client: TestClient[Any], body: Any, param: str) -> None:
    error = assert_openai_error(client.post("/v1/memory/recall", json=body), 400)
    assert error["param"] == param


def test_recall_checks_the_namespace_and_key(tmp_path: Path) -> None:
    keys = (
        KeySettings(
            name="team", key_sha256=key_hash("kt"), namespaces=("team-*",), memory_api=True
        ),
        KeySettings(name="chat", key_sha256=key_hash("kc"), namespaces=("team-a",)),
    )
    h = AppHarness(tmp_path, keys=keys)
    query = {"query": "hello"}
    with h.client() as client:
        ok = client.post("/v1/memory/recall?namespace=team-a", json=query,
                         headers={"authorization": "Bearer kt"})  # fmt: skip
        assert ok.status_code == 200, ok.text
        assert_openai_error(client.post("/v1/memory/recall?namespace=team-a", json=query), 401)
        for key, ns in (("kt", "other"), ("kc", "team-a")):
            assert_openai_error(
                client.post(f"/v1/memory/recall?namespace={ns}", json=query,
                            headers={"authorization": f"Bearer {key}"}),
                403,
            )  # fmt: skip
        error = assert_openai_error(
            client.post("/v1/memory/recall?namespace=a%20b", json=query,
                        headers={"authorization": "Bearer kt"}),
            400,
        )  # fmt: skip
        assert error["param"] == "namespace"


# -- delete by filter -----------------------------------------------------------------------


def _add(client: TestClient[Any], ns: str, memories: list[dict[str, Any]], **kw: Any) -> list[str]:
    r = client.post(f"/v1/memory/memories?namespace={ns}", json={"memories": memories}, **kw)
    assert r.status_code == 200, r.text
    ids: list[str] = r.json()["ids"]
    return ids


def test_delete_by_filter_deletes_exactly_what_a_listing_with_it_shows(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    trip = {"conversation_id": "trip", "source": "chatgpt"}
    _add(client, "f", [
        {"content": "trip 1", "metadata": trip, "created_at": "2024-03-01T08:00:00Z"},
        {"content": "trip 2", "metadata": trip, "created_at": "2024-03-02T08:00:00Z"},
        {"content": "trip 3", "metadata": trip, "created_at": "2024-03-03T08:00:00Z"},
        {"content": "work", "metadata": {"conversation_id": "work"}},
        {"content": "no conversation"},
        {"content": "flag", "metadata": {"conversation_id": "trip", "n": 1}},
    ])  # fmt: skip
    _add(client, "other", [{"content": "trip elsewhere", "metadata": trip}])
    # a time range inside the conversation
    r = client.delete(
        "/v1/memory/memories",
        params={"namespace": "f", "conversation_id": "trip", "created_before": "2024-03-02"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"object": "memories.deleted", "namespace": "f", "deleted": 1}
    left = _contents(client, "f")[0]  # (those added without a time share one: any order)
    assert sorted(left) == ["flag", "no conversation", "trip 2", "trip 3", "work"]
    # metadata equality through filter (typed: 1 is not true), as in a listing
    r = client.delete("/v1/memory/memories", params={"namespace": "f", "filter": '{"n": true}'})
    assert r.json()["deleted"] == 0
    r = client.delete(
        "/v1/memory/memories",
        params={"namespace": "f", "filter": '{"source": "chatgpt", "conversation_id": "trip"}'},
    )
    assert r.json()["deleted"] == 2
    # the conversation shorthand: what is left of it
    r = client.delete("/v1/memory/memories?namespace=f&conversation_id=trip")
    assert r.json()["deleted"] == 1
    assert sorted(_contents(client, "f")[0]) == ["no conversation", "work"]
    assert _contents(client, "other")[0] == ["trip elsewhere"]  # never another namespace
    # a range alone is a filter too: at or after it
    assert (
        client.delete("/v1/memory/memories?namespace=other&created_after=2000-01-01").json()[
            "deleted"
        ]
        == 1
    )


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({}, "filter"),
        ({"filter": "{}"}, "filter"),
        ({"filter": "[1]"}, "filter"),
        ({"conversation_id": ""}, "conversation_id"),
        ({"conversation_id": "a", "filter": '{"conversation_id": "b"}'}, "conversation_id"),
        ({"created_before": "soon"}, "created_before"),
    ],
)
def test_delete_by_filter_refuses_an_empty_or_bad_filter(
    harness: AppHarness, client: TestClient[Any], params: dict[str, str], param: str
) -> None:
    _add(client, "keep", [{"content": "kept"}])
    error = assert_openai_error(
        client.delete("/v1/memory/memories", params={"namespace": "keep", **params}), 400
    )
    assert error["param"] == param
    assert _contents(client, "keep")[0] == ["kept"]


def test_delete_by_filter_needs_the_memory_api_of_that_namespace(tmp_path: Path) -> None:
    keys = (
        KeySettings(
            name="team", key_sha256=key_hash("kt"), namespaces=("team-*",), memory_api=True
        ),
        KeySettings(name="chat", key_sha256=key_hash("kc"), namespaces=("team-a",)),
    )
    h = AppHarness(tmp_path, keys=keys)
    team, chat = {"authorization": "Bearer kt"}, {"authorization": "Bearer kc"}
    with h.client() as client:
        _add(
            client, "team-a", [{"content": "x", "metadata": {"conversation_id": "c"}}], headers=team
        )
        url = "/v1/memory/memories?namespace={}&conversation_id=c"
        assert_openai_error(client.delete(url.format("team-a")), 401)
        assert_openai_error(client.delete(url.format("team-a"), headers=chat), 403)
        assert_openai_error(client.delete(url.format("other"), headers=team), 403)
        assert client.delete(url.format("team-a"), headers=team).json()["deleted"] == 1
