"""The OpenAI calls with memory: the chat (``POST /v1/memory/chat/completions``) and the
Responses API (``POST /v1/memory/responses``), each also under a namespace's base URL
(``/v1/memory/ns/{namespace}/...``, for clients that can only change their base URL). Their
flow (recall, inject, forward, relay, remember) is ``gateway.pipeline``'s; this module only
says which call a path is. The plain ``POST /v1/chat/completions`` is answered before
routing (``gateway.plain_chat``)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter

from gateway.auth import Principal
from gateway.errors import CHAT_ERRORS
from gateway.pipeline import CHAT, RESPONSES, MemoryApi, memory_call
from gateway.state import GatewayState


def _routes(api: MemoryApi, path: str, name: str, summary: str, doc: str) -> list[HTTPRouteHandler]:
    """The call at ``/v1/memory/{path}`` (namespace in the query or a header) and at
    ``/v1/memory/ns/{namespace}/{path}``."""

    async def query_form(
        gw: GatewayState,
        principal: Principal,
        request: Request[Any, Any, Any],
        namespace: str | None = Parameter(query="namespace", default=None, required=False),
    ) -> Response[Any]:
        return await memory_call(api, gw, principal, request, query_namespace=namespace)

    async def path_form(
        gw: GatewayState,
        principal: Principal,
        request: Request[Any, Any, Any],
        namespace: str,
        query_namespace: str | None = Parameter(query="namespace", default=None, required=False),
    ) -> Response[Any]:
        return await memory_call(
            api, gw, principal, request, path_namespace=namespace, query_namespace=query_namespace
        )

    query_form.__doc__ = doc
    path_form.__doc__ = f'{doc} The namespace in the path (``base_url=".../v1/memory/ns/NS"``).'
    prefix = "V1Memory" + "".join(part.capitalize() for part in path.split("/"))
    options: dict[str, Any] = {"status_code": 200, "summary": summary, "responses": CHAT_ERRORS}
    return [
        post(f"/v1/memory/{path}", operation_id=f"{prefix}{name}Query", **options)(query_form),
        post(
            f"/v1/memory/ns/{{namespace:str}}/{path}",
            operation_id=f"{prefix.replace('V1Memory', 'V1MemoryNsNamespace')}{name}Path",
            **options,
        )(path_form),
    ]


MEMORY_CALLS = [
    *_routes(
        CHAT,
        "chat/completions",
        "MemoryChat",
        "Chat with memory",
        "An OpenAI chat completion with the namespace's memories recalled and injected, and "
        "the new exchange remembered. The body is an ordinary chat completions request.",
    ),
    *_routes(
        RESPONSES,
        "responses",
        "MemoryResponses",
        "Responses with memory",
        "An OpenAI Responses API request with the namespace's memories recalled (into "
        "``instructions``) and the new exchange remembered; body and answer are OpenAI's.",
    ),
]
