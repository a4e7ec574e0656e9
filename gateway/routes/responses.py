"""The Responses API with memory: ``POST /v1/memory/responses`` (and its path form). The flow
is the memory chat's (``gateway.pipeline``): the memories go into ``instructions`` (the
Responses API's system prompt); the user's new input and the response's output text are
remembered as the exchange."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.params import Parameter

from gateway.auth import Principal
from gateway.errors import CHAT_ERRORS
from gateway.pipeline import RESPONSES, memory_call
from gateway.state import GatewayState


@post(
    "/v1/memory/responses", status_code=200, summary="Responses with memory", responses=CHAT_ERRORS
)
async def memory_responses_query(
    gw: GatewayState,
    principal: Principal,
    request: Request[Any, Any, Any],
    namespace: str | None = Parameter(query="namespace", default=None, required=False),
) -> Response[Any]:
    """An OpenAI Responses API request with the namespace's memories recalled (into
    ``instructions``) and the new exchange remembered; body and answer are OpenAI's."""
    return await memory_call(RESPONSES, gw, principal, request, query_namespace=namespace)


@post(
    "/v1/memory/ns/{namespace:str}/responses",
    status_code=200,
    summary="Responses with memory",
    responses=CHAT_ERRORS,
)
async def memory_responses_path(
    gw: GatewayState,
    principal: Principal,
    request: Request[Any, Any, Any],
    namespace: str,
    query_namespace: str | None = Parameter(query="namespace", default=None, required=False),
) -> Response[Any]:
    """The same with the namespace in the path (``base_url=".../v1/memory/ns/NS"``)."""
    return await memory_call(
        RESPONSES, gw, principal, request, path_namespace=namespace, query_namespace=query_namespace
    )
