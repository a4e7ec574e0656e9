"""``GET /v1/models``: relayed from the upstream."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from gateway.state import GatewayState
from gateway.upstream import relayed_headers, upstream_errors


@get(
    ["/v1/models", "/v1/memory/models", "/v1/memory/ns/{namespace:str}/models"],
    summary="List models",
)
async def list_models(gw: GatewayState, request: Request[Any, Any, Any]) -> Response[bytes]:
    """The upstream's model list, relayed as it is (also under the memory base URLs, so an
    SDK pointed at them can list models)."""
    upstream = gw.router.upstreams[0]
    response = await upstream.send("GET", "models", client_headers=request.headers)
    try:
        with upstream_errors(upstream.name):
            data = await response.aread()
    finally:
        await response.aclose()
    headers = relayed_headers(response)
    return Response(
        content=data,
        status_code=response.status_code,
        headers=headers,
        media_type=headers.pop("content-type", "application/json"),
    )
