"""The request pipeline of the memory calls, in one place: recall -> inject -> forward ->
relay -> remember, for the memory chat (``/v1/memory/chat/completions``) and the memory
Responses call (``/v1/memory/responses``), and forward -> relay alone for the plain chat.

- recall: ``MemoryChat.recall`` (``recall_for``: the query from the conversation, the
  namespace's memories ranked, cut to the token budget);
- inject: the call's ``MemoryApi.inject``: the chat's into its messages
  (``gateway.inject.inject``), the Responses call's into its ``instructions``; the only step
  in which the two differ, beside the shapes they read (``MemoryChat``, ``MemoryResponse``);
- forward and relay: ``forward`` (the upstream the model names, its retries and fallbacks;
  the answer relayed unchanged, a stream chunk by chunk by ``gateway.streaming.relay``);
- remember: once the answer is whole, ``MemoryChat.remember_stream`` / ``remember_json``
  queue the exchange durably (``MemoryService.remember``), which the writer stores.

The route module only says which call a path is (``routes.memory_calls``); the bodies are
decoded and checked in ``gateway.bodies``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.response import Stream

from gateway.auth import Principal
from gateway.bodies import ChatBody, ResponsesBody, parse_chat_body, parse_responses_body
from gateway.errors import BadRequest
from gateway.inject import inject, memory_message
from gateway.state import GatewayState
from gateway.streaming import (
    NOT_REMEMBERED,
    ErrorEvent,
    StreamAccumulator,
    relay,
    responses_error_event,
    sse_error_event,
)
from gateway.upstream import Router, Upstream, relayed_headers, upstream_errors
from gateway.usage import Account, usage_of_body
from memory.recall import budget, content_text, conversation_query
from memory.records import Exchange, Hit, Metadata

log = logging.getLogger("memgate.pipeline")


def new_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The user turn this request adds: its user messages after the last assistant message."""
    texts: list[str] = []
    for message in reversed(messages):
        role = message.get("role")
        if role == "assistant":
            break
        if role == "user":
            text = content_text(message.get("content")).strip()
            if text:
                texts.append(text)
    return "\n".join(reversed(texts))


def describe_tool_calls(calls: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for call in calls:
        function = call.get("function") or {}
        parts.append(f"[called tool {function.get('name', '?')}({function.get('arguments', '')})]")
    return "\n".join(parts)


def reply_text(message: Mapping[str, Any]) -> str:
    """What of an assistant message is remembered: its text, and its tool calls if any."""
    text = content_text(message.get("content")).strip()
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        described = describe_tool_calls([c for c in calls if isinstance(c, Mapping)])
        text = f"{text}\n{described}".strip()
    return text


RECALL_FAILED = (
    "recall failed: the memory store could not be searched, so this answer has no memories "
    "(see the gateway's log for this request id)"
)


async def recall_for(gw: GatewayState, namespace: str, messages: Sequence[Any]) -> list[Hit]:
    """What a memory chat with these messages injects: the namespace's recall for them, cut
    to the token budget (the memories ``inject`` puts in the request, best first)."""
    settings = gw.settings.recall
    query, context = conversation_query(
        messages, settings.query_context_messages, settings.follow_up_messages
    )
    hits = await gw.service.recall(
        namespace,
        query,
        context=context,
        carried=[content_text(m.get("content")) for m in messages],
    )
    return budget(hits, settings.token_budget)


class MemoryChat:
    """One memory chat request, from recall to remember."""

    def __init__(
        self,
        gw: GatewayState,
        namespace: str,
        body: ChatBody,
        started: float,
        metadata: Metadata | None = None,
    ) -> None:
        self.gw = gw
        self.namespace = namespace
        self.body = body
        self.started = started
        self.metadata = metadata or {}
        self.headers: dict[str, str] = {"x-memory-namespace": namespace, "x-memory-recalled": "0"}
        # how an error is said in its stream, once the stream started
        self.error_event: ErrorEvent = sse_error_event

    async def recall(self) -> list[Hit]:
        if not self.gw.settings.recall.enabled:
            return []
        try:
            kept = await recall_for(self.gw, self.namespace, self.body["messages"])
        except Exception as exc:  # fail open: answer without memories, and say why
            log.warning("recall failed in %s, answering without memories: %s", self.namespace, exc)
            self.headers["x-memory-error"] = RECALL_FAILED
            self.gw.metrics.recalls.inc("error")
            return []
        self.gw.metrics.recalls.inc("hit" if kept else "empty")
        self.gw.metrics.injected.inc(amount=len(kept))
        return kept

    async def remember(self, user: str, assistant: str, model: str) -> bool:
        """Queue the exchange durably; False (and ``x-memory-error`` set, the failure counted
        and logged) when it could not be."""
        if not user and not assistant:
            return True
        exchange = Exchange(
            namespace=self.namespace,
            user=user,
            assistant=assistant,
            model=model,
            created_at=self.started,
            metadata=self.metadata,
        )
        try:
            await self.gw.service.remember(exchange)
        except Exception as exc:
            self.gw.metrics.remember_failures.inc()
            log.error("the exchange of %s was not remembered: %s", self.namespace, exc)
            self.headers["x-memory-error"] = NOT_REMEMBERED
            return False
        self.gw.metrics.remembered.inc()
        return True

    async def remember_stream(self, acc: StreamAccumulator) -> bool:
        calls = [
            {"function": {"name": c.name, "arguments": c.arguments}}
            for _, c in sorted(acc.tool_calls.items())
        ]
        assistant = acc.text.strip()
        if calls:
            assistant = f"{assistant}\n{describe_tool_calls(calls)}".strip()
        user = new_user_text(self.body["messages"])
        return await self.remember(user, assistant, str(self.body.get("model") or acc.model))

    async def remember_json(self, content: bytes) -> None:
        try:
            answer = msgspec.json.decode(content)
            message = answer["choices"][0]["message"]
        except (msgspec.DecodeError, KeyError, IndexError, TypeError):
            log.warning("upstream answer has no choices[0].message; nothing remembered")
            return
        user = new_user_text(self.body["messages"])
        await self.remember(user, reply_text(message), str(self.body.get("model", "")))


def upstream_client_headers(
    request: Request[Any, Any, Any], principal: Principal
) -> dict[str, str]:
    """The client's headers as the upstream may see them: a gateway key sent in
    ``Authorization`` is never passed on."""
    return {
        k: v
        for k, v in request.headers.items()
        if not (k == "authorization" and principal.via_authorization)
    }


CONVERSATION = "x-memory-conversation"
_CONVERSATION_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def conversation(headers: Mapping[str, str]) -> Metadata:
    """The exchange's metadata from the request: the conversation id an app may send in
    ``x-memory-conversation``, kept as ``conversation_id`` (a filter for search and list)."""
    value = headers.get(CONVERSATION)
    if value is None:
        return {}
    if not _CONVERSATION_ID.fullmatch(value):
        raise BadRequest(
            f"{CONVERSATION} must be 1-128 characters of A-Z a-z 0-9 . _ : @ / + = -",
            param=CONVERSATION,
            code="invalid_value",
        )
    return {"conversation_id": value}


async def client_gone(request: Request[Any, Any, Any]) -> bool:
    """Whether the client closed its connection (its body was read: the next message it can
    send is the disconnect)."""
    try:
        message = await asyncio.wait_for(request.receive(), 0.0001)
    except TimeoutError:
        return False
    return bool(message["type"] == "http.disconnect")


async def forward(
    router: Router,
    upstream: Upstream,
    request: Request[Any, Any, Any],
    client_headers: Mapping[str, str],
    content: bytes,
    *,
    streaming: bool,
    headers: dict[str, str],
    account: Account,
    strip_usage: bool = False,
    chat: MemoryChat | None = None,
    path: str = "chat/completions",
) -> Response[Any]:
    """Send the body upstream and relay the answer unchanged, streamed or whole; with
    ``chat``, the exchange is remembered once the answer completed. The answer's usage is
    counted to ``account``; ``strip_usage``: the gateway asked for a stream's usage itself."""
    deadline = asyncio.get_running_loop().time() + upstream.settings.timeout
    upstream, response = await upstream.within(
        deadline,
        router.send(
            upstream,
            "POST",
            path,
            client_headers=client_headers,
            content=content,
            deadline=deadline,
        ),
    )
    is_sse = "text/event-stream" in response.headers.get("content-type", "")
    if streaming and response.is_success and is_sse:
        if chat is not None and (problem := chat.gw.service.queue_problem()):
            headers["x-memory-error"] = (
                f"memory writes are failing ({problem}): this exchange may not be remembered"
            )
        out_headers = {**relayed_headers(response), **headers}
        acc = StreamAccumulator()
        on_complete = chat.remember_stream if chat is not None else _nothing
        out_headers.setdefault("cache-control", "no-cache")
        out_headers["x-accel-buffering"] = "no"
        return Stream(
            relay(
                response,
                acc,
                on_complete,
                upstream_name=upstream.name,
                on_error=upstream.on_error,
                deadline=deadline,
                strip_usage=strip_usage,
                on_end=lambda finished: account.add(finished.usage),
                error_event=chat.error_event if chat is not None else sse_error_event,
            ),
            status_code=response.status_code,
            headers=out_headers,
            media_type=out_headers.pop("content-type", "text/event-stream"),
        )
    try:
        with upstream_errors(upstream.name, upstream.on_error):
            data = await upstream.within(deadline, response.aread())
    finally:
        await response.aclose()
    if response.is_success:
        account.add(usage_of_body(data))
    if chat is not None and response.is_success:
        if await client_gone(request):
            # The answer cannot reach the client: it is not remembered either.
            log.warning("the client left before the answer; the exchange is not remembered")
        else:
            await chat.remember_json(data)
    out_headers = {**relayed_headers(response), **headers}
    return Response(
        content=data,
        status_code=response.status_code,
        headers=out_headers,
        media_type=out_headers.pop("content-type", "application/json"),
    )


async def _nothing(_: StreamAccumulator) -> bool:
    return True


def memory_namespace(
    gw: GatewayState,
    principal: Principal,
    request: Request[Any, Any, Any],
    body: Mapping[str, Any],
    *,
    path_namespace: str | None,
    query_namespace: str | None,
) -> str:
    """The namespace a memory request (chat or Responses) names, from its configured sources,
    which the key must be allowed to use."""
    ns = gw.namespaces.resolve(
        path=path_namespace, query=query_namespace, headers=request.headers, body=body
    )
    principal.require_namespace(ns)
    return ns


def ask_for_usage(body: ChatBody, upstream: Upstream) -> bool:
    """Whether the gateway asks for this stream's usage itself (to count its tokens): a
    stream whose client did not ask for it, to an upstream that takes ``stream_options``."""
    if body.get("stream") is not True or not upstream.settings.stream_usage:
        return False
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return False  # the upstream says what is wrong with it
    return not (options or {}).get("include_usage")


def into_messages(body: dict[str, Any], hits: Sequence[Hit]) -> None:
    """The chat's injection: one memory message after the client's own system messages."""
    body["messages"] = inject(body["messages"], hits)


def into_instructions(body: dict[str, Any], hits: Sequence[Hit]) -> None:
    """The Responses call's injection: the memories after its own ``instructions``."""
    memories = memory_message(hits)["content"]
    own = body.get("instructions")
    body["instructions"] = f"{own}\n\n{memories}" if own else memories


@dataclass(frozen=True)
class MemoryApi:
    """One of the OpenAI calls the gateway adds memory to: how its body is read, how its
    exchange is remembered, where the memories go, and its upstream path."""

    parse: Callable[[bytes], dict[str, Any]]
    call: Callable[..., MemoryChat]
    inject: Callable[[dict[str, Any], Sequence[Hit]], None]
    path: str
    stream_usage: bool  # a stream's usage may be asked for (chat's stream_options)


async def memory_call(
    api: MemoryApi,
    gw: GatewayState,
    principal: Principal,
    request: Request[Any, Any, Any],
    *,
    path_namespace: str | None = None,
    query_namespace: str | None = None,
) -> Response[Any]:
    """The whole flow of a memory call: recall, inject, forward, relay, remember."""
    started = time.time()
    body = api.parse(await request.body())
    ns = memory_namespace(
        gw, principal, request, body, path_namespace=path_namespace, query_namespace=query_namespace
    )
    chat = api.call(gw, ns, body, started, metadata=conversation(request.headers))
    hits = await chat.recall()
    if hits:
        api.inject(body, hits)
    chat.headers["x-memory-recalled"] = str(len(hits))
    upstream = gw.router.route(body["model"])
    strip_usage = api.stream_usage and ask_for_usage(body, upstream)
    if strip_usage:
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return await forward(
        gw.router,
        upstream,
        request,
        upstream_client_headers(request, principal),
        msgspec.json.encode(body),
        streaming=body.get("stream") is True,
        headers=chat.headers,
        account=Account(gw.usage, principal.name, ns, body["model"]),
        strip_usage=strip_usage,
        chat=chat,
        path=api.path,
    )


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


CHAT = MemoryApi(parse_chat_body, MemoryChat, into_messages, "chat/completions", True)
RESPONSES = MemoryApi(parse_responses_body, MemoryResponse, into_instructions, "responses", False)


async def plain_chat(
    gw: GatewayState, principal: Principal, request: Request[Any, Any, Any], raw: bytes
) -> Response[Any]:
    """A plain OpenAI proxy: the body goes upstream byte for byte, the answer comes back as
    it is; no memory is read or written. (``POST /v1/chat/completions``: answered before
    Litestar's routing, see ``gateway.plain_chat``.)"""
    body = parse_chat_body(raw)
    upstream = gw.router.route(body["model"])
    strip_usage = ask_for_usage(body, upstream)
    if strip_usage:  # otherwise the body goes as it came, byte for byte
        options = {**(body.get("stream_options") or {}), "include_usage": True}
        raw = msgspec.json.encode({**body, "stream_options": options})
    return await forward(
        gw.router,
        upstream,
        request,
        upstream_client_headers(request, principal),
        raw,
        streaming=body.get("stream") is True,
        headers={},
        account=Account(gw.usage, principal.name, "", body["model"]),
        strip_usage=strip_usage,
    )
