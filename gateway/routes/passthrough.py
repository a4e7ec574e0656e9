"""Every other ``/v1/*`` path (embeddings, responses, moderations, audio, images, files, ...):
passed through to the upstream unchanged, with the same keys, rate limits and model routing as
the chat, so that an app pointing ``OPENAI_BASE_URL`` at the gateway keeps working past its
first call that is not a chat. Only the ``/v1/memory/*`` endpoints read or write memory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote, unquote_plus

import httpx
import msgspec
from litestar import HttpMethod, Request, Response, route
from litestar.handlers import HTTPRouteHandler
from litestar.response import Stream

from gateway.auth import Principal
from gateway.errors import PASSTHROUGH_ERRORS, BadRequest, GatewayError, NotFound
from gateway.pipeline import upstream_client_headers
from gateway.state import GatewayState
from gateway.streaming import StreamAccumulator
from gateway.upstream import Upstream, relayed_headers, upstream_errors
from gateway.usage import Account, usage_of_body

log = logging.getLogger("memgate.passthrough")


class _Model(msgspec.Struct):
    model: str | None = None


_decode_model = msgspec.json.Decoder(_Model).decode


def model_of(raw: bytes, content_type: str) -> str | None:
    """The ``model`` a JSON body names (what routes it), or None (then the default upstream
    serves it: a multipart upload, a GET, a body without one)."""
    if not raw or "json" not in content_type:
        return None
    try:
        return _decode_model(raw).model
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None  # the upstream says what is wrong with it


METHODS = [HttpMethod.GET, HttpMethod.POST, HttpMethod.PUT, HttpMethod.PATCH, HttpMethod.DELETE]
# The memory API's own names under /v1/memory: an unknown path below them is a 404 of ours.
MEMORY_ENDPOINTS = frozenset({"memories", "search", "namespaces", "ns", "usage", "recall"})


@route(
    "/v1/{path:path}",
    http_method=METHODS,
    summary="Any other OpenAI endpoint (pass-through)",
    status_code=200,
    responses=PASSTHROUGH_ERRORS,
)
async def passthrough(
    gw: GatewayState, principal: Principal, request: Request[Any, Any, Any], path: str
) -> Response[Any]:
    """Any other ``/v1`` endpoint of the OpenAI API, relayed to the upstream as it is (a
    stream as it arrives); a JSON body's ``model`` chooses the upstream."""
    path = path.lstrip("/")
    if path == "memory" or path.startswith("memory/"):
        raise NotFound(f"no memory endpoint /v1/{path}", param="path")
    return await relay_other(gw, principal, request, path)


@route(
    "/v1/memory/{path:path}",
    http_method=METHODS,
    summary="Any other OpenAI endpoint under the memory base URL (pass-through, no memory)",
    status_code=200,
    responses=PASSTHROUGH_ERRORS,
)
async def passthrough_memory_base(
    gw: GatewayState, principal: Principal, request: Request[Any, Any, Any], path: str
) -> Response[Any]:
    """An app whose base URL is ``.../v1/memory`` makes its other calls (embeddings, files,
    ...) under it: they are passed through like ``/v1/...``, without memory."""
    path = path.lstrip("/")
    if path.split("/", 1)[0] in MEMORY_ENDPOINTS:
        raise NotFound(f"no memory endpoint /v1/memory/{path}", param="path")
    return await relay_other(gw, principal, request, path)


@route(
    "/v1/memory/ns/{namespace:str}/{path:path}",
    http_method=METHODS,
    summary="Any other OpenAI endpoint under a namespace's base URL (pass-through, no memory)",
    status_code=200,
    responses=PASSTHROUGH_ERRORS,
)
async def passthrough_namespace_base(
    gw: GatewayState,
    principal: Principal,
    request: Request[Any, Any, Any],
    namespace: str,
    path: str,
) -> Response[Any]:
    """Likewise under ``.../v1/memory/ns/NS`` (the namespace plays no part)."""
    path = path.lstrip("/")
    if path.split("/", 1)[0] in MEMORY_ENDPOINTS:
        raise NotFound(f"no memory endpoint {path!r} under a namespace", param="path")
    return await relay_other(gw, principal, request, path)


# OpenAI's paths where the gateway answers one method itself: the memory chat
# (``chat/completions``) and the Responses API with memory (``responses``) under the memory base
# URLs, and the model list (``models``, also under ``/v1``). Litestar's router never falls back
# from a static path segment to a ``{path:path}`` route: under ``/v1/memory/ns/NS`` a path below
# one of them (``responses/resp_1/cancel``) would meet our 404, and any other method on one
# (``GET .../chat/completions``, stored completions) our 405. So each gets pass-through routes
# of its own: the other methods on the path, and every path below each of its segments.
OPENAI_PATHS_WITH_MEMORY = {
    "chat/completions": HttpMethod.POST,
    "responses": HttpMethod.POST,
    "models": HttpMethod.GET,
}
MEMORY_BASES = ("/v1/memory", "/v1/memory/ns/{namespace:str}")

Relay = Callable[..., Awaitable[Response[Any]]]


def _relay_exact(rest: str) -> Relay:
    async def relay(
        gw: GatewayState, principal: Principal, request: Request[Any, Any, Any]
    ) -> Response[Any]:
        return await relay_other(gw, principal, request, rest)

    return relay


def _relay_below(prefix: str) -> Relay:
    async def relay(
        gw: GatewayState, principal: Principal, request: Request[Any, Any, Any], path: str
    ) -> Response[Any]:
        return await relay_other(gw, principal, request, f"{prefix}/{path.lstrip('/')}")

    return relay


def _hidden(path: str, methods: list[HttpMethod], relay: Relay) -> HTTPRouteHandler:
    return route(path, http_method=methods, include_in_schema=False, status_code=200)(relay)


def shared_path_routes() -> list[HTTPRouteHandler]:
    """The pass-through routes of ``OPENAI_PATHS_WITH_MEMORY`` under every base URL (left out
    of /docs: the three catch-all routes describe them)."""
    handlers: list[HTTPRouteHandler] = []
    for base in ("/v1", *MEMORY_BASES):
        for rest, own in OPENAI_PATHS_WITH_MEMORY.items():
            if base == "/v1" and rest != "models":
                continue  # POST /v1/chat/completions is the plain chat; /v1/responses is free
            handlers.append(
                _hidden(f"{base}/{rest}", [m for m in METHODS if m != own], _relay_exact(rest))
            )
            if base == "/v1":
                continue  # /v1/models is a plain route: the paths below it reach ``passthrough``
            segments = rest.split("/")
            for n in range(1, len(segments) + 1):
                prefix = "/".join(segments[:n])
                if n < len(segments):  # ``chat`` alone: a node of the router's tree too
                    handlers.append(_hidden(f"{base}/{prefix}", METHODS, _relay_exact(prefix)))
                handlers.append(
                    _hidden(f"{base}/{prefix}/{{path:path}}", METHODS, _relay_below(prefix))
                )
    return handlers


def forwarded_path(raw_path: bytes, path: str) -> str:
    """``path`` (the routed rest of the request's path, percent-decoded) as the upstream gets
    it, below its ``/v1``, percent-encoded again; a ``BadRequest`` for any path that could
    reach past that prefix: an encoded slash or backslash anywhere in the request's raw path
    (``raw_path``), a dot segment (``.``, ``..``, also once more encoded), a backslash or a
    control character. Nothing is resolved: a client of the OpenAI API never sends these."""
    lowered = raw_path.lower()
    if b"%2f" in lowered or b"%5c" in lowered:
        raise BadRequest(
            "encoded slashes are not allowed in a path", param="path", code="invalid_path"
        )
    for segment in path.split("/"):
        decoded = unquote(segment)
        if (
            decoded in (".", "..")
            or "/" in decoded
            or "\\" in decoded
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded)
        ):
            raise BadRequest(
                f"the path segment {segment[:40]!r} is not allowed: paths are passed through "
                "only below /v1, as they are",
                param="path",
                code="invalid_path",
            )
    return quote(path, safe="/:@!$&'()*+,;=-._~")


def without_namespace(query: str) -> str:
    """A query string less its ``namespace`` parameters (the memory's, never the upstream's);
    the others are kept byte for byte."""
    if "namespace" not in query:
        return query
    kept = [part for part in query.split("&") if unquote_plus(part.split("=", 1)[0]) != "namespace"]
    return "&".join(kept)


async def relay_other(
    gw: GatewayState, principal: Principal, request: Request[Any, Any, Any], path: str
) -> Response[Any]:
    """Send the request to the upstream its body's model chooses, and stream the answer."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "")
    model = model_of(raw, content_type)
    upstream = gw.router.route(model) if model else gw.router.default
    query = without_namespace(request.scope.get("query_string", b"").decode("latin-1"))
    path = forwarded_path(request.scope.get("raw_path") or b"", path)
    deadline = asyncio.get_running_loop().time() + upstream.settings.timeout
    upstream, response = await upstream.within(
        deadline,
        gw.router.send(
            upstream,
            request.method,
            path + (f"?{query}" if query else ""),
            client_headers=upstream_client_headers(request, principal),
            content=raw or None,
            content_type=content_type or None,
            deadline=deadline,
        ),
    )
    headers = relayed_headers(response, extra=("content-disposition",))
    account = Account(gw.usage, principal.name, "", model or "")
    return Stream(
        _body(response, upstream, deadline, account if response.is_success else None),
        status_code=response.status_code,
        headers=headers,
        media_type=headers.pop("content-type", "application/octet-stream"),
    )


# A JSON answer up to this size is read for its usage too (as it goes by); a bigger one is
# relayed without (embeddings of a large batch: their usage is not counted).
USAGE_SCAN_BYTES = 4 * 1024 * 1024


async def _body(
    response: httpx.Response, upstream: Upstream, deadline: float, account: Account | None
) -> AsyncIterator[bytes]:
    """The upstream's answer as it arrives, within the request's deadline; a failure half-way
    ends it (what was relayed cannot be taken back). Its ``usage`` (a JSON answer's, or a
    stream's last event's) is counted to ``account``."""
    content_type = response.headers.get("content-type", "")
    stream = StreamAccumulator() if account and "text/event-stream" in content_type else None
    whole: list[bytes] | None = [] if account and "json" in content_type else None
    size = 0
    try:
        with upstream_errors(upstream.name, upstream.on_error):
            chunks = response.aiter_bytes()
            while True:
                try:
                    chunk = await upstream.within(deadline, anext(chunks))
                except StopAsyncIteration:
                    if account is not None and stream is not None:
                        stream.feed(b"\n\n")
                        account.add(stream.usage)
                    elif account is not None and whole is not None:
                        account.add(usage_of_body(b"".join(whole)))
                    return
                if stream is not None:
                    stream.feed(chunk)
                elif whole is not None:
                    size += len(chunk)
                    if size <= USAGE_SCAN_BYTES:
                        whole.append(chunk)
                    else:
                        whole = None
                yield chunk
    except GatewayError as exc:
        log.warning("pass-through answer cut: %s", exc.message)
    finally:
        await response.aclose()
