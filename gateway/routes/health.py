"""Liveness and readiness."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response, get
from litestar.openapi.datastructures import ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.auth import Principal
from gateway.errors import ALIVE_ERRORS, OPERATION_ERRORS
from gateway.state import GatewayState

log = logging.getLogger("memgate")


@get("/healthz", summary="Liveness", responses=ALIVE_ERRORS)
async def healthz() -> dict[str, str]:
    """The process is alive and serving HTTP."""
    return {"status": "ok"}


async def readiness(gw: GatewayState) -> tuple[bool, dict[str, Any]]:
    """Whether the gateway is ready (the store answers, the embedding model is loaded, the
    queue can be written and the writer runs), and /readyz's body; remembered for the
    ``memgate_ready`` metric."""
    service = gw.service
    checks = await service.health()
    # The state exists only once the model has loaded; ready turns off at shutdown.
    checks["embedder"] = "ok" if gw.ready else "stopping"
    ready = all(v == "ok" for v in checks.values())
    depth = await service.queue_depth()
    upstreams = await gw.upstream_health()
    body: dict[str, Any] = {
        "status": "ready" if ready else "unready",
        "checks": checks,
        "upstreams": upstreams,
        "queue_depth": depth,
    }
    if ready and any(v != "ok" for v in upstreams.values()):
        body["status"] = "degraded"  # memory works; some model answers will fail
    gw.ready_seen = ready
    return ready, body


@get(
    "/readyz",
    summary="Readiness",
    responses={
        **OPERATION_ERRORS,
        503: ResponseSpec(
            data_container=dict[str, Any],
            description="Not ready: the status and each check's state, as with 200",
        ),
    },
)
async def readyz(gw: GatewayState) -> Response[dict[str, Any]]:
    """200 when the store answers, the embedding model is loaded and the writer runs;
    503 otherwise, with each check's state. Upstreams are probed too (``GET /models``, cached
    for 10 s): one that cannot be reached makes the status ``degraded``, not unready."""
    ready, body = await readiness(gw)
    return Response(body, status_code=200 if ready else 503)


@get(
    "/metrics",
    summary="Prometheus metrics",
    media_type=CONTENT_TYPE_LATEST,
    responses=OPERATION_ERRORS,
)
async def metrics(gw: GatewayState, request: Request[Any, Any, Any]) -> bytes:
    """Requests, latency, recalls, injected memories, queue depth, upstream errors; tokens by
    key only for admin keys when ``auth.protect_operations`` puts this behind keys."""
    await readiness(gw)  # memgate_ready is what /readyz would answer now
    principal: Principal | None = request.state.get("principal")
    per_key = not gw.settings.auth.protect_operations or bool(principal and principal.admin)
    return gw.metrics.render(per_key=per_key)
