"""The Responses API with memory: recall into instructions, relay, remember the exchange."""

from __future__ import annotations

import json
from typing import Any

import httpx
from litestar.testing import TestClient

from tests.conftest import AppHarness, wait_until
from tests.unit.test_chat import assert_openai_error


def response(text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "status": status,
        "model": "gpt-test",
        "output": [
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            },
            {"type": "function_call", "name": "lookup", "arguments": '{"q": 1}'},
        ],
        "usage": {"input_tokens": 9, "output_tokens": 2, "total_tokens": 11},
    }


def stream(text: str, end: str = "response.completed") -> bytes:
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {"status": "in_progress", "usage": None}},
        {"type": "response.output_text.delta", "delta": text},
        {"type": end, "response": response(text, end.removeprefix("response."))},
    ]
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def test_memories_go_into_instructions_and_the_exchange_is_remembered(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    sent: list[Any] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=response("Noted, Lisbon."))

    harness.upstream.post("/responses").mock(side_effect=answer)
    body = {"model": "gpt-test", "input": "I live in Lisbon.", "store": False, "extra": [1]}
    r = client.post("/v1/memory/responses?namespace=r", json=body)
    assert r.status_code == 200
    assert r.json() == response("Noted, Lisbon.")  # the answer as it came
    assert sent[0] == body  # nothing recalled yet: the body as it was
    wait_until(lambda: harness.store.count("r") == 2)
    listed = client.get("/v1/memory/memories?namespace=r").json()["data"]
    contents = {m["content"] for m in listed}
    assert contents == {"I live in Lisbon.", 'Noted, Lisbon.\n[called tool lookup({"q": 1})]'}

    follow = {
        "model": "gpt-test",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Where do I live?"}]}
        ],
    }
    r = client.post("/v1/memory/ns/r/responses", json=follow)
    assert r.headers["x-memory-recalled"] != "0"
    instructions = sent[1]["instructions"]
    assert instructions.startswith("Be brief.\n\nMemories from earlier conversations")
    assert "I live in Lisbon." in instructions
    assert sent[1]["input"] == follow["input"]
    # what the instructions already hold is not injected again
    r = client.post(
        "/v1/memory/ns/r/responses", json={**follow, "instructions": "I live in Lisbon."}
    )
    assert "Memories from earlier" not in sent[2]["instructions"] or (
        'I live in Lisbon."' not in sent[2]["instructions"].split("\n\n", 1)[1]
    )
    usage = client.get("/v1/memory/usage?group_by=namespace").json()
    assert usage["data"] == [
        {
            "namespace": "r",
            "requests": 3,
            "prompt_tokens": 27,
            "completion_tokens": 6,
            "total_tokens": 33,
        }
    ]


def test_a_streamed_response_is_relayed_and_remembered_only_when_completed(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    route = harness.upstream.post("/responses").mock(
        return_value=httpx.Response(
            200, content=stream("Hello there"), headers={"content-type": "text/event-stream"}
        )
    )
    body = {"model": "gpt-test", "input": "hi, I am Ana", "stream": True}
    with client.stream("POST", "/v1/memory/responses?namespace=s", json=body) as r:
        assert r.read() == stream("Hello there")
    wait_until(lambda: harness.store.count("s") == 2)
    route.return_value = httpx.Response(
        200,
        content=stream("half", "response.failed"),
        headers={"content-type": "text/event-stream"},
    )
    with client.stream("POST", "/v1/memory/responses?namespace=s2", json=body) as r:
        r.read()
    # a cleanly ended stream without response.completed is said to be cut
    route.return_value = httpx.Response(
        200,
        content=stream("x").rsplit(b"event:", 1)[0],
        headers={"content-type": "text/event-stream"},
    )
    with client.stream("POST", "/v1/memory/responses?namespace=s2", json=body) as r:
        tail = r.read().rsplit(b"\n\n", 2)[-2]
    assert tail.startswith(b"event: error\ndata: ")
    assert json.loads(tail.split(b"data: ", 1)[1])["code"] == "upstream_incomplete"
    assert harness.store.count("s2") == 0


def test_background_and_failed_responses_are_not_remembered(
    harness: AppHarness, client: TestClient[Any]
) -> None:
    harness.upstream.post("/responses").mock(
        side_effect=[
            httpx.Response(200, json=response("later", "queued")),
            httpx.Response(400, json={"error": {"message": "bad", "type": "x"}}),
        ]
    )
    body = {"model": "gpt-test", "input": "remember nothing", "background": True}
    assert client.post("/v1/memory/responses?namespace=b", json=body).status_code == 200
    assert client.post("/v1/memory/responses?namespace=b", json=body).status_code == 400
    assert client.get("/v1/memory/memories?namespace=b").json()["data"] == []


def test_bad_bodies_are_openai_errors(client: TestClient[Any]) -> None:
    for body, param in (
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": 3}, "input"),
        ({"model": "m", "input": "x", "instructions": 1}, "instructions"),
        ({"model": "m", "input": "x", "stream": "yes"}, "stream"),
    ):
        error = assert_openai_error(client.post("/v1/memory/responses", json=body), 400)
        assert error["param"] == param
    assert_openai_error(client.post("/v1/memory/responses", content=b"[1]"), 400)


def test_other_responses_calls_pass_through(harness: AppHarness, client: TestClient[Any]) -> None:
    harness.upstream.get("/responses/resp_1").mock(
        return_value=httpx.Response(200, json=response("stored"))
    )
    r = client.get("/v1/memory/responses/resp_1")
    assert r.json()["id"] == "resp_1"
