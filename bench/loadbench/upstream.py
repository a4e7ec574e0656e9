"""The fake upstream: a minimal fast OpenAI-compatible server, run in its own process as
``bench/load.py --serve-upstream PORT`` (see ``upstream_command``)."""

from __future__ import annotations

import json
import math
import re
import sys
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from loadbench import MODEL, REPO
from loadbench.texts import REPLIES

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_STREAM_FLAG = re.compile(rb'"stream"\s*:\s*true')


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


REF = "@REF@"  # replaced per request by a checksum of the request body


def completion_body(text: str) -> bytes:
    return _compact(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 24, "completion_tokens": 12, "total_tokens": 36},
        }
    )


def stream_events(text: str, pieces: int = 4) -> list[bytes]:
    """A short SSE answer: a role chunk, ``pieces`` content chunks, a finish chunk, [DONE]."""
    words = text.split(" ")
    step = max(1, math.ceil(len(words) / pieces))
    parts = [" ".join(words[i : i + step]) for i in range(0, len(words), step)]
    parts = [p if i == 0 else " " + p for i, p in enumerate(parts)]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        event = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + _compact(event) + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": p}) for p in parts]
    events.append(chunk({}, "stop"))
    events.append(b"data: [DONE]\n\n")
    return events


class BenchUpstream:
    """A stateless OpenAI-compatible upstream: a fixed small completion (one of a few canned
    replies, picked by the request body's length) or the same reply as a short SSE stream.
    Each reply ends with a reference derived from the request body, so that replies differ
    like real ones do and no cache keyed by text can flatter the gateway."""

    def __init__(self) -> None:
        self.json = [completion_body(f"{text} (ref {REF})") for text in REPLIES]
        self.streams = [stream_events(f"{text} (ref {REF})") for text in REPLIES]
        self.models = _compact(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        more = True
        while more:
            message = await receive()
            raw += message.get("body", b"")
            more = bool(message.get("more_body", False))
        path: str = scope["path"]
        if scope["method"] == "POST" and path.endswith("/chat/completions"):
            pick = len(raw) % len(REPLIES)
            ref = b"%08x" % zlib.crc32(raw)
            if _STREAM_FLAG.search(raw):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"text/event-stream"),
                            (b"cache-control", b"no-cache"),
                        ],
                    }
                )
                for event in self.streams[pick]:
                    event = event.replace(b"@REF@", ref)  # noqa: PLW2901
                    await send({"type": "http.response.body", "body": event, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await self._send(send, 200, self.json[pick].replace(b"@REF@", ref))
        elif path.endswith("/models"):
            await self._send(send, 200, self.models)
        else:
            await self._send(send, 404, b'{"error":{"message":"no such path","type":"bench"}}')

    @staticmethod
    async def _send(send: Send, status: int, payload: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(
        BenchUpstream(),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=2048,
    )


def upstream_command(port: int) -> list[str]:
    """The command line that runs ``serve_upstream(port)`` in a process of its own."""
    return [sys.executable, str(REPO / "bench" / "load.py"), "--serve-upstream", str(port)]
