"""A fake OpenAI-compatible upstream: a small ASGI app that records what it received.

Behaviour is chosen by the request's ``model``:
- anything else: answers ``"echo: <last user text>"`` (JSON, or SSE word by word);
- ``fail-500`` / ``fail-400`` / ``fail-429``: an OpenAI-shaped error with that status;
- ``slow``: waits ``slow_seconds`` before answering;
- ``cut``: streams two chunks, then drops the connection (no ``[DONE]``);
- ``tool``: answers with a tool call to ``get_weather``; once the last message is the tool's
  result, answers ``"tool said: <its content>"`` instead (JSON, or SSE word by word);
- ``drip``: streams 5 chunks ``drip_interval`` seconds apart, and stops when its client (the
  gateway) closes the connection: ``left`` counts the drips cut short that way.

``/embeddings`` answers ``[len(text), 1.0]`` for each input. The stored objects' paths answer
as OpenAI's do (``stored``): a response retrieved, cancelled, deleted, its input items;
stored chat completions listed, retrieved, updated, deleted, their messages; a model
retrieved. Any other path is a 404.

Serve it on loopback with ``serve_in_thread`` (uvicorn in a thread) or run this module.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    query: str = ""


@dataclass
class FakeUpstream:
    requests: list[Received] = field(default_factory=list)
    slow_seconds: float = 3.0
    drip_interval: float = 0.3
    chunk_times: list[float] = field(default_factory=list)
    left: int = 0

    def last_body(self) -> Any:
        return self.requests[-1].body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        body = json.loads(raw) if raw else None
        path = scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        self.requests.append(Received(scope["method"], path, headers, body, query))
        if (answer := stored(scope["method"], path, body)) is not None:
            await _json(send, 200, answer)
            return
        if path.endswith("/models"):
            await _json(
                send,
                200,
                {
                    "object": "list",
                    "data": [{"id": "fake-model", "object": "model", "owned_by": "tests"}],
                },
            )
            return
        if path.endswith("/embeddings"):
            inputs = body.get("input") if isinstance(body, dict) else None
            texts = inputs if isinstance(inputs, list) else [inputs]
            await _json(
                send,
                200,
                {
                    "object": "list",
                    "data": [
                        {"object": "embedding", "index": i, "embedding": [float(len(str(t))), 1.0]}
                        for i, t in enumerate(texts)
                    ],
                    "model": body.get("model", ""),
                    "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)},
                },
            )
            return
        if path.endswith("/responses") and isinstance(body, dict):
            await _responses(send, body)
            return
        if not path.endswith("/chat/completions"):
            await _json(
                send,
                404,
                {
                    "error": {
                        "message": "no such path",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
            )
            return
        model = body.get("model", "")
        if model.startswith("fail-"):
            status = int(model.split("-", 1)[1])
            await _json(
                send,
                status,
                {
                    "error": {
                        "message": f"upstream says {status}",
                        "type": "server_error" if status >= 500 else "invalid_request_error",
                        "param": None,
                        "code": f"fake_{status}",
                    }
                },
            )
            return
        if model == "slow":
            await asyncio.sleep(self.slow_seconds)
        text = "echo: " + _last_user(body.get("messages", []))
        messages = body.get("messages") or [{}]
        calls_tool = model == "tool"
        if calls_tool and messages[-1].get("role") == "tool":
            calls_tool, text = False, f"tool said: {messages[-1].get('content')}"
        if body.get("stream"):
            options = body.get("stream_options") or {}
            stream = self._stream(
                send, model, text, calls_tool=calls_tool, usage=options.get("include_usage") is True
            )
            if model == "drip":
                await self._unless_left(stream, receive)
            else:
                await stream
        elif calls_tool:
            await _json(send, 200, _completion(model, None, tool_calls=[_tool_call()]))
        else:
            await _json(send, 200, _completion(model, text))

    async def _unless_left(self, work: Awaitable[None], receive: Receive) -> None:
        """``work``, cancelled when the client disconnects first (counted in ``left``)."""
        task = asyncio.ensure_future(work)

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(watch())
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            watcher.cancel()
            task.result()
        else:
            task.cancel()
            self.left += 1

    async def _stream(
        self, send: Send, model: str, text: str, *, calls_tool: bool, usage: bool = False
    ) -> None:
        """Chunks as OpenAI sends them; with ``usage`` (include_usage), every chunk has
        ``"usage": null`` and a last chunk without choices carries the usage."""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        words = text.split(" ")
        if calls_tool:
            call = _tool_call()
            deltas: list[dict[str, Any]] = [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ],
                },
                {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
            ]
        else:
            deltas = [{"role": "assistant", "content": ""}] + [
                {"content": (w if i == 0 else " " + w)} for i, w in enumerate(words)
            ]
        count = 5 if model == "drip" else len(deltas)
        for i in range(count):
            delta = deltas[i] if i < len(deltas) else {"content": "."}
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            if usage:
                chunk["usage"] = None
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + json.dumps(chunk).encode() + b"\n\n",
                    "more_body": True,
                }
            )
            self.chunk_times.append(time.monotonic())
            if model == "cut" and i == 1:
                raise ConnectionError("fake upstream cuts the stream")
            if model == "drip":
                await asyncio.sleep(self.drip_interval)
        final = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "delta": {},
                    "finish_reason": "tool_calls" if calls_tool else "stop",
                }
            ],
        }
        events = [final]
        if usage:
            final["usage"] = None
            words_out = len(text.split())
            events.append(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": final["created"],
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 3,
                        "completion_tokens": words_out,
                        "total_tokens": 3 + words_out,
                    },
                }
            )
        for event in events:
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + json.dumps(event).encode() + b"\n\n",
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


def _page(data: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": False,
    }


def stored(method: str, path: str, body: Any) -> dict[str, Any] | None:
    """The answer to a call on a stored object (by its id) of OpenAI's API, or None for any
    other call."""
    parts = path.removeprefix("/v1/").split("/")
    match method, parts:
        case "GET", ["models", model]:
            return {"id": model, "object": "model", "created": 1, "owned_by": "tests"}
        case "POST", ["responses", "input_tokens"]:
            return {"object": "response.input_tokens", "input_tokens": 3}
        case "GET", ["responses", rid]:
            return {**_response("fake-model", "stored"), "id": rid}
        case "DELETE", ["responses", rid]:
            return {"id": rid, "object": "response", "deleted": True}
        case "POST", ["responses", rid, "cancel"]:
            return {**_response("fake-model", "", "cancelled"), "id": rid}
        case "GET", ["responses", rid, "input_items"]:
            item = {"type": "input_text", "text": f"input of {rid}"}
            return _page(
                [
                    {
                        "id": "msg_in",
                        "type": "message",
                        "role": "user",
                        "status": "completed",
                        "content": [item],
                    }
                ]
            )
        case "GET", ["chat", "completions"]:
            return _page([_completion("fake-model", "stored")])
        case "GET", ["chat", "completions", cid]:
            return {**_completion("fake-model", "stored"), "id": cid}
        case "POST", ["chat", "completions", cid]:
            metadata = body.get("metadata") if isinstance(body, dict) else None
            return {**_completion("fake-model", "stored"), "id": cid, "metadata": metadata}
        case "DELETE", ["chat", "completions", cid]:
            return {"id": cid, "object": "chat.completion.deleted", "deleted": True}
        case "GET", ["chat", "completions", cid, "messages"]:
            return _page([{"id": f"{cid}-0", "role": "user", "content": "hi"}])
    return None


def _last_user(messages: list[Any]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
            return str(content)
    return ""


def _tool_call() -> dict[str, Any]:
    return {
        "id": "call_fake1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }


def _completion(
    model: str, text: str | None, tool_calls: list[Any] | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


def _response(model: str, text: str, status: str = "completed") -> dict[str, Any]:
    words = len(text.split())
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": [
            {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {"input_tokens": 4, "output_tokens": words, "total_tokens": 4 + words},
    }


async def _responses(send: Send, body: dict[str, Any]) -> None:
    """The Responses API: the answer echoes the last user input; streamed as its events."""
    value = body.get("input")
    if isinstance(value, str):
        said = value
    else:
        users = [i for i in value or [] if isinstance(i, dict) and i.get("role") == "user"]
        content = users[-1].get("content") if users else ""
        said = (
            content
            if isinstance(content, str)
            else " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        )
    model = str(body.get("model", ""))
    text = "echo: " + said
    if not body.get("stream"):
        await _json(send, 200, _response(model, text))
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    started = {**_response(model, "", "in_progress"), "output": [], "usage": None}
    events: list[dict[str, Any]] = [{"type": "response.created", "response": started}]
    for i, word in enumerate(text.split(" ")):
        events.append(
            {
                "type": "response.output_text.delta",
                "item_id": "msg_fake",
                "output_index": 0,
                "content_index": 0,
                "delta": word if i == 0 else " " + word,
            }
        )
    events.append({"type": "response.completed", "response": _response(model, text)})
    for n, event in enumerate(events):
        event["sequence_number"] = n
        await send(
            {
                "type": "http.response.body",
                "body": f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode(),
                "more_body": True,
            }
        )
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _json(send: Send, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"x-request-id", b"req_fake")],
        }
    )
    await send({"type": "http.response.body", "body": data})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_in_thread(app: Any, port: int | None = None, http: Any = "auto") -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a loopback port in a thread; yields its base URL.
    ``http``: uvicorn's protocol (``gateway.server.guarded_http(...)`` as ``memgate serve``)."""
    import uvicorn

    port = port or free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", http=http
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("fake server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


if __name__ == "__main__":
    import sys

    import uvicorn

    uvicorn.run(
        FakeUpstream(),
        host="127.0.0.1",
        port=int(sys.argv[1]) if len(sys.argv) > 1 else 8099,
        log_level="warning",
    )
