"""What the route handlers share for one app: settings, the memory service and the upstreams.
Built by ``create_app``; reached by handlers through the ``gw`` dependency."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from litestar import Request
from litestar.datastructures import State

from gateway.auth import Authenticator, Principal
from gateway.config import Settings
from gateway.telemetry import Metrics
from gateway.upstream import Router
from memory.service import MemoryService


@dataclass
class GatewayState:
    settings: Settings
    service: MemoryService
    router: Router
    auth: Authenticator
    metrics: Metrics
    ready: bool = False
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


def get_gateway(request: Request) -> GatewayState:  # type: ignore[type-arg]
    state: State = request.app.state
    gw: GatewayState = state["gateway"]
    return gw


async def get_principal(request: Request) -> Principal:  # type: ignore[type-arg]
    """Authenticate the caller (401 without a valid key, 429 over its rate limit)."""
    gw = get_gateway(request)
    client = request.client.host if request.client else ""
    return await gw.auth.authenticate(request.headers, client)
