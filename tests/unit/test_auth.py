"""Keys, scopes, rate limits, routing by model, request ids and metrics, on fakes."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.auth import Principal, RateLimiter
from gateway.config import KeySettings, UpstreamSettings, key_hash
from gateway.errors import RateLimited
from tests.conftest import AppHarness, completion, metric, wait_until
from tests.unit.test_chat import assert_openai_error

KEYS = (
    KeySettings(
        name="tenant-a", key_sha256=key_hash("ka"), namespaces=("tenant-a:*",), memory_api=True
    ),
    KeySettings(name="chat-only", key_sha256=key_hash("kc"), namespaces=("shared",)),
    KeySettings(name="root", key_sha256=key_hash("kr"), admin=True),
)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(tmp_path: Path) -> AppHarness:
    h = AppHarness(tmp_path, keys=KEYS)
    h.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("ok"))
    )
    return h


def test_missing_or_wrong_key_is_401(keyed: AppHarness) -> None:
    with keyed.client() as c:
        error = assert_openai_error(c.post("/v1/memory/chat/completions", json=CHAT), 401)
        assert error["code"] == "invalid_api_key"
        assert_openai_error(c.post("/v1/chat/completions", json=CHAT, headers=bearer("nope")), 401)
        assert_openai_error(c.get("/v1/memory/memories", headers={"x-memgate-key": "nope"}), 401)
        assert c.get("/healthz").status_code == 200  # health stays open
        assert c.get("/metrics").status_code == 200


def test_scopes(keyed: AppHarness) -> None:
    with keyed.client() as c:
        ok = c.post(
            "/v1/memory/chat/completions?namespace=tenant-a:u1", json=CHAT, headers=bearer("ka")
        )
        assert ok.status_code == 200
        error = assert_openai_error(
            c.post(
                "/v1/memory/chat/completions?namespace=tenant-b:u1", json=CHAT, headers=bearer("ka")
            ),
            403,
        )
        assert error["type"] == "permission_error"
        assert error["param"] == "namespace"
        assert_openai_error(
            c.post("/v1/memory/ns/tenant-ab/chat/completions", json=CHAT, headers=bearer("ka")), 403
        )
        # chat-only key: chat in its namespace, but not the memory API
        assert (
            c.post(
                "/v1/memory/ns/shared/chat/completions", json=CHAT, headers=bearer("kc")
            ).status_code
            == 200
        )
        assert_openai_error(
            c.get("/v1/memory/memories?namespace=shared", headers=bearer("kc")), 403
        )
        assert (
            c.get("/v1/memory/memories?namespace=tenant-a:u1", headers=bearer("ka")).status_code
            == 200
        )
        # erasing and listing namespaces: admin only
        assert_openai_error(
            c.delete("/v1/memory/namespaces/tenant-a:u1", headers=bearer("ka")), 403
        )
        assert_openai_error(c.get("/v1/memory/namespaces", headers=bearer("ka")), 403)
        wait_until(lambda: keyed.store.count("tenant-a:u1") == 2)
        listed = c.get("/v1/memory/namespaces", headers=bearer("kr")).json()
        assert {"namespace": "tenant-a:u1", "count": 2} in listed["data"]
        assert (
            c.delete("/v1/memory/namespaces/tenant-a:u1", headers=bearer("kr")).json()["deleted"]
            == 2
        )
        # the default namespace is a namespace like any other
        assert_openai_error(
            c.post("/v1/memory/chat/completions", json=CHAT, headers=bearer("ka")), 403
        )


def test_gateway_key_is_not_sent_upstream(tmp_path: Path) -> None:
    up = UpstreamSettings(
        name="byok", url="http://upstream.test/v1", models=("byok-*",),
        forward_client_authorization=True, api_key="",
    )  # fmt: skip
    h = AppHarness(tmp_path, keys=KEYS, upstreams=(up,))
    h.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("ok"))
    )
    with h.client() as c:
        c.post("/v1/chat/completions", json=CHAT, headers=bearer("kr"))
        assert h.upstream.calls[-1].request.headers["authorization"] == "Bearer sk-upstream"
        body = {**CHAT, "model": "byok-1"}
        c.post(
            "/v1/chat/completions",
            json=body,
            headers={"x-memgate-key": "kr", **bearer("sk-client")},
        )
        assert h.upstream.calls[-1].request.headers["authorization"] == "Bearer sk-client"
        c.post("/v1/chat/completions", json=body, headers=bearer("kr"))
        assert "authorization" not in h.upstream.calls[-1].request.headers


def test_models_route_to_upstreams_and_merge(tmp_path: Path) -> None:
    local = UpstreamSettings(name="local", url="http://local.test/v1", models=("llama*",))
    h = AppHarness(tmp_path, upstreams=(local,))
    local_route = h.upstream.post("http://local.test/v1/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("from local"))
    )
    h.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("from default"))
    )
    h.upstream.get("http://local.test/v1/models").mock(
        return_value=httpx.Response(
            200, json={"object": "list", "data": [{"id": "llama3", "object": "model"}]}
        )
    )
    h.upstream.get("/models").mock(
        return_value=httpx.Response(
            200, json={"object": "list", "data": [{"id": "gpt-x", "object": "model"}]}
        )
    )
    with h.client() as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "llama3"})
        assert r.json()["choices"][0]["message"]["content"] == "from local"
        assert local_route.called
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "gpt-x"})
        assert r.json()["choices"][0]["message"]["content"] == "from default"
        ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert ids == ["llama3", "gpt-x"]


def test_rate_limit_is_429_with_retry_after(tmp_path: Path) -> None:
    keys = (KeySettings(name="slow", key_sha256=key_hash("ks"), admin=True, requests_per_minute=3),)
    h = AppHarness(tmp_path, keys=keys)
    h.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("ok"))
    )
    with h.client() as c:
        for _ in range(3):
            assert (
                c.post("/v1/chat/completions", json=CHAT, headers=bearer("ks")).status_code == 200
            )
        r = c.post("/v1/chat/completions", json=CHAT, headers=bearer("ks"))
        error = assert_openai_error(r, 429)
        assert error["type"] == "rate_limit_error"
        assert int(r.headers["retry-after"]) >= 1


def test_rate_limits_counted_in_redis_hold_for_the_whole_fleet(tmp_path: Path) -> None:
    """Two gateways (apps) sharing one Redis allow the key's rate once, not once each; with
    Redis gone, requests go through (and it is logged)."""
    from tests.processes import RedisServer

    redis = RedisServer().start()
    try:
        keys = (
            KeySettings(name="slow", key_sha256=key_hash("ks"), admin=True, requests_per_minute=4),
        )
        apps = [
            AppHarness(tmp_path / name, keys=keys, auth={"rate_limit_storage": redis.url})
            for name in ("one", "two")
        ]
        for h in apps:
            h.upstream.post("/chat/completions").mock(
                return_value=httpx.Response(200, json=completion("ok"))
            )
        with apps[0].client() as one, apps[1].client() as two:
            codes = [
                c.post("/v1/chat/completions", json=CHAT, headers=bearer("ks")).status_code
                for c in (one, two, one, two, one, two)
            ]
            assert codes == [200, 200, 200, 200, 429, 429]
            r = two.post("/v1/chat/completions", json=CHAT, headers=bearer("ks"))
            assert_openai_error(r, 429)
            assert 1 <= int(r.headers["retry-after"]) <= 60
            redis.stop()
            assert (
                one.post("/v1/chat/completions", json=CHAT, headers=bearer("ks")).status_code == 200
            )
    finally:
        redis.stop()


def test_rate_limiter_is_a_moving_window_of_a_minute() -> None:
    limiter = RateLimiter()
    for _ in range(2):
        limiter.check("k", 2)
    with pytest.raises(RateLimited) as info:
        limiter.check("k", 2)
    assert 58 <= int(info.value.headers["retry-after"]) <= 60  # a minute after the first
    assert limiter.wait("k", 2) >= 58
    limiter.check("other", 2)
    assert limiter.wait("third", 2) == 0


def test_a_hung_redis_costs_one_short_wait_then_limits_are_counted_here() -> None:
    """A Redis that accepts connections and never answers: the first request waits the
    limiter's timeout, the next ones not at all (the circuit is open), and the limit still
    holds, counted in this process."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])  # and never answer

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        limiter = RateLimiter(f"redis://127.0.0.1:{listener.getsockname()[1]}/0", timeout=0.2)
        times = []
        for _ in range(3):
            started = time.monotonic()
            asyncio.run(limiter.acheck("k", 3))
            times.append(time.monotonic() - started)
        assert times[0] < 1.0
        assert max(times[1:]) < 0.05
        with pytest.raises(RateLimited):
            asyncio.run(limiter.acheck("k", 3))
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


def test_one_tenants_wrong_keys_do_not_lock_out_anothers(tmp_path: Path) -> None:
    """Clients behind one address (a proxy): wrong keys are counted by address and key
    prefix, so tenant A's client with a stale key locks out A's key prefix only."""
    keys = (
        KeySettings(name="a", key_sha256=key_hash("tenantA-good"), admin=True),
        KeySettings(name="b", key_sha256=key_hash("tenantB-good"), admin=True),
    )
    with AppHarness(tmp_path, keys=keys, auth={"failed_keys_per_minute": 3}).client() as c:
        for i in range(5):
            c.get("/v1/memory/memories", headers=bearer(f"tenantA-stale{i}"))
        assert_openai_error(c.get("/v1/memory/memories", headers=bearer("tenantA-good")), 429)
        assert c.get("/v1/memory/memories", headers=bearer("tenantB-good")).status_code == 200


@pytest.mark.parametrize(
    ("patterns", "allowed", "denied"),
    [
        (("tenant-a:*",), ["tenant-a:", "tenant-a:x@y"], ["tenant-b:x", "tenant-a"]),
        (("exact",), ["exact"], ["exact2", "exac"]),
        (("*",), ["anything"], []),
    ],
)
def test_namespace_patterns(
    patterns: tuple[str, ...], allowed: list[str], denied: list[str]
) -> None:
    p = Principal(name="p", namespaces=patterns, admin=False)
    assert all(p.may_use(n) for n in allowed)
    assert not any(p.may_use(n) for n in denied)


def test_request_id_is_honoured_relayed_and_generated(harness: AppHarness, client: Any) -> None:
    harness.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("ok"))
    )
    r = client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert harness.upstream.calls[-1].request.headers["x-request-id"] == "abc-123"
    r = client.post(
        "/v1/chat/completions", json=CHAT, headers={"x-request-id": "bad id\twith spaces"}
    )
    generated = r.headers["x-request-id"]
    assert generated.startswith("req_")
    assert harness.upstream.calls[-1].request.headers["x-request-id"] == generated


def test_metrics_count_requests_recalls_and_upstream_errors(
    harness: AppHarness, client: Any
) -> None:
    harness.upstream.post("/chat/completions").mock(
        side_effect=[
            httpx.Response(200, json=completion("I remember")),
            httpx.Response(200, json=completion("ok")),
            *[httpx.Response(503, json={"error": {"message": "down"}})] * 3,
            *[httpx.ConnectError("refused")] * 3,
        ]
    )
    client.post(
        "/v1/memory/chat/completions?namespace=m",
        json={**CHAT, "messages": [{"role": "user", "content": "my cat is Tom"}]},
    )
    wait_until(lambda: harness.store.count("m") == 2)
    client.post(
        "/v1/memory/chat/completions?namespace=m",
        json={**CHAT, "messages": [{"role": "user", "content": "what is my cat"}]},
    )
    client.post("/v1/chat/completions", json=CHAT)
    client.post("/v1/chat/completions", json=CHAT)
    text = client.get("/metrics").text
    route = "/v1/memory/chat/completions"
    requests = "memgate_http_requests_total"
    assert metric(text, requests, route=route, method="POST", status="200") == 2
    assert metric(text, requests, route="/v1/chat/completions", method="POST", status="502") == 1
    assert metric(text, "memgate_recalls_total", outcome="empty") == 1
    assert metric(text, "memgate_recalls_total", outcome="hit") == 1
    assert metric(text, "memgate_memories_injected_total") in (1, 2)
    errors = "memgate_upstream_errors_total"
    assert metric(text, errors, upstream="default", status="503") == 3  # every attempt
    assert metric(text, errors, upstream="default", status="unreachable") == 3
    retries = "memgate_upstream_retries_total"
    assert metric(text, retries, upstream="default", reason="503") == 2
    assert metric(text, retries, upstream="default", reason="connect") == 2
    assert metric(text, "memgate_queue_depth") is not None
    assert "# TYPE memgate_queue_depth gauge" in text
    assert metric(text, "memgate_memories_written_total") == 2
    assert "# TYPE memgate_memories_written_total counter" in text
    # the client library's process and GC collectors
    assert (metric(text, "process_resident_memory_bytes") or 0) > 0
    assert metric(text, "python_gc_collections_total", generation="0") is not None
    assert "# TYPE memgate_http_request_duration_seconds histogram" in text


def test_isolation_randomized(tmp_path: Path) -> None:
    """Random namespaces and keys, many memories each: nothing crosses a namespace."""
    rng = random.Random(7)
    names = [f"t{i}:{rng.randrange(10**6)}" for i in range(6)]
    keys = (
        *tuple(
            KeySettings(name=n, key_sha256=key_hash(f"key-{n}"), namespaces=(n,), memory_api=True)
            for n in names
        ),
        KeySettings(name="root", key_sha256=key_hash("root"), admin=True),
    )
    h = AppHarness(tmp_path, keys=keys)
    words = ["apple", "river", "engine", "violin", "harbour", "quartz", "meadow", "lantern"]
    with h.client() as c:
        ids: dict[str, list[str]] = {}
        for n in names:
            memories = [
                {"content": f"{n} note {i} {rng.choice(words)} {rng.choice(words)}"}
                for i in range(40)
            ]
            r = c.post(
                f"/v1/memory/memories?namespace={n}",
                json={"memories": memories},
                headers=bearer(f"key-{n}"),
            )
            ids[n] = r.json()["ids"]
        for n in names:
            me = bearer(f"key-{n}")
            for word in words:
                hits = c.post(
                    f"/v1/memory/search?namespace={n}", json={"query": word, "k": 50}, headers=me
                ).json()["data"]
                assert all(h_["content"].startswith(n + " ") for h_ in hits)
            listed = c.get(f"/v1/memory/memories?namespace={n}&limit=100", headers=me).json()[
                "data"
            ]
            assert sorted(m["id"] for m in listed) == sorted(ids[n])
            for other in names:
                if other == n:
                    continue
                foreign = rng.choice(ids[other])
                assert (
                    c.get(f"/v1/memory/memories/{foreign}?namespace={n}", headers=me).status_code
                    == 404
                )
                assert (
                    c.delete(f"/v1/memory/memories/{foreign}?namespace={n}", headers=me).status_code
                    == 404
                )
                assert (
                    c.get(f"/v1/memory/memories?namespace={other}", headers=me).status_code == 403
                )
        victim = names[0]
        assert (
            c.delete(f"/v1/memory/namespaces/{victim}", headers=bearer("root")).json()["deleted"]
            == 40
        )
        for n in names[1:]:
            assert h.store.count(n) == 40
