"""Upstream resilience: retries (connect errors, 429, 5xx, only before the answer starts),
retry-after honoured within limits, fallback upstreams, and the metrics that show them."""

from __future__ import annotations

import email.utils
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import respx
from litestar.testing import TestClient

from gateway.app import create_app
from gateway.config import ConfigError, UpstreamSettings, load_settings
from gateway.upstream import retry_after, retryable_status
from tests.conftest import UPSTREAM, completion, make_settings, metric
from tests.fakes import FakeEmbedder, MemStore
from tests.unit.test_chat import assert_openai_error

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
BUSY = {"error": {"message": "busy", "type": "server_error", "param": None, "code": None}}
FAST = {"retry_backoff_seconds": 0.01}


class Gateway:
    """An app on fakes whose upstream hosts are all answered by one respx router."""

    def __init__(
        self, tmp_path: Path, *, upstreams: tuple[UpstreamSettings, ...] = (), **upstream: Any
    ) -> None:
        self.mock = respx.MockRouter(assert_all_called=False)
        settings = make_settings(tmp_path, upstream={**FAST, **upstream})
        self.settings = msgspec.structs.replace(settings, upstreams=upstreams)
        self.app = create_app(
            self.settings,
            store=MemStore(),
            embedder=FakeEmbedder(),
            transport=httpx.MockTransport(self.mock.async_handler),
        )

    def metrics(self, client: TestClient[Any]) -> str:
        return client.get("/metrics").text


@pytest.fixture
def gw(tmp_path: Path) -> Gateway:
    return Gateway(tmp_path)


@pytest.fixture
def client(gw: Gateway) -> Iterator[TestClient[Any]]:
    with TestClient(gw.app, raise_server_exceptions=False) as c:
        yield c


def test_5xx_and_429_before_the_answer_are_sent_again(gw: Gateway, client: TestClient[Any]) -> None:
    route = gw.mock.post(f"{UPSTREAM}/chat/completions").mock(
        side_effect=[
            httpx.Response(503, json=BUSY),
            httpx.Response(429, json=BUSY, headers={"retry-after-ms": "20"}),
            httpx.Response(200, json=completion("at last")),
        ]
    )
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "at last"
    assert route.call_count == 3
    text = gw.metrics(client)
    retries = "memgate_upstream_retries_total"
    assert metric(text, retries, upstream="default", reason="503") == 1
    assert metric(text, retries, upstream="default", reason="429") == 1
    # every failed attempt is still an upstream error
    assert metric(text, "memgate_upstream_errors_total", upstream="default", status="503") == 1


def test_when_retries_are_spent_the_last_answer_is_relayed_as_it_is(
    gw: Gateway, client: TestClient[Any]
) -> None:
    route = gw.mock.post(f"{UPSTREAM}/chat/completions").mock(
        return_value=httpx.Response(502, json=BUSY, headers={"x-ratelimit-remaining": "0"})
    )
    r = client.post("/v1/memory/chat/completions?namespace=a", json=CHAT)
    assert r.status_code == 502
    assert r.json() == BUSY
    assert r.headers["x-ratelimit-remaining"] == "0"
    assert route.call_count == 3  # the first try and upstream.retries = 2
    assert r.headers["x-should-retry"] == "false"  # the SDKs need not try it 3 times more


def test_a_long_retry_after_is_not_waited_for(gw: Gateway, client: TestClient[Any]) -> None:
    later = email.utils.formatdate(usegmt=True)  # an HTTP date form works too (now: 0 s)
    assert retry_after({"retry-after": later}) == pytest.approx(0, abs=2)
    route = gw.mock.post(f"{UPSTREAM}/chat/completions").mock(
        return_value=httpx.Response(429, json=BUSY, headers={"retry-after": "3600"})
    )
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "3600"  # the client decides when to come back
    assert "x-should-retry" not in r.headers
    assert route.call_count == 1


def test_a_retry_never_goes_past_the_request_timeout(tmp_path: Path) -> None:
    gw = Gateway(tmp_path, timeout=1.0)
    route = gw.mock.post(f"{UPSTREAM}/chat/completions").mock(
        return_value=httpx.Response(503, json=BUSY, headers={"retry-after": "5"})
    )
    with TestClient(gw.app, raise_server_exceptions=False) as client:
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 503
    assert route.call_count == 1


def test_connect_errors_are_retried_but_a_request_that_may_have_arrived_is_not(
    gw: Gateway, client: TestClient[Any]
) -> None:
    route = gw.mock.post(f"{UPSTREAM}/chat/completions").mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(200, json=completion("ok"))]
    )
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert route.call_count == 2
    text = gw.metrics(client)
    assert metric(text, "memgate_upstream_retries_total", upstream="default", reason="connect")

    route.side_effect = [httpx.ReadError("reset"), httpx.Response(200, json=completion("no"))]
    before = route.call_count
    assert_openai_error(client.post("/v1/chat/completions", json=CHAT), 502)
    assert route.call_count == before + 1  # sent once: the upstream may have run it


def test_a_stream_is_retried_only_before_it_starts(gw: Gateway, client: TestClient[Any]) -> None:
    events = [
        {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]},
    ]
    payload = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    payload += b"data: [DONE]\n\n"
    route = gw.mock.post(f"{UPSTREAM}/chat/completions").mock(
        side_effect=[
            httpx.Response(500, json=BUSY),
            httpx.Response(200, content=payload, headers={"content-type": "text/event-stream"}),
        ]
    )
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/memory/chat/completions?namespace=s", json=body) as r:
        assert r.status_code == 200
        assert r.read() == payload
    assert route.call_count == 2


def test_fallback_upstreams_take_over_and_are_counted(tmp_path: Path) -> None:
    primary = UpstreamSettings(
        name="primary",
        url="http://primary.test/v1",
        models=("gpt-*",),
        retries=1,
        retry_backoff_seconds=0.01,
        fallbacks=("spare",),
    )
    spare = UpstreamSettings(name="spare", url="http://spare.test/v1", models=("spare-*",))
    gw = Gateway(tmp_path, upstreams=(primary, spare))
    down = gw.mock.post("http://primary.test/v1/chat/completions").mock(
        return_value=httpx.Response(503, json=BUSY)
    )
    seen: list[httpx.Request] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=completion("from the spare"))

    gw.mock.post("http://spare.test/v1/chat/completions").mock(side_effect=serve)
    embeddings = gw.mock.post("http://primary.test/v1/embeddings").mock(
        side_effect=[httpx.ConnectError("refused")] * 2
    )
    gw.mock.post("http://spare.test/v1/embeddings").mock(
        return_value=httpx.Response(200, json={"data": []})
    )
    with TestClient(gw.app, raise_server_exceptions=False) as client:
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "from the spare"
        assert json.loads(seen[0].content) == CHAT  # the same body
        assert down.call_count == 2
        # pass-through endpoints use the same chain
        r = client.post("/v1/embeddings", json={"model": "gpt-embed", "input": "x"})
        assert r.json() == {"data": []}
        assert embeddings.call_count == 2
        text = client.get("/metrics").text
    fallbacks = "memgate_upstream_fallbacks_total"
    assert metric(text, fallbacks, upstream="primary", fallback="spare") == 2


def test_a_fallback_must_name_another_upstream(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fallback 'nowhere'"):
        load_settings(None, {}, {"upstream": {"fallbacks": ["nowhere"]}})
    with pytest.raises(ConfigError, match="must not be negative"):
        load_settings(None, {}, {"upstream": {"retries": -1}})


def test_what_is_retryable_and_how_long_to_wait() -> None:
    assert all(retryable_status(s) for s in (429, 500, 502, 503, 504, 529))
    assert not any(retryable_status(s) for s in (200, 400, 401, 404, 409, 501, 505))
    assert retry_after({"retry-after": "2"}) == 2
    assert retry_after({"retry-after": "1.5"}) == 1.5
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after({"retry-after": date}, now=1_000_000) == 30
