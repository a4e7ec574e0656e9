"""``GET /v1/models``: relayed from the upstream, or merged from several."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import httpx
import msgspec
from litestar import Request, Response, get

from gateway.auth import Principal
from gateway.errors import PASSTHROUGH_ERRORS, UpstreamError
from gateway.pipeline import upstream_client_headers
from gateway.state import GatewayState
from gateway.upstream import Router, Upstream, relayed_headers, upstream_errors


@get(
    ["/v1/models", "/v1/memory/models", "/v1/memory/ns/{namespace:str}/models"],
    summary="List models",
    responses=PASSTHROUGH_ERRORS,
)
async def list_models(
    gw: GatewayState, principal: Principal, request: Request[Any, Any, Any]
) -> Response[bytes]:
    """The upstreams' model lists (also under the memory base URLs, so an SDK pointed at them
    can list models). With one upstream its answer is relayed as it is; with several, their
    lists are merged (first upstream wins a duplicate id) and a failing upstream is left out
    unless all fail."""
    headers_in = upstream_client_headers(request, principal)
    answers = await asyncio.gather(
        *(_fetch_models(gw.router, u, headers_in) for u in gw.router.upstreams),
        return_exceptions=True,
    )
    if len(answers) == 1:
        if isinstance(answers[0], BaseException):
            raise answers[0]
        response, data = answers[0]
        headers = relayed_headers(response)
        return Response(
            content=data,
            status_code=response.status_code,
            headers=headers,
            media_type=headers.pop("content-type", "application/json"),
        )
    merged: dict[str, Any] = {}
    failures: list[BaseException | httpx.Response] = []
    for answer in answers:
        if isinstance(answer, BaseException):
            failures.append(answer)
            continue
        response, data = answer
        try:
            items = msgspec.json.decode(data)["data"] if response.is_success else None
        except (msgspec.DecodeError, KeyError, TypeError):
            items = None
        if not isinstance(items, list):
            failures.append(response)
            continue
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                merged.setdefault(item["id"], item)
    if not merged and failures:
        first = failures[0]
        if isinstance(first, BaseException):
            raise first
        raise UpstreamError(f"no upstream listed its models (status {first.status_code})")
    return Response(
        content=msgspec.json.encode({"object": "list", "data": list(merged.values())}),
        media_type="application/json",
    )


async def _fetch_models(
    router: Router, upstream: Upstream, client_headers: Mapping[str, str]
) -> tuple[httpx.Response, bytes]:
    """One upstream's own list (retried like any request; never a fallback's)."""
    deadline = asyncio.get_running_loop().time() + upstream.settings.timeout
    _, response = await upstream.within(
        deadline,
        router.send(
            upstream,
            "GET",
            "models",
            client_headers=client_headers,
            deadline=deadline,
            fallbacks=False,
        ),
    )
    try:
        with upstream_errors(upstream.name, upstream.on_error):
            data = await upstream.within(deadline, response.aread())
    finally:
        await response.aclose()
    return response, data
