"""The whole gateway with real parts: embedded Chroma in a temp dir, the real MiniLM model,
a real fake upstream on loopback, and the gateway itself served by uvicorn on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from memory.chroma import ChromaStore
from memory.embedder import Embedder
from tests.conftest import make_settings, wait_until
from tests.fake_upstream import FakeUpstream, serve_in_thread

pytestmark = pytest.mark.slow


class Running:
    def __init__(self, url: str, store: ChromaStore, upstream: FakeUpstream, app: Any) -> None:
        self.url = url
        self.store = store
        self.upstream = upstream
        self.app = app
        self.http = httpx.Client(base_url=url, timeout=30)

    def chat(self, ns: str, text: str, **extra: Any) -> httpx.Response:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": text}], **extra}
        return self.http.post(f"/v1/memory/chat/completions?namespace={ns}", json=body)

    def depth(self) -> int:
        return int(self.app.state["gateway"].service.outbox.depth())


@pytest.fixture
def gateway(
    tmp_path: Path, minilm: Embedder, fake_upstream: tuple[FakeUpstream, str]
) -> Iterator[Running]:
    upstream, upstream_url = fake_upstream
    store = ChromaStore(path=tmp_path / "chroma")
    settings = make_settings(
        tmp_path, upstream={"url": upstream_url, "timeout": 1.5}, recall={"similarity_floor": 0.2}
    )
    app = create_app(settings, store=store, embedder=minilm)
    with serve_in_thread(app) as url:
        running = Running(url, store, upstream, app)
        yield running
        running.http.close()


def test_exchange_is_stored_and_recalled_into_the_upstream_request(gateway: Running) -> None:
    r = gateway.chat("alice", "My sister Jane lives in Porto and teaches chemistry.")
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"].startswith("echo: My sister")
    wait_until(lambda: gateway.store.count("alice") == 2)
    page, _ = gateway.store.list("alice", limit=10)
    assert {m.role for m in page} == {"user", "assistant"}
    assert all(m.metadata.get("model") == "fake-model" for m in page)

    r = gateway.chat("alice", "What does my sister teach?")
    assert r.status_code == 200
    assert int(r.headers["x-memory-recalled"]) >= 1
    seen = gateway.upstream.last_body()["messages"]
    assert seen[0]["role"] == "system"
    assert "Jane lives in Porto and teaches chemistry" in seen[0]["content"]
    assert seen[-1] == {"role": "user", "content": "What does my sister teach?"}

    r = gateway.chat("bob", "What does my sister teach?")
    assert r.headers["x-memory-recalled"] == "0"
    assert gateway.upstream.last_body()["messages"] == [
        {"role": "user", "content": "What does my sister teach?"}
    ]


def test_read_your_writes_while_queued(gateway: Running) -> None:
    writer = gateway.app.state["gateway"].service.writer
    assert writer._task is not None
    loop = writer._task.get_loop()  # the server's event loop
    # hold the writer's lock so the exchange stays queued, then recall it anyway
    asyncio.run_coroutine_threadsafe(writer.lock.acquire(), loop).result(5)
    try:
        assert gateway.chat("rw", "My passport number ends in 4417.").status_code == 200
        assert gateway.depth() == 2
        assert gateway.store.count("rw") == 0
        r = gateway.chat("rw", "What does my passport number end in?")
        assert int(r.headers["x-memory-recalled"]) >= 1
        assert "4417" in gateway.upstream.last_body()["messages"][0]["content"]
    finally:
        loop.call_soon_threadsafe(writer.lock.release)
    wait_until(lambda: gateway.store.count("rw") >= 2 and gateway.depth() == 0)


def test_streaming_relays_as_it_arrives_and_remembers(gateway: Running) -> None:
    gateway.upstream.drip_interval = 0.2  # 1 s in all: inside the upstream's 1.5 s
    body = {
        "model": "drip",
        "stream": True,
        "messages": [{"role": "user", "content": "Tell me about tides"}],
    }
    arrivals: list[float] = []
    with gateway.http.stream("POST", "/v1/memory/chat/completions?namespace=st", json=body) as r:
        assert r.status_code == 200
        for _ in r.iter_raw():
            arrivals.append(time.monotonic())
    # 5 chunks 0.2 s apart upstream: the client saw them spread out, not all at the end
    assert arrivals[-1] - arrivals[0] > 0.6
    wait_until(lambda: gateway.store.count("st") == 2)


def test_cut_stream_and_upstream_errors_persist_nothing(gateway: Running) -> None:
    body = {"model": "cut", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    with gateway.http.stream("POST", "/v1/memory/chat/completions?namespace=cut", json=body) as r:
        data = r.read()
    assert b'"error"' in data
    assert b"[DONE]" not in data
    for model, status in (("fail-500", 500), ("fail-400", 400), ("fail-429", 429)):
        r = gateway.http.post(
            "/v1/memory/chat/completions?namespace=cut",
            json={"model": model, "messages": [{"role": "user", "content": "hello"}]},
        )
        assert r.status_code == status
        assert r.json()["error"]["code"] == f"fake_{status}"
    r = gateway.http.post(
        "/v1/memory/chat/completions?namespace=cut",
        json={"model": "slow", "messages": [{"role": "user", "content": "hello"}]},
    )
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"
    time.sleep(0.3)
    assert gateway.depth() == 0
    assert gateway.store.count("cut") == 0
    assert gateway.chat("cut", "still serving?").status_code == 200


def test_client_disconnect_mid_stream_persists_nothing(gateway: Running) -> None:
    gateway.upstream.drip_interval = 0.5
    body = {"model": "drip", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with (
        httpx.Client(base_url=gateway.url) as other,
        other.stream("POST", "/v1/memory/chat/completions?namespace=dc", json=body) as r,
    ):
        next(r.iter_raw())
    time.sleep(3.0)  # longer than the upstream would have taken to finish
    assert gateway.depth() == 0
    assert gateway.store.count("dc") == 0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/memory/chat/completions"])
def test_a_client_leaving_a_stream_stops_the_upstream(gateway: Running, path: str) -> None:
    """The plain chat (answered before Litestar's routing) and the memory chat alike: the
    upstream's connection is closed, not read to its end for nobody."""
    gateway.upstream.drip_interval = 0.25  # 5 drips in 1.25 s: inside the upstream's 1.5 s
    left, sent = gateway.upstream.left, len(gateway.upstream.chunk_times)
    body = {"model": "drip", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with (
        httpx.Client(base_url=gateway.url) as other,
        other.stream("POST", path, params={"namespace": "gone"}, json=body) as r,
    ):
        next(r.iter_raw())
    wait_until(lambda: gateway.upstream.left > left, timeout=2.0)
    assert len(gateway.upstream.chunk_times) - sent < 5


def test_unreachable_upstream_is_502(tmp_path: Path, minilm: Embedder) -> None:
    from tests.fake_upstream import free_port

    settings = make_settings(tmp_path, upstream={"url": f"http://127.0.0.1:{free_port()}/v1"})
    app = create_app(settings, store=ChromaStore(path=tmp_path / "c"), embedder=minilm)
    with serve_in_thread(app) as url:
        r = httpx.post(
            url + "/v1/memory/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        )
        ready = httpx.get(url + "/readyz")
    assert ready.status_code == 200  # memory still works: degraded, not unready
    assert ready.json()["status"] == "degraded"
    assert ready.json()["upstreams"]["default"].startswith("unreachable")
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_unreachable"


def test_memory_api_round_trip(gateway: Running) -> None:
    http = gateway.http
    ns = "api:user@example.com"
    r = http.post(
        "/v1/memory/memories",
        params={"namespace": ns},
        json={
            "memories": [
                {
                    "content": "Allergic to peanuts",
                    "role": "fact",
                    "metadata": {"src": "form", "v": 2},
                },
                {"content": "Prefers aisle seats", "created_at": "2024-01-02T03:04:05Z"},
            ]
        },
    )
    assert r.status_code == 200
    ids = r.json()["ids"]
    assert len(ids) == 2

    r = http.post(
        "/v1/memory/search", params={"namespace": ns}, json={"query": "food allergy", "k": 5}
    )
    assert r.status_code == 200
    data = r.json()["data"]
    assert data[0]["id"] == ids[0]
    assert set(data[0]) == {"id", "content", "role", "score", "created_at", "metadata"}
    assert data[0]["metadata"] == {"src": "form", "v": 2}
    assert data[0]["role"] == "fact"

    r = http.get("/v1/memory/memories", params={"namespace": ns, "limit": 1})
    page = r.json()
    assert page["object"] == "list"
    assert page["has_more"] is True
    assert page["data"][0]["id"] == ids[0]  # newest first: the other one is from 2024
    r = http.get(
        "/v1/memory/memories", params={"namespace": ns, "limit": 1, "after": page["data"][0]["id"]}
    )
    assert r.json()["data"][0] == {
        "id": ids[1],
        "namespace": ns,
        "content": "Prefers aisle seats",
        "role": "user",
        "created_at": "2024-01-02T03:04:05.000000Z",
        "metadata": {},
    }
    assert r.json()["has_more"] is False

    assert http.get(f"/v1/memory/memories/{ids[0]}", params={"namespace": ns}).status_code == 200
    r = http.get(f"/v1/memory/memories/{ids[0]}", params={"namespace": "other"})
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found_error"
    assert (
        http.delete(f"/v1/memory/memories/{ids[0]}", params={"namespace": "other"}).status_code
        == 404
    )
    r = http.delete(f"/v1/memory/memories/{ids[0]}", params={"namespace": ns})
    assert r.json() == {"id": ids[0], "deleted": True, "object": "memory.deleted"}
    assert http.get(f"/v1/memory/memories/{ids[0]}", params={"namespace": ns}).status_code == 404

    r = http.delete(f"/v1/memory/namespaces/{ns}")
    assert r.status_code == 200
    assert r.json()["deleted"] == 1
    r = http.post("/v1/memory/search", params={"namespace": ns}, json={"query": "aisle seats"})
    assert r.json()["data"] == []
    assert http.get("/v1/memory/memories", params={"namespace": ns}).json()["data"] == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/memory/memories", {"memories": []}),
        ("POST", "/v1/memory/memories", {"memories": [{"content": ""}]}),
        (
            "POST",
            "/v1/memory/memories",
            {"memories": [{"content": "x", "created_at": "yesterday"}]},
        ),
        ("POST", "/v1/memory/memories", {"memories": [{"content": "x", "metadata": {"a": [1]}}]}),
        ("POST", "/v1/memory/memories", {"memories": [{"content": "x"}] * 1001}),
        ("POST", "/v1/memory/memories", {"nope": 1}),
        ("POST", "/v1/memory/search", {"query": "x", "k": 0}),
        ("POST", "/v1/memory/search", {"query": "x", "k": "many"}),
        ("POST", "/v1/memory/search", {}),
        ("GET", "/v1/memory/memories?limit=0", None),
        ("GET", "/v1/memory/memories?limit=abc", None),
        ("GET", "/v1/memory/memories?namespace=bad%20ns", None),
        ("DELETE", "/v1/memory/namespaces/bad%20ns", None),
    ],
)
def test_memory_api_rejects_bad_input(gateway: Running, method: str, path: str, body: Any) -> None:
    r = gateway.http.request(method, path, json=body)
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_health_and_openapi(gateway: Running) -> None:
    assert gateway.http.get("/healthz").json() == {"status": "ok"}
    ready = gateway.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {
        "store": "ok",
        "embedder": "ok",
        "queue": "ok",
        "writer": "ok",
    }
    assert ready.json()["upstreams"] == {"default": "ok"}
    assert ready.json()["status"] == "ready"
    spec = gateway.http.get("/docs/openapi.json").json()
    for path in ("/v1/memory/chat/completions", "/v1/memory/search", "/v1/memory/memories"):
        assert path in spec["paths"]
    assert gateway.http.get("/docs").status_code == 200
