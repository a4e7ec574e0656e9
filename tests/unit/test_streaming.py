from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import pytest
import respx

from gateway.streaming import StreamAccumulator, relay


def sse(*events: Any, done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }


STREAM = sse(
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo ünï"}),
    chunk({"content": "IGNORED"}, index=1),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_", "arguments": ""},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": '{"city":'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
    chunk({}, finish="tool_calls"),
)


@pytest.mark.parametrize("seed", range(5))
def test_accumulator_handles_any_chunking(seed: int) -> None:
    rng = random.Random(seed)
    acc = StreamAccumulator()
    data = STREAM.replace(b"\n\n", b"\r\n\r\n") if seed % 2 else STREAM
    i = 0
    while i < len(data):
        n = rng.randint(1, 40)
        acc.feed(data[i : i + n])
        i += n
    assert acc.text == "Hello ünï"
    assert acc.done
    assert acc.completed
    assert acc.finish_reason == "tool_calls"
    call = acc.tool_calls[0]
    assert (call.id, call.name, call.arguments) == ("call_1", "get_weather", '{"city": "Paris"}')


def test_accumulator_error_event_is_not_complete() -> None:
    acc = StreamAccumulator()
    acc.feed(sse(chunk({"content": "x"}), {"error": {"message": "boom"}}))
    assert not acc.completed
    acc = StreamAccumulator()
    acc.feed(sse(chunk({"content": "x"}), done=False))
    assert not acc.completed


async def _collect(response: httpx.Response) -> tuple[bytes, list[StreamAccumulator]]:
    completed: list[StreamAccumulator] = []

    async def on_complete(acc: StreamAccumulator) -> bool:
        completed.append(acc)
        return True

    out = b""
    async for part in relay(response, StreamAccumulator(), on_complete, upstream_name="u"):
        out += part
    return out, completed


def test_relay_passes_bytes_through_and_completes() -> None:
    async def run() -> None:
        with respx.mock() as mock:
            mock.get("http://up/s").mock(
                return_value=httpx.Response(
                    200, content=STREAM, headers={"content-type": "text/event-stream"}
                )
            )
            async with httpx.AsyncClient() as client:
                response = await client.send(
                    client.build_request("GET", "http://up/s"), stream=True
                )
                out, completed = await _collect(response)
        assert out == STREAM
        assert len(completed) == 1
        assert completed[0].text == "Hello ünï"
        assert response.is_closed

    asyncio.run(run())


def test_relay_of_a_cut_stream_reports_an_error_and_does_not_complete() -> None:
    class Cut(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            yield sse(chunk({"content": "partial"}), done=False)
            raise httpx.ReadError("connection reset")

    async def run() -> None:
        with respx.mock() as mock:
            mock.get("http://up/s").mock(
                return_value=httpx.Response(
                    200, stream=Cut(), headers={"content-type": "text/event-stream"}
                )
            )
            async with httpx.AsyncClient() as client:
                response = await client.send(
                    client.build_request("GET", "http://up/s"), stream=True
                )
                out, completed = await _collect(response)
        assert completed == []
        last = out.strip().split(b"\n\n")[-1]
        error = json.loads(last.removeprefix(b"data: "))["error"]
        assert error["type"] == "upstream_error"
        assert set(error) == {"message", "type", "param", "code"}

    asyncio.run(run())


async def _close_after_first_part(parts: list[bytes]) -> tuple[list[StreamAccumulator], bool]:
    """Relay ``parts`` as separate chunks and close the relay (what a client disconnect does)
    after handing on the first one."""

    async def body() -> Any:
        for part in parts:
            yield part

    with respx.mock() as mock:
        mock.get("http://up/s").mock(return_value=httpx.Response(200, content=body()))
        async with httpx.AsyncClient() as client:
            response = await client.send(client.build_request("GET", "http://up/s"), stream=True)
            completed: list[StreamAccumulator] = []

            async def on_complete(acc: StreamAccumulator) -> bool:
                completed.append(acc)
                return True

            gen = relay(response, StreamAccumulator(), on_complete, upstream_name="u")
            await gen.__anext__()
            await gen.aclose()
    return completed, response.is_closed


def test_relay_closed_early_by_the_client_does_not_complete() -> None:
    cut = STREAM.index(b"data: [DONE]")
    completed, closed = asyncio.run(_close_after_first_part([STREAM[:cut], STREAM[cut:]]))
    assert completed == []
    assert closed


def test_relay_remembers_before_the_client_sees_done() -> None:
    """The SDKs close the connection as soon as they read [DONE]: the answer is whole then."""
    completed, closed = asyncio.run(_close_after_first_part([STREAM]))
    assert len(completed) == 1
    assert completed[0].text == "Hello ünï"
    assert closed
