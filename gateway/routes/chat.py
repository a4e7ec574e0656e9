"""The memory chat: ``POST /v1/memory/chat/completions`` (and its path form). The flow is
``gateway.pipeline``'s; the plain pass-through ``POST /v1/chat/completions`` is answered
before routing (``gateway.plain_chat``)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.params import Parameter

from gateway.auth import Principal
from gateway.errors import CHAT_ERRORS
from gateway.pipeline import CHAT, memory_call
from gateway.state import GatewayState


@post(
    "/v1/memory/chat/completions",
    status_code=200,
    summary="Chat with memory",
    responses=CHAT_ERRORS,
)
async def memory_chat_query(
    gw: GatewayState,
    principal: Principal,
    request: Request[Any, Any, Any],
    namespace: str | None = Parameter(query="namespace", default=None, required=False),
) -> Response[Any]:
    """An OpenAI chat completion with the namespace's memories recalled and injected, and the
    new exchange remembered. The body is an ordinary chat completions request."""
    return await memory_call(CHAT, gw, principal, request, query_namespace=namespace)


@post(
    "/v1/memory/ns/{namespace:str}/chat/completions",
    status_code=200,
    summary="Chat with memory",
    responses=CHAT_ERRORS,
)
async def memory_chat_path(
    gw: GatewayState,
    principal: Principal,
    request: Request[Any, Any, Any],
    namespace: str,
    query_namespace: str | None = Parameter(query="namespace", default=None, required=False),
) -> Response[Any]:
    """The memory chat with the namespace in the path, for clients that can only change
    their base URL (``base_url=".../v1/memory/ns/NS"``)."""
    return await memory_call(
        CHAT, gw, principal, request, path_namespace=namespace, query_namespace=query_namespace
    )
