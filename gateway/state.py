"""What the route handlers share for one app: settings, the memory service and the upstreams.
Built by ``create_app``; reached by handlers through the ``gw`` dependency."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler

from gateway.auth import Authenticator, Principal
from gateway.config import Settings
from gateway.namespaces import NamespaceResolver
from gateway.telemetry import Metrics
from gateway.upstream import Router
from gateway.usage import UsageLedger
from memory.service import MemoryService


@dataclass
class GatewayState:
    settings: Settings
    service: MemoryService
    router: Router
    auth: Authenticator
    metrics: Metrics
    namespaces: NamespaceResolver
    usage: UsageLedger
    ready: bool = False
    ready_seen: bool = False  # the last readiness checked (``routes.health.readiness``)
    _upstream_health: tuple[float, dict[str, str]] = (0.0, {})

    async def upstream_health(self, max_age: float = 10.0) -> dict[str, str]:
        """Whether each upstream answers HTTP at all (any status counts), cached."""
        checked, result = self._upstream_health
        if result and time.monotonic() - checked < max_age:
            return result
        result = dict(
            zip(
                (u.name for u in self.router.upstreams),
                await asyncio.gather(*(u.probe() for u in self.router.upstreams)),
                strict=True,
            )
        )
        self._upstream_health = (time.monotonic(), result)
        return result


def get_gateway(request: ASGIConnection) -> GatewayState:  # type: ignore[type-arg]
    state: State = request.app.state
    gw: GatewayState = state["gateway"]
    return gw


# Open to anyone: liveness, and the inspector page (it asks for a key before it calls the API).
_PUBLIC = ("/healthz", "/ui")
# Operational endpoints: open unless auth.protect_operations, then any valid key.
_OPERATIONS = ("/readyz", "/metrics", "/docs")


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


async def authenticate(connection: ASGIConnection, _: BaseRouteHandler | None = None) -> None:  # type: ignore[type-arg]
    """The app's guard: authenticate the caller before anything of the request is read (401
    without a valid key, 429 over its rate limit or after too many wrong keys)."""
    path = connection.url.path
    gw = get_gateway(connection)
    if _under(path, _PUBLIC) or (
        _under(path, _OPERATIONS) and not gw.settings.auth.protect_operations
    ):
        return
    client = connection.client.host if connection.client else ""
    connection.state.principal = await gw.auth.authenticate(connection.headers, client)


def get_principal(request: Request, gw: GatewayState) -> Principal:  # type: ignore[type-arg]
    """Who the guard found the caller to be. It names ``gw`` (unused) so that Litestar
    resolves the two dependencies one after the other: two independent ones are resolved in
    an anyio task group, two tasks a request (~5% of a pass-through's CPU)."""
    del gw
    principal: Principal = request.state.principal
    return principal
