"""The Responses API with memory: ``POST /v1/memory/responses``. The same flow as the memory
chat (recall, inject, forward, relay, remember) for OpenAI's ``/v1/responses`` body: the
memories go into ``instructions`` (the Responses API's system prompt), the user's new input
and the response's output text are remembered as the exchange."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.params import Parameter

from gateway.auth import Principal
from gateway.errors import CHAT_ERRORS, BadRequest
from gateway.inject import memory_message
from gateway.routes.chat import (
    MemoryChat,
    conversation,
    decode_object,
    describe_tool_calls,
    forward,
    memory_namespace,
    new_user_text,
    upstream_client_headers,
)
from gateway.state import GatewayState
from gateway.streaming import StreamAccumulator, responses_error_event
from gateway.usage import Account
from memory.recall import content_text

ResponsesBody = dict[str, Any]


def parse_responses_body(raw: bytes) -> ResponsesBody:
    """Decode and check the fields the gateway reads (model, input, instructions, stream);
    everything else goes to the upstream as it is."""
    body = decode_object(raw, "Responses API request")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(
            "you must provide a model parameter (a non-empty string)",
            param="model",
            code="missing_required_parameter" if model is None else "invalid_type",
        )
    if not isinstance(body.get("input"), str | list):
        raise BadRequest(
            "input must be a string or an array of input items",
            param="input",
            code="missing_required_parameter" if body.get("input") is None else "invalid_type",
        )
    if not isinstance(body.get("instructions"), str | None):
        raise BadRequest("instructions must be a string", param="instructions", code="invalid_type")
    if not isinstance(body.get("stream"), bool | None):
        raise BadRequest("stream must be a boolean", param="stream", code="invalid_type")
    return body


def input_messages(value: str | list[Any]) -> list[dict[str, Any]]:
    """The request's input as chat-like messages (role, content): a string is one user
    message; of an item list, the messages (tool calls and their outputs play no part in
    recall)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return [
        {"role": item["role"], "content": item.get("content")}
        for item in value
        if isinstance(item, dict)
        and isinstance(item.get("role"), str)
        and item.get("type", "message") == "message"
    ]


def output_text(response: Mapping[str, Any]) -> str:
    """What of a response is remembered: its output messages' text, and its tool calls."""
    texts: list[str] = []
    calls: list[Mapping[str, Any]] = []
    for item in response.get("output") or ():
        if not isinstance(item, Mapping):
            continue
        if item.get("type") == "message":
            texts.append(content_text(item.get("content")))
        elif item.get("type") == "function_call":
            calls.append(
                {"function": {"name": item.get("name"), "arguments": item.get("arguments")}}
            )
    text = "\n".join(t for t in texts if t).strip()
    if calls:
        text = f"{text}\n{describe_tool_calls(calls)}".strip()
    return text


class MemoryResponse(MemoryChat):
    """One Responses API request with memory: the chat's recall and remember, the Responses
    API's shapes."""

    def __init__(
        self, gw: GatewayState, namespace: str, body: ResponsesBody, started: float, **kw: Any
    ) -> None:
        self.messages = input_messages(body["input"])
        # recall reads the instructions too: a memory they already hold is not injected again
        own = body.get("instructions")
        context = [{"role": "system", "content": own}] if own else []
        super().__init__(
            gw,
            namespace,
            {"model": body["model"], "messages": [*context, *self.messages]},
            started,
            **kw,
        )
        self.error_event = responses_error_event

    async def remember_stream(self, acc: StreamAccumulator) -> bool:
        reply = output_text(acc.response) if acc.response else acc.text.strip()
        return await self.remember(new_user_text(self.messages), reply, self.body["model"])

    async def remember_json(self, content: bytes) -> None:
        try:
            answer = msgspec.json.decode(content)
        except msgspec.DecodeError:
            answer = None
        if not isinstance(answer, dict) or answer.get("object") != "response":
            return  # not a response: nothing to remember
        if answer.get("status") not in {"completed", "incomplete"}:
            return  # failed, cancelled or still in progress (background): no answer yet
        user = new_user_text(self.messages)
        await self.remember(user, output_text(answer), self.body["model"])


async def _memory_responses(
    gw: GatewayState,
    principal: Principal,
    request: Request[Any, Any, Any],
    *,
    path_namespace: str | None = None,
    query_namespace: str | None = None,
) -> Response[Any]:
    started = time.time()
    body = parse_responses_body(await request.body())
    ns = memory_namespace(
        gw, principal, request, body, path_namespace=path_namespace, query_namespace=query_namespace
    )
    chat = MemoryResponse(gw, ns, body, started, metadata=conversation(request.headers))
    hits = await chat.recall()
    if hits:
        memories = memory_message(hits)["content"]
        own = body.get("instructions")
        body["instructions"] = f"{own}\n\n{memories}" if own else memories
    chat.headers["x-memory-recalled"] = str(len(hits))
    return await forward(
        gw.router,
        gw.router.route(body["model"]),
        request,
        upstream_client_headers(request, principal),
        msgspec.json.encode(body),
        streaming=body.get("stream") is True,
        headers=chat.headers,
        account=Account(gw.usage, principal.name, ns, body["model"]),
        chat=chat,
        path="responses",
    )


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
    return await _memory_responses(gw, principal, request, query_namespace=namespace)


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
    return await _memory_responses(
        gw, principal, request, path_namespace=namespace, query_namespace=query_namespace
    )
