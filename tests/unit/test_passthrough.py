"""Every other /v1 path goes to the upstream as it is, routed by the body's model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from litestar.testing import TestClient

from gateway.config import KeySettings, UpstreamSettings, key_hash
from tests.conftest import UPSTREAM, AppHarness
from tests.unit.test_chat import assert_openai_error


def test_json_endpoints_are_relayed_and_routed_by_model(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={"object": "list", "data": [{"embedding": [0.1, 0.2], "index": 0}]},
            headers={"x-request-id": "up-1", "openai-processing-ms": "7"},
        )

    harness.upstream.post("/embeddings").mock(side_effect=answer)
    body = {"model": "text-embedding-3-small", "input": "hello", "extra_field": {"kept": True}}
    r = client.post("/v1/embeddings", json=body, headers={"openai-beta": "x=1"})
    assert r.status_code == 200
    assert r.json()["data"][0]["embedding"] == [0.1, 0.2]
    assert r.headers["openai-processing-ms"] == "7"
    assert r.headers["x-upstream-request-id"] == "up-1"
    assert json.loads(seen[0].content) == body  # byte for byte, unknown fields too
    assert seen[0].headers["authorization"] == "Bearer sk-upstream"
    assert seen[0].headers["openai-beta"] == "x=1"


def test_uploads_queries_methods_and_binary_answers(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    uploads: list[httpx.Request] = []

    def transcribe(request: httpx.Request) -> httpx.Response:
        uploads.append(request)
        return httpx.Response(200, json={"text": "hello there"})

    harness.upstream.post("/audio/transcriptions").mock(side_effect=transcribe)
    r = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", b"RIFF....WAVE", "audio/wav")},
        data={"model": "whisper-1"},
    )
    assert r.json() == {"text": "hello there"}
    assert uploads[0].headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b"RIFF....WAVE" in uploads[0].content
    harness.upstream.get("/files", params={"limit": "2"}).mock(
        return_value=httpx.Response(200, json={"object": "list", "data": []})
    )
    assert client.get("/v1/files?limit=2").json() == {"object": "list", "data": []}
    harness.upstream.delete("/files/file-1").mock(
        return_value=httpx.Response(200, json={"id": "file-1", "deleted": True})
    )
    assert client.delete("/v1/files/file-1").json()["deleted"] is True
    harness.upstream.post("/audio/speech").mock(
        return_value=httpx.Response(
            200, content=b"ID3\x00mp3", headers={"content-type": "audio/mpeg"}
        )
    )
    r = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "alloy"})
    assert r.content == b"ID3\x00mp3"
    assert r.headers["content-type"] == "audio/mpeg"


def test_streams_are_relayed_and_upstream_errors_keep_their_status(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    events = b'event: response.output_text.delta\ndata: {"delta": "Hi"}\n\n' * 3
    harness.upstream.post("/responses").mock(
        return_value=httpx.Response(
            200, content=events, headers={"content-type": "text/event-stream"}
        )
    )
    r = client.post("/v1/responses", json={"model": "gpt-4o", "input": "hi", "stream": True})
    assert r.content == events
    assert r.headers["content-type"].startswith("text/event-stream")
    harness.upstream.post("/moderations").mock(
        return_value=httpx.Response(
            400,
            json={
                "error": {
                    "message": "bad",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
        )
    )
    r = client.post("/v1/moderations", json={"model": "omni-moderation-latest", "input": 5})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "bad"


def test_memory_paths_are_never_passed_through(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    for path in ("/v1/memory/memories/x/y/z", "/v1/memory/search/x", "/v1/memory/ns/a/search"):
        assert_openai_error(client.post(path, json={"model": "m"}), 404)
    assert harness.upstream.calls.call_count == 0


def test_other_calls_under_the_memory_base_urls_pass_through(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    """An SDK whose base URL is .../v1/memory or .../v1/memory/ns/NS makes every call there."""
    harness.upstream.post("/embeddings").mock(return_value=httpx.Response(200, json={"ok": 1}))
    for base in ("/v1/memory", "/v1/memory/ns/alice"):
        r = client.post(f"{base}/embeddings", json={"model": "e", "input": "x"})
        assert r.json() == {"ok": 1}


def test_same_keys_and_model_routing(tmp_path: Path) -> None:
    local = UpstreamSettings(name="local", url="http://local.test/v1", models=("llama*",))
    keys = (KeySettings(name="k", key_sha256=key_hash("good"), namespaces=("x",)),)
    h = AppHarness(tmp_path, keys=keys, upstreams=(local,))
    with h.client() as c:
        assert_openai_error(c.post("/v1/embeddings", json={"model": "m", "input": "x"}), 401)
    # a second upstream gets its own mock: the harness transport serves both hosts
    import respx

    router = respx.MockRouter(assert_all_called=False)
    router.post("http://local.test/v1/embeddings").mock(
        return_value=httpx.Response(200, json={"from": "local"})
    )
    router.post(f"{UPSTREAM}/embeddings").mock(
        return_value=httpx.Response(200, json={"from": "default"})
    )
    from gateway.app import create_app
    from tests.fakes import FakeEmbedder, MemStore

    app = create_app(
        h.settings,
        store=MemStore(),
        embedder=FakeEmbedder(),
        transport=httpx.MockTransport(router.async_handler),
    )
    with TestClient(app) as c:
        key = {"authorization": "Bearer good"}
        assert c.post(
            "/v1/embeddings", json={"model": "llama3", "input": "x"}, headers=key
        ).json() == {"from": "local"}
        assert c.post(
            "/v1/embeddings", json={"model": "text-e", "input": "x"}, headers=key
        ).json() == {"from": "default"}


# Calls of OpenAI's API on paths where the gateway answers another method itself, or below them
WALK = [
    ("GET", "responses/resp_1"),
    ("DELETE", "responses/resp_1"),
    ("POST", "responses/resp_1/cancel"),
    ("GET", "responses/resp_1/input_items"),
    ("POST", "responses/input_tokens"),
    ("GET", "responses"),
    ("GET", "chat/completions"),
    ("GET", "chat/completions/abc"),
    ("POST", "chat/completions/abc"),
    ("DELETE", "chat/completions/abc"),
    ("GET", "chat/completions/abc/messages"),
    ("PUT", "chat"),
    ("GET", "models/gpt-4o"),
    ("DELETE", "models/ft:gpt-4o:x"),
    ("POST", "models"),
]


def test_every_path_below_and_beside_the_memory_endpoints_passes_through(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    """Litestar's router does not fall back from ``.../responses`` (a static segment of the
    memory routes) to the catch-all route: every such path reaches the upstream anyway, in
    every base URL form, without the namespace parameter."""
    seen: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.raw_path.decode()))
        return httpx.Response(200, json={"ok": 1})

    harness.upstream.route().mock(side_effect=answer)
    for base in ("/v1", "/v1/memory", "/v1/memory/ns/alice"):
        for method, rest in WALK:
            seen.clear()
            r = client.request(method, f"{base}/{rest}?namespace=alice&after=x")
            assert (r.status_code, r.json()) == (200, {"ok": 1}), (base, method, rest, r.text)
            assert seen == [(method, f"/v1/{rest}?after=x")], (base, method, rest)
        # the same guard against climbing out of /v1
        r = client.get(f"{base}/responses/..%2F..%2Fadmin")
        assert_openai_error(r, 400)
