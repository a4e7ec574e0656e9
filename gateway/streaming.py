"""SSE relay: upstream bytes go to the client chunk by chunk as they arrive, while an
accumulator reads the same bytes to rebuild choice 0's text and tool calls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import msgspec

from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.upstream import ErrorHook, upstream_errors
from gateway.usage import usage_in

log = logging.getLogger("memgate.streaming")

# Said in the x-memory-error header, or a stream's error event, of an answer whose exchange
# could not be queued.
NOT_REMEMBERED = (
    "this exchange was not remembered: the gateway could not queue it (see its log for this "
    "request id)"
)


class ToolCall(msgspec.Struct, kw_only=True):
    id: str = ""
    type: str = "function"
    name: str = ""
    arguments: str = ""


class StreamAccumulator:
    """Parses an OpenAI chat-completions SSE stream incrementally (any chunking of bytes)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self.text_parts: list[str] = []
        self.tool_calls: dict[int, ToolCall] = {}
        self.finish_reason: str | None = None
        self.done = False
        self.error: Any = None
        self.model = ""
        self.usage: Any = None
        self.response: dict[str, Any] | None = None  # a Responses stream's final response

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def completed(self) -> bool:
        """The stream ended as a finished answer: a finish reason seen, and no error (a
        ``[DONE]`` alone is not enough: a stream cut by something between the upstream and
        the gateway may end with it)."""
        return self.error is None and self.finish_reason is not None

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while True:
            cut = self._buffer.find(b"\n")
            if cut < 0:
                return
            line = self._buffer[:cut].rstrip(b"\r")
            self._buffer = self._buffer[cut + 1 :]
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not line:  # blank line: dispatch the event
            if self._data:
                self._event(b"\n".join(self._data))
                self._data = []
            return
        if line.startswith(b":"):
            return
        field, _, value = line.partition(b":")
        if field == b"data":
            self._data.append(value[1:] if value.startswith(b" ") else value)

    def _event(self, data: bytes) -> None:
        if data.strip() == b"[DONE]":
            self.done = True
            return
        try:
            event = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return
        if not isinstance(event, dict):
            return
        if event.get("error") is not None:
            self.error = event["error"]
            return
        usage = usage_in(event)
        if usage is not None:
            self.usage = usage
        kind = event.get("type")
        if isinstance(kind, str) and (kind == "error" or kind.startswith("response.")):
            self._response_event(kind, event)
            return
        if isinstance(event.get("model"), str):
            self.model = event["model"]
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                self.text_parts.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    self._tool_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])

    def _response_event(self, kind: str, event: dict[str, Any]) -> None:
        """An event of a Responses API stream: its text deltas, and its end (the whole
        response in ``response.completed``; failed, incomplete or an error otherwise)."""
        response = event.get("response")
        if isinstance(response, dict) and isinstance(response.get("model"), str):
            self.model = response["model"]
        if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            self.text_parts.append(event["delta"])
        elif kind in {"response.completed", "response.incomplete"}:
            # incomplete: cut by max_output_tokens or the like, as a chat's finish_reason
            # "length": an answer all the same
            self.response = response if isinstance(response, dict) else None
            self.done = True
            self.finish_reason = kind.removeprefix("response.")
        elif kind in {"response.failed", "error"}:
            self.error = (response or {}).get("error") if kind != "error" else event
            self.error = self.error or kind

    def _tool_call(self, call: dict[str, Any]) -> None:
        index = int(call.get("index", len(self.tool_calls)))
        acc = self.tool_calls.setdefault(index, ToolCall())
        if call.get("id"):
            acc.id = str(call["id"])
        if call.get("type"):
            acc.type = str(call["type"])
        function = call.get("function") or {}
        if function.get("name"):
            acc.name += str(function["name"])
        if function.get("arguments"):
            acc.arguments += str(function["arguments"])


_EVENT_END = re.compile(rb"\r?\n\r?\n")
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null|"usage"\s*:\s*null\s*,?')


class UsageStripper:
    """Takes out of a chat stream what ``stream_options.include_usage`` added when the gateway
    asked for it and the client did not: the last chunk that carries only the usage (no
    choices), and the ``"usage": null`` of the other chunks. Whole events pass at once; an
    event split across reads is held until its end arrives."""

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._tail + chunk
        out: list[bytes] = []
        start = 0
        for end in _EVENT_END.finditer(data):
            out.append(self._event(data[start : end.start()], end.group()))
            start = end.end()
        self._tail = data[start:]
        return b"".join(out)

    def flush(self) -> bytes:
        tail, self._tail = self._tail, b""
        return tail

    @staticmethod
    def _event(event: bytes, end: bytes) -> bytes:
        if b'"usage"' not in event:
            return event + end
        payload = b"\n".join(
            line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")
        )
        try:
            decoded = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            return event + end
        if not isinstance(decoded, dict):
            return event + end
        if decoded.get("usage") is not None and not decoded.get("choices"):
            return b""  # the usage chunk the client did not ask for
        if "usage" in decoded and decoded["usage"] is None:
            return _NULL_USAGE.sub(b"", event, count=1) + end
        return event + end


class NotRemembered(GatewayError):
    """A complete answer whose exchange could not be queued: said in the stream, since its
    headers are gone."""

    status = 503
    type = "service_unavailable"
    default_code = "memory_not_remembered"


_DONE = re.compile(rb"(?:^|\n)(data: ?\[DONE\])")


def _split_at_done(chunk: bytes) -> tuple[bytes, bytes]:
    """``chunk`` cut where its ``[DONE]`` event starts (all of it after, when the event
    started in an earlier chunk and is already on its way)."""
    found = None
    for found in _DONE.finditer(chunk):  # noqa: B007 - the last one
        pass
    if found is None:
        return b"", chunk
    return chunk[: found.start(1)], chunk[found.start(1) :]


def sse_error_event(error: GatewayError) -> bytes:
    """An SSE event carrying an OpenAI-shaped error, for a stream cut after it started."""
    return b"data: " + msgspec.json.encode(error.body()) + b"\n\n"


def responses_error_event(error: GatewayError) -> bytes:
    """The same in a Responses API stream: an ``error`` event."""
    body = error.body()["error"]
    event = {"type": "error", "code": body["code"], "message": body["message"], "param": None}
    return b"event: error\ndata: " + msgspec.json.encode(event) + b"\n\n"


ErrorEvent = Callable[[GatewayError], bytes]


async def relay(
    response: httpx.Response,
    accumulator: StreamAccumulator,
    on_complete: Callable[[StreamAccumulator], Awaitable[bool]],
    *,
    upstream_name: str,
    on_error: ErrorHook | None = None,
    deadline: float | None = None,
    strip_usage: bool = False,
    on_end: Callable[[StreamAccumulator], None] | None = None,
    error_event: ErrorEvent = sse_error_event,
) -> AsyncIterator[bytes]:
    """Yield the upstream's bytes as they arrive. ``on_complete`` runs only if the upstream
    finished the answer and every byte was handed on (a client that went away stops the
    iteration before that); when it says the exchange could not be remembered, an error event
    goes out before ``[DONE]``. The upstream response is always closed. With
    ``strip_usage`` the usage the gateway asked for is taken out (``UsageStripper``);
    ``on_end`` sees the accumulator once the stream is over, however it ended."""
    parts = _relay(
        response,
        accumulator,
        on_complete,
        stripper=UsageStripper() if strip_usage else None,
        upstream_name=upstream_name,
        on_error=on_error,
        deadline=deadline,
        error_event=error_event,
    )
    try:
        async with contextlib.aclosing(parts):  # a client that left closes the upstream too
            async for part in parts:
                if part:
                    yield part
    finally:
        if on_end is not None:
            on_end(accumulator)


def _incomplete(upstream_name: str, on_error: ErrorHook | None) -> None:
    if on_error:
        on_error(upstream_name, "incomplete")
    log.warning("upstream %s ended a stream without finishing it", upstream_name)


async def _relay(
    response: httpx.Response,
    accumulator: StreamAccumulator,
    on_complete: Callable[[StreamAccumulator], Awaitable[bool]],
    *,
    stripper: UsageStripper | None,
    upstream_name: str,
    on_error: ErrorHook | None,
    deadline: float | None,
    error_event: ErrorEvent,
) -> AsyncGenerator[bytes, None]:
    remembered = False
    try:
        try:
            with upstream_errors(upstream_name, on_error):
                chunks = response.aiter_bytes()
                while True:
                    try:
                        async with asyncio.timeout_at(deadline):
                            chunk = await anext(chunks)
                    except StopAsyncIteration:
                        if stripper is not None:
                            yield stripper.flush()
                        break
                    except TimeoutError as exc:
                        if on_error:
                            on_error(upstream_name, "timeout")
                        raise UpstreamTimeout(
                            f"upstream {upstream_name} did not finish the stream in time"
                        ) from exc
                    accumulator.feed(chunk)
                    if stripper is not None:
                        chunk = stripper.feed(chunk)
                    if accumulator.done and not accumulator.completed and not remembered:
                        # [DONE] without a finish reason: relayed as it came, not remembered
                        remembered = True
                        _incomplete(upstream_name, on_error)
                    if accumulator.done and accumulator.completed and not remembered:
                        # The answer is whole: commit it before the client sees its end, as
                        # the SDKs close the connection right after [DONE].
                        remembered = True
                        if not await on_complete(accumulator):
                            # said before [DONE], after the answer's last event
                            before, chunk = _split_at_done(chunk)
                            yield before
                            yield error_event(NotRemembered(NOT_REMEMBERED))
                    yield chunk
        except GatewayError as exc:
            log.warning("upstream stream cut: %s", exc.message)
            yield error_event(exc)
            return
    finally:
        await response.aclose()
    accumulator.feed(b"\n\n")  # flush a last event the upstream did not terminate
    if not accumulator.completed:
        # The upstream closed the stream cleanly but never finished the answer (no finish
        # reason, no [DONE]): to the client that is a cut stream, and nothing is remembered.
        if accumulator.error is None and not accumulator.done:
            _incomplete(upstream_name, on_error)
            yield error_event(
                UpstreamError(
                    f"upstream {upstream_name} ended the stream before finishing the answer",
                    code="upstream_incomplete",
                )
            )
        return
    if not remembered and not await on_complete(accumulator):
        yield error_event(NotRemembered(NOT_REMEMBERED))
