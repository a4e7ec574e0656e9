"""What the route handlers share for one app: settings, the memory service and the upstreams.
Built by ``create_app``; reached by handlers through the ``gw`` dependency."""

from __future__ import annotations

from dataclasses import dataclass, field

from litestar import Request
from litestar.datastructures import State

from gateway.config import Settings
from gateway.upstream import Router
from memory.service import MemoryService


@dataclass
class GatewayState:
    settings: Settings
    service: MemoryService
    router: Router
    ready: bool = False
    startup_error: str | None = None
    notes: dict[str, str] = field(default_factory=dict)


def get_gateway(request: Request) -> GatewayState:  # type: ignore[type-arg]
    state: State = request.app.state
    gw: GatewayState = state["gateway"]
    return gw
