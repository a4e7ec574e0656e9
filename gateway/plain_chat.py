"""The plain chat pass-through, ``POST /v1/chat/completions`` (no memory), answered before
Litestar's routing.

It is the gateway's most frequent and cheapest request, and Litestar's layers (routing, the
guard, dependency injection, reading the body through its request, its exception middleware)
were a third of its Python time (docs/performance.md, "The plain chat before routing").
Here the same steps run in a line: the app's one telemetry wraps it as it wraps Litestar
(``Gateway.entry``: request id, metrics, access log), the app's guard checks the key and the
rate limits (``state.authenticate``, as on every route), the body limit
(``server.max_body_bytes``), then ``pipeline.plain_chat`` (upstream routing, retries and
fallbacks, usage, a stream relayed chunk by chunk by Litestar's streaming response, which
stops reading the upstream when the client leaves) and every error OpenAI-shaped by
``error_response``. Every other request, other methods on this path included, goes through
Litestar."""

from __future__ import annotations

from typing import Any, TypeGuard, cast

from litestar import Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, LifeSpanScope, Receive, Scope, Send

from gateway.errors import BadRequest, PayloadTooLarge, error_response
from gateway.pipeline import plain_chat
from gateway.state import authenticate, get_gateway

PATH = "/v1/chat/completions"


def is_plain_chat(scope: Scope | LifeSpanScope) -> TypeGuard[HTTPScope]:
    fields = cast("dict[str, Any]", scope)
    return bool(
        fields["type"] == ScopeType.HTTP and fields["path"] == PATH and fields["method"] == "POST"
    )


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request's body, refused (413) as soon as it is known to exceed ``limit``."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client closed the connection before its body arrived")
        chunk = cast("bytes", message.get("body", b""))
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def plain_chat_app(max_body: int) -> ASGIApp:
    """The ASGI app that answers a plain chat (``is_plain_chat``); the caller sets the scope's
    ``app`` and ``state`` as Litestar does, and wraps it in the app's telemetry."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["path_template"] = PATH  # the metrics' route label, as Litestar sets it
        request: Request[Any, Any, Any] = Request(scope, receive, send)
        try:
            await authenticate(request)  # the app's guard, as on every other route
            raw = await read_body(scope, receive, max_body)
            response = await plain_chat(get_gateway(request), request.state.principal, request, raw)
        except Exception as exc:  # every failure is answered as the API's error
            response = error_response(request, exc)
        await response.to_asgi_response(None, request)(scope, receive, send)

    return app
