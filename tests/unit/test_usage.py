"""Usage accounting: tokens from the upstreams' usage, by key, namespace and model, in the
metrics and the admin usage endpoint; a stream's usage asked for (and taken out again) when
the client did not ask."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from gateway.config import KeySettings, key_hash
from gateway.streaming import UsageStripper
from gateway.usage import UsageLedger, tokens_of
from tests.conftest import AppHarness, completion, metric
from tests.unit.test_chat import assert_openai_error

ADMIN = {"authorization": "Bearer admin-key"}
TEAM = {"authorization": "Bearer team-key"}


def keyed(tmp_path: Path, **sections: dict[str, Any]) -> AppHarness:
    keys = (
        KeySettings(name="boss", key_sha256=key_hash("admin-key"), admin=True),
        KeySettings(
            name="team", key_sha256=key_hash("team-key"), namespaces=("t-*",), memory_api=True
        ),
    )
    return AppHarness(tmp_path, keys=keys, **sections)


def chat(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": text}], **extra}


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + (
        b"data: [DONE]\n\n"
    )


def chunk(content: str | None, finish: str | None = None, usage: bool = True) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "gpt-test",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }
    if usage:
        event["usage"] = None  # what include_usage adds to every chunk
    return event


USAGE_CHUNK = {
    "id": "c",
    "object": "chat.completion.chunk",
    "model": "gpt-test",
    "choices": [],
    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
}


def test_answers_are_counted_by_key_namespace_and_model(tmp_path: Path) -> None:
    h = keyed(tmp_path)
    h.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("ok"))
    )
    with h.client() as c:
        for _ in range(3):
            c.post("/v1/memory/chat/completions?namespace=t-1", json=chat(), headers=TEAM)
        c.post("/v1/chat/completions", json=chat(), headers=ADMIN)
        report = c.get("/v1/memory/usage", headers=ADMIN).json()
        text = c.get("/metrics").text
        assert_openai_error(c.get("/v1/memory/usage", headers=TEAM), 403)
    rows = {(r["key"], r["namespace"], r["model"]): r for r in report["data"]}
    assert rows[("team", "t-1", "gpt-test")] == {
        "key": "team",
        "namespace": "t-1",
        "model": "gpt-test",
        "requests": 3,
        "prompt_tokens": 3,
        "completion_tokens": 3,
        "total_tokens": 6,
    }
    assert rows[("boss", "", "gpt-test")]["requests"] == 1  # pass-through: no namespace
    assert report["total"]["total_tokens"] == 8
    tokens = "memgate_tokens_total"
    assert metric(text, tokens, key="team", model="gpt-test", kind="prompt") == 3
    assert metric(text, tokens, key="boss", model="gpt-test", kind="completion") == 1


def test_a_stream_usage_is_asked_for_and_taken_out_again(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    upstream_sent = sse(chunk("Hel"), chunk("lo", "stop"), USAGE_CHUNK)
    seen: list[Any] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(
            200, content=upstream_sent, headers={"content-type": "text/event-stream"}
        )

    harness.upstream.post("/chat/completions").mock(side_effect=answer)
    for path in ("/v1/memory/chat/completions?namespace=s", "/v1/chat/completions"):
        body = chat(stream=True, stream_options={"other": 1})
        with client.stream("POST", path, json=body) as r:
            got = r.read()
        # exactly what the client would have had without include_usage
        assert got == sse(chunk("Hel", usage=False), chunk("lo", "stop", usage=False))
        assert seen[-1]["stream_options"] == {"other": 1, "include_usage": True}
    report = client.get("/v1/memory/usage?group_by=namespace").json()
    assert {r["namespace"]: r["prompt_tokens"] for r in report["data"]} == {"s": 11, "": 11}
    assert report["group_by"] == ["namespace"]


def test_a_client_that_asked_for_usage_gets_it_and_the_body_goes_as_it_came(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    upstream_sent = sse(chunk("Hi", "stop"), USAGE_CHUNK)
    raw: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        raw.append(request.content)
        return httpx.Response(
            200, content=upstream_sent, headers={"content-type": "text/event-stream"}
        )

    harness.upstream.post("/chat/completions").mock(side_effect=answer)
    body = json.dumps(chat(stream=True, stream_options={"include_usage": True})).encode()
    with client.stream(
        "POST", "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    ) as r:
        assert r.read() == upstream_sent
    assert raw == [body]  # byte for byte
    assert client.get("/v1/memory/usage").json()["total"]["completion_tokens"] == 7


def test_stream_usage_can_be_turned_off_for_an_upstream(tmp_path: Path) -> None:
    h = AppHarness(tmp_path, upstream={"stream_usage": False})
    sent: list[Any] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(
            200,
            content=sse(chunk("Hi", "stop", usage=False)),
            headers={"content-type": "text/event-stream"},
        )

    h.upstream.post("/chat/completions").mock(side_effect=answer)
    with h.client() as c, c.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as r:
        r.read()
    assert "stream_options" not in sent[0]


def test_other_endpoints_are_counted_too(harness: AppHarness, client: TestClient[Any]) -> None:
    harness.upstream.post("/embeddings").mock(
        return_value=httpx.Response(
            200,
            json={"data": [], "model": "e", "usage": {"prompt_tokens": 5, "total_tokens": 5}},
        )
    )
    completed = {
        "type": "response.completed",
        "response": {"usage": {"input_tokens": 20, "output_tokens": 4, "total_tokens": 24}},
    }
    responses_stream = (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta"}\n\n'
        b"event: response.completed\ndata: " + json.dumps(completed).encode() + b"\n\n"
    )
    harness.upstream.post("/responses").mock(
        return_value=httpx.Response(
            200, content=responses_stream, headers={"content-type": "text/event-stream"}
        )
    )
    client.post("/v1/embeddings", json={"model": "emb-1", "input": "x"})
    with client.stream(
        "POST", "/v1/responses", json={"model": "resp-1", "input": "x", "stream": True}
    ) as r:
        assert r.read() == responses_stream
    rows = client.get("/v1/memory/usage?group_by=model").json()["data"]
    by_model = {r["model"]: (r["prompt_tokens"], r["completion_tokens"]) for r in rows}
    assert by_model == {"emb-1": (5, 0), "resp-1": (20, 4)}


def test_usage_report_parameters(harness: AppHarness, client: TestClient[Any]) -> None:
    harness.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("ok"))
    )
    client.post("/v1/memory/chat/completions?namespace=a", json=chat())
    client.post("/v1/memory/chat/completions?namespace=b", json=chat())
    day = client.get("/v1/memory/usage?group_by=day").json()
    assert len(day["data"]) == 1
    assert day["data"][0]["requests"] == 2
    assert day["data"][0]["day"] == day["until"]
    only_a = client.get("/v1/memory/usage?namespace=a&group_by=").json()
    assert only_a["data"] == [only_a["total"]]
    assert only_a["total"]["requests"] == 1
    past = client.get("/v1/memory/usage?since=2001-01-01&until=2001-12-31").json()
    assert past["data"] == []
    assert past["total"]["requests"] == 0
    for query, param in (
        ("group_by=colour", "group_by"),
        ("since=yesterday", "since"),
        ("since=2030-01-02&until=2030-01-01", "since"),
    ):
        error = assert_openai_error(client.get(f"/v1/memory/usage?{query}"), 400)
        assert error["param"] == param


def test_the_ledger_survives_a_restart_and_adds_up_its_siblings(tmp_path: Path) -> None:
    template = str(tmp_path / "{hostname}")
    a = UsageLedger(tmp_path / "gw-a", template=template)
    b = UsageLedger(tmp_path / "gw-b", template=template)
    a.record("k", "ns", "m", {"prompt_tokens": 2, "completion_tokens": 3})
    b.record("k", "ns", "m", {"prompt_tokens": 10, "completion_tokens": 0})
    b.flush()
    again = UsageLedger(tmp_path / "gw-a", template=template)  # a restarted: a flushed first
    a.flush()
    rows = again.query(since="2000-01-01", until="2100-01-01", group_by=("key",), where={})
    assert [(r.key, r.requests, r.total_tokens) for r in rows] == [("k", 2, 15)]
    alone = UsageLedger(tmp_path / "solo")
    assert alone.query(since="2000-01-01", until="2100-01-01", group_by=(), where={}) == []


def test_a_ledger_that_cannot_write_keeps_its_sums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = UsageLedger(tmp_path)
    ledger.record("k", "", "m", {"prompt_tokens": 1, "completion_tokens": 1})
    real = ledger._connect

    def full(*args: Any, **kw: Any) -> sqlite3.Connection:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ledger, "_connect", full)
    ledger.flush()
    ledger.record("k", "", "m", {"prompt_tokens": 1, "completion_tokens": 1})
    monkeypatch.setattr(ledger, "_connect", real)
    rows = ledger.query(since="2000-01-01", until="2100-01-01", group_by=(), where={})
    assert rows[0].requests == 2
    assert rows[0].total_tokens == 4


def test_what_counts_as_usage() -> None:
    assert tokens_of({"prompt_tokens": 3, "completion_tokens": 4}) == (3, 4)
    assert tokens_of({"input_tokens": 3, "output_tokens": 4}) == (3, 4)
    assert tokens_of({"prompt_tokens": 5, "total_tokens": 5}) == (5, 0)
    assert tokens_of({"prompt_tokens": "5"}) is None
    assert tokens_of(None) is None
    assert tokens_of([1]) is None


def test_the_stripper_gives_the_same_bytes_however_the_stream_is_cut() -> None:
    upstream = sse(chunk("a"), chunk("b", "stop"), USAGE_CHUNK).replace(b"\n\n", b"\r\n\r\n", 1)
    expected = sse(chunk("a", usage=False), chunk("b", "stop", usage=False)).replace(
        b"\n\n", b"\r\n\r\n", 1
    )
    rng = random.Random(3)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(upstream)), rng.randrange(0, 12)))
        parts = [upstream[i:j] for i, j in zip([0, *cuts], [*cuts, len(upstream)], strict=True)]
        stripper = UsageStripper()
        out = b"".join(stripper.feed(p) for p in parts) + stripper.flush()
        assert out == expected
    # an event that is not JSON, or has usage in a choice chunk, passes untouched
    odd = b'data: {"usage": {"prompt_tokens": 1}, "choices": [{"index": 0}]}\n\ndata: x"usage"\n\n'
    assert UsageStripper().feed(odd) == odd
