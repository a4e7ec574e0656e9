"""The chat endpoints on fakes: respx upstream, in-memory store, hashed-word embedder."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from tests.conftest import AppHarness, completion, wait_until

ERROR_KEYS = {"message", "type", "param", "code"}


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_KEYS
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    return dict(body["error"])


def upstream_bodies(harness: AppHarness) -> list[dict[str, Any]]:
    return [json.loads(call.request.content) for call in harness.upstream.calls]


def test_memory_chat_remembers_then_recalls_and_injects(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    route = harness.upstream.post("/chat/completions")
    route.side_effect = [
        httpx.Response(200, json=completion("Noted, Lisbon it is.")),
        httpx.Response(200, json=completion("You live in Lisbon.")),
    ]
    first = {"model": "gpt-test", "messages": [{"role": "user", "content": "I live in Lisbon"}]}
    r = client.post("/v1/memory/chat/completions?namespace=alice", json=first)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "Noted, Lisbon it is."
    assert r.headers["x-memory-namespace"] == "alice"
    assert r.headers["x-memory-recalled"] == "0"
    wait_until(lambda: harness.store.count("alice") == 2)
    assert sorted(harness.store.contents("alice")) == ["I live in Lisbon", "Noted, Lisbon it is."]
    stored = list(harness.store.rows["alice"].values())
    assert all(m.metadata["model"] == "gpt-test" and m.created_at > 0 for m, _ in stored)

    second = {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Where do I live?"},
        ],
        "temperature": 0.2,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "auto",
        "n": 2,
        "logprobs": True,
        "response_format": {"type": "text"},
        "seed": 7,
        "stop": ["\n\n"],
        "x_unknown_field": {"nested": [1, 2.5, None]},
    }
    r = client.post("/v1/memory/chat/completions?namespace=alice", json=second)
    assert r.status_code == 200
    assert int(r.headers["x-memory-recalled"]) >= 1
    sent = upstream_bodies(harness)[-1]
    assert {k: v for k, v in sent.items() if k != "messages"} == {
        k: v for k, v in second.items() if k != "messages"
    }
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["system", "system", "user"]
    assert sent["messages"][0] == second["messages"][0]
    assert "I live in Lisbon" in sent["messages"][1]["content"]
    assert sent["messages"][2] == second["messages"][1]
    headers = harness.upstream.calls[-1].request.headers
    assert headers["authorization"] == "Bearer sk-upstream"


def test_namespaces_are_isolated_and_path_form_works(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    harness.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("ok"))
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "my secret word is walrus"}]}
    assert client.post("/v1/memory/ns/team-a/chat/completions", json=body).status_code == 200
    wait_until(lambda: harness.store.count("team-a") == 2)
    ask = {"model": "m", "messages": [{"role": "user", "content": "what is my secret word walrus"}]}
    r = client.post("/v1/memory/chat/completions?namespace=team-b", json=ask)
    assert r.headers["x-memory-recalled"] == "0"
    assert "walrus" not in json.dumps(upstream_bodies(harness)[-1]["messages"][:-1])
    r = client.post("/v1/memory/ns/team-a/chat/completions", json=ask)
    assert r.headers["x-memory-recalled"] != "0"
    assert r.headers["x-memory-namespace"] == "team-a"


def test_missing_namespace_uses_default(harness: AppHarness, client: TestClient[Any]) -> None:
    harness.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("ok"))
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
    r = client.post("/v1/memory/chat/completions", json=body)
    assert r.headers["x-memory-namespace"] == "default"
    wait_until(lambda: harness.store.count("default") == 2)


def test_upstream_errors_are_relayed_and_nothing_is_persisted(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    err = {
        "error": {
            "message": "bad key",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    harness.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(401, json=err, headers={"x-request-id": "req_1"})
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    r = client.post("/v1/memory/chat/completions?namespace=e", json=body)
    assert r.status_code == 401
    assert r.json() == err
    assert r.headers["x-upstream-request-id"] == "req_1"
    assert r.headers["x-request-id"].startswith("req_")
    harness.upstream.post("/chat/completions").mock(return_value=httpx.Response(500, text="oops"))
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 500
    assert r.text == "oops"
    assert harness.store.count("e") == 0
    assert harness.app.state["gateway"].service.outbox.depth() == 0


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (httpx.ConnectError("refused"), 502, "upstream_unreachable"),
        (httpx.ReadTimeout("slow"), 504, "upstream_timeout"),
        (httpx.ConnectTimeout("slow"), 504, "upstream_timeout"),
    ],
)
def test_upstream_failures_map_to_gateway_errors(
    harness: AppHarness, client: TestClient[Any], exc: Exception, status: int, code: str
) -> None:
    harness.upstream.post("/chat/completions").mock(side_effect=exc)
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    for path in ("/v1/memory/chat/completions", "/v1/chat/completions"):
        error = assert_openai_error(client.post(path, json=body), status)
        assert error["code"] == code
    assert harness.store.count("default") == 0


def test_passthrough_forwards_bytes_untouched(harness: AppHarness, client: TestClient[Any]) -> None:
    harness.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("hi"))
    )
    raw = b'{"model":"m",  "messages":[{"role":"user","content":"x"}],"temperature":1.0,"z":[1.50]}'
    r = client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200
    assert harness.upstream.calls[-1].request.content == raw
    assert harness.store.rows == {}


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b"", None),
        (b"[1,2]", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": ["hi"]}', "messages[0]"),
        (b'{"model": "m", "messages": [{"role": "user"}], "stream": "yes"}', "stream"),
    ],
)
def test_bad_chat_bodies_are_400(
    client: TestClient[Any], content: bytes, param: str | None
) -> None:
    for path in ("/v1/memory/chat/completions", "/v1/chat/completions"):
        error = assert_openai_error(client.post(path, content=content), 400)
        assert error["param"] == param
        assert error["type"] == "invalid_request_error"


def test_bad_namespace_is_400(client: TestClient[Any]) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    error = assert_openai_error(
        client.post("/v1/memory/chat/completions?namespace=a%20b", json=body), 400
    )
    assert error["param"] == "namespace"
    assert_openai_error(client.post("/v1/memory/ns/a$b/chat/completions", json=body), 400)


def test_body_over_the_limit_is_413(tmp_path: Any) -> None:
    harness = AppHarness(tmp_path, server={"max_body_bytes": 1000})
    with harness.client() as client:
        big = {"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]}
        error = assert_openai_error(client.post("/v1/memory/chat/completions", json=big), 413)
        assert error["code"] == "payload_too_large"
        # the plain chat, answered before Litestar's routing, keeps the same limit
        route = harness.upstream.post("/chat/completions").mock(
            return_value=httpx.Response(200, json=completion("small enough"))
        )
        error = assert_openai_error(client.post("/v1/chat/completions", json=big), 413)
        assert error["code"] == "payload_too_large"
        # ... also when the body comes without a length (chunked): counted as it arrives
        chunks = iter([json.dumps(big).encode()[:600], json.dumps(big).encode()[600:]])
        r = client.post(
            "/v1/chat/completions", content=chunks, headers={"content-type": "application/json"}
        )
        assert assert_openai_error(r, 413)["code"] == "payload_too_large"
        assert not route.called
        small = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        r = client.post("/v1/chat/completions", json=small)
        assert r.json()["choices"][0]["message"]["content"] == "small enough"


def test_unknown_route_and_method_are_openai_shaped(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    assert_openai_error(client.get("/nope"), 404)
    assert_openai_error(client.put("/v1/memory/search"), 405)
    # OpenAI's list of stored chat completions: the upstream's (only POST is the plain chat)
    harness.upstream.get("/chat/completions").mock(
        return_value=httpx.Response(200, json={"object": "list", "data": []})
    )
    assert client.get("/v1/chat/completions").json() == {"object": "list", "data": []}
    # an unknown /v1 path is the upstream's to answer (it may be an endpoint newer than us)
    harness.upstream.get("/nope").mock(
        return_value=httpx.Response(
            404,
            json={
                "error": {
                    "message": "Unknown",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
        )
    )
    assert assert_openai_error(client.get("/v1/nope"), 404)["message"] == "Unknown"


def test_store_outage_fails_open(harness: AppHarness, client: TestClient[Any]) -> None:
    harness.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("still here"))
    )
    harness.store.down = True
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    r = client.post("/v1/memory/chat/completions?namespace=o", json=body)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "still here"
    assert r.headers["x-memory-recalled"] == "0"
    assert "store" in r.headers["x-memory-error"]
    assert client.get("/readyz").status_code == 503
    assert_openai_error(client.post("/v1/memory/search?namespace=o", json={"query": "x"}), 503)
    harness.store.down = False
    wait_until(lambda: harness.store.count("o") == 2, timeout=15)
    assert client.get("/readyz").status_code == 200


def test_streaming_relays_chunks_and_remembers(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    events = [
        {
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}
            ]
        },
        {"choices": [{"index": 0, "delta": {"content": " Bob"}, "finish_reason": "stop"}]},
    ]
    payload = (
        b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    )
    harness.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(
            200, content=payload, headers={"content-type": "text/event-stream"}
        )
    )
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "I am Bob"}]}
    with client.stream("POST", "/v1/memory/chat/completions?namespace=s", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-memory-namespace"] == "s"
        data = r.read()
    assert data == payload
    wait_until(lambda: harness.store.count("s") == 2)
    assert sorted(harness.store.contents("s")) == ["Hi Bob", "I am Bob"]


def test_tool_call_reply_is_remembered_as_a_description(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    reply = completion("")
    reply["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    harness.upstream.post("/chat/completions").mock(return_value=httpx.Response(200, json=reply))
    body = {"model": "m", "messages": [{"role": "user", "content": "weather in Paris?"}]}
    r = client.post("/v1/memory/chat/completions?namespace=t", json=body)
    assert r.json() == reply
    wait_until(lambda: harness.store.count("t") == 2)
    assert '[called tool get_weather({"city":"Paris"})]' in harness.store.contents("t")
    # the follow-up with the tool result adds no new user turn, only the answer
    harness.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("It is 18C in Paris."))
    )
    follow = {
        "model": "m",
        "messages": [
            *body["messages"],
            reply["choices"][0]["message"],
            {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        ],
    }
    assert client.post("/v1/memory/chat/completions?namespace=t", json=follow).status_code == 200
    wait_until(lambda: harness.store.count("t") == 3)
    assert "It is 18C in Paris." in harness.store.contents("t")


def test_models_are_relayed(harness: AppHarness, client: TestClient[Any]) -> None:
    models = {"object": "list", "data": [{"id": "m1", "object": "model", "owned_by": "x"}]}
    harness.upstream.get("/models").mock(return_value=httpx.Response(200, json=models))
    for path in ("/v1/models", "/v1/memory/models", "/v1/memory/ns/abc/models"):
        r = client.get(path)
        assert r.status_code == 200
        assert r.json() == models


def test_apps_can_name_users_by_header_or_by_the_user_field(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    harness = AppHarness(
        tmp_path, server={"namespace_sources": ["path", "query", "header", "user"]}
    )
    harness.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("ok"))
    )

    def say(text: str, **extra: Any) -> httpx.Response:
        headers = extra.pop("headers", {})
        body = {"model": "m", "messages": [{"role": "user", "content": text}], **extra}
        return client.post("/v1/memory/chat/completions", json=body, headers=headers)

    with harness.client() as client:
        assert (
            say("My bank PIN hint is the walrus", user="dave").headers["x-memory-namespace"]
            == "dave"
        )
        wait_until(lambda: harness.store.count("dave") == 2)
        r = say("What is my bank PIN hint?", user="erin")
        assert r.headers["x-memory-namespace"] == "erin"
        assert r.headers["x-memory-recalled"] == "0"  # erin never gets dave's memories
        assert "walrus" not in json.dumps(upstream_bodies(harness)[-1]["messages"])
        assert upstream_bodies(harness)[-1]["user"] == "erin"  # the field still goes upstream
        r = say("What is my bank PIN hint?", user="dave")
        assert r.headers["x-memory-recalled"] != "0"
        r = say("hi", headers={"x-memory-namespace": "via-header"}, user="dave")
        assert r.headers["x-memory-namespace"] == "via-header"  # the header comes first
        listed = client.get("/v1/memory/memories", headers={"x-memory-namespace": "dave"})
        assert len(listed.json()["data"]) >= 2
        assert assert_openai_error(say("x", user="not a namespace"), 400)["param"] == "user"
    # without keys and without a namespace: the global one, said once in the log
    plain = AppHarness(tmp_path / "plain")
    plain.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("ok"))
    )
    with plain.client() as client:
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "user": "dave"}
        for _ in range(2):
            r = client.post("/v1/memory/chat/completions", json=body)
            assert r.headers["x-memory-namespace"] == "default"  # "user" is not a source
    warned = [r for r in caplog.records if "named no namespace" in r.getMessage()]
    assert len(warned) == 1
