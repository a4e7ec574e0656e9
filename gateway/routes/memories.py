"""The memory API: add, list, get, delete, search, preview a chat's recall, count and erase a
namespace."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from litestar import Request, Router, delete, get, patch, post
from litestar.di import Provide
from litestar.params import Parameter

from gateway.auth import Principal
from gateway.bodies import check_messages
from gateway.errors import ADMIN_ERRORS, MEMORY_ERRORS, BadRequest, Conflict, NotFound
from gateway.inject import memory_message
from gateway.namespaces import check_namespace
from gateway.pipeline import recall_for
from gateway.state import GatewayState
from memory.errors import StillQueued
from memory.records import (
    MAX_CONTENT,
    Filter,
    Hit,
    Memory,
    Metadata,
    created_problem,
    filter_problem,
    from_rfc3339,
    metadata_problem,
    new_id,
    now,
    role_problem,
    to_rfc3339,
)
from memory.store import CursorNotFound


class NewMemory(msgspec.Struct, forbid_unknown_fields=True):
    content: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CONTENT)]
    role: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "user"
    metadata: Metadata = msgspec.field(default_factory=dict)
    created_at: str | None = None


class AddMemoriesRequest(msgspec.Struct, forbid_unknown_fields=True):
    memories: Annotated[list[NewMemory], msgspec.Meta(min_length=1, max_length=1000)]


class AddMemoriesResponse(msgspec.Struct):
    ids: list[str]


class SearchRequest(msgspec.Struct, forbid_unknown_fields=True):
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CONTENT)]
    k: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    filter: dict[str, Any] | None = None


def checked_filter(value: Any, param: str) -> Filter | None:
    """A request's memory filter, checked (400 naming ``param`` when it is not one)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = msgspec.json.decode(value)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise BadRequest(
                f"{param} must be a JSON object: {exc}", param=param, code="invalid_value"
            ) from exc
    if problem := filter_problem(value):
        raise BadRequest(problem, param=param, code="invalid_value")
    result: Filter = value
    return result


def checked_time(value: str | None, param: str) -> float | None:
    """A time bound given as RFC 3339 (a date alone is its midnight, a time without offset
    UTC), in seconds since the epoch; a 400 naming ``param`` when it is not one."""
    if value is None:
        return None
    try:
        return from_rfc3339(value)
    except (ValueError, OverflowError) as exc:
        raise BadRequest(
            f"{param} {value!r} is not an RFC 3339 timestamp (like 2024-05-01T00:00:00Z)",
            param=param,
            code="invalid_value",
        ) from exc


class MemoryPatch(msgspec.Struct, forbid_unknown_fields=True):
    content: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CONTENT)] | None = None
    role: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    metadata: Metadata | None = None


class MemoryOut(msgspec.Struct):
    id: str
    namespace: str
    content: str
    role: str
    created_at: str
    metadata: Metadata


class MemoryList(msgspec.Struct):
    data: list[MemoryOut]
    has_more: bool
    object: str = "list"


class SearchHit(msgspec.Struct):
    id: str
    content: str
    role: str
    score: float
    created_at: str
    metadata: Metadata


class SearchResult(msgspec.Struct):
    data: list[SearchHit]
    object: str = "list"


def search_hit(hit: Hit) -> SearchHit:
    return SearchHit(
        id=hit.memory.id,
        content=hit.memory.content,
        role=hit.memory.role,
        score=round(hit.score, 6),
        created_at=to_rfc3339(hit.memory.created_at),
        metadata=hit.memory.metadata,
    )


class RecallRequest(msgspec.Struct):
    """A chat's messages (a whole chat completions body may be sent: its other fields are
    ignored), or ``query`` for one user message."""

    messages: Annotated[list[Any], msgspec.Meta(min_length=1)] | None = None
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CONTENT)] | None = None
    user: Any = None  # a namespace source (server.namespace_sources "user"), as in the chat


class RecallResult(msgspec.Struct):
    namespace: str
    data: list[SearchHit]
    message: dict[str, Any] | None
    object: str = "memory.recall"


class VersionOut(msgspec.Struct):
    content: str
    role: str
    created_at: str
    metadata: Metadata
    replaced_at: str


class VersionList(msgspec.Struct):
    data: list[VersionOut]
    object: str = "list"


class Deleted(msgspec.Struct):
    id: str
    deleted: bool
    object: str = "memory.deleted"


class MemoriesDeleted(msgspec.Struct):
    namespace: str
    deleted: int
    object: str = "memories.deleted"


class NamespaceErased(msgspec.Struct):
    namespace: str
    deleted: int
    object: str = "namespace.deleted"


def memory_out(memory: Memory) -> MemoryOut:
    return MemoryOut(
        id=memory.id,
        namespace=memory.namespace,
        content=memory.content,
        role=memory.role,
        created_at=to_rfc3339(memory.created_at),
        metadata=memory.metadata,
    )


def _new_memory(namespace: str, index: int, item: NewMemory, stamp: float) -> Memory:
    for field, problem in (
        ("role", role_problem(item.role)),
        ("metadata", metadata_problem(item.metadata)),
    ):
        if problem:
            raise BadRequest(problem, param=f"memories[{index}].{field}", code="invalid_value")
    created = stamp
    if item.created_at is not None:
        try:
            created = from_rfc3339(item.created_at)
        except (ValueError, OverflowError) as exc:
            raise BadRequest(
                f"created_at {item.created_at!r} is not an RFC 3339 timestamp",
                param=f"memories[{index}].created_at",
                code="invalid_value",
            ) from exc
        if problem := created_problem(created):
            raise BadRequest(
                f"created_at {item.created_at!r}: {problem}",
                param=f"memories[{index}].created_at",
                code="invalid_value",
            )
    if not item.content.strip():
        raise BadRequest(
            "content must not be blank", param=f"memories[{index}].content", code="invalid_value"
        )
    return Memory(
        id=new_id(created),
        namespace=namespace,
        content=item.content,
        role=item.role,
        created_at=created,
        metadata=dict(item.metadata),
    )


# Query parameters of more than one handler.
FilterQuery = Annotated[
    str | None,
    Parameter(
        query="filter",
        max_length=8000,
        description='a JSON object: {"key": value} or {"key": {"$in": [values]}}',
    ),
]
CreatedAfter = Annotated[
    str | None, Parameter(max_length=64, description="RFC 3339: memories created at or after it")
]
CreatedBefore = Annotated[
    str | None,
    Parameter(max_length=64, description="RFC 3339: memories created strictly before it"),
]
NamespaceQuery = Annotated[
    str | None, Parameter(query="namespace", required=False, description="default: the global one")
]


def _namespace(
    gw: GatewayState,
    principal: Principal,
    namespace: str | None,
    request: Request[Any, Any, Any],
    body: Mapping[str, Any] | None = None,
) -> str:
    """The checked namespace of a memory API call (``?namespace=``, or the
    ``x-memory-namespace`` header where that source is on; for a chat's ``body``, its ``user``
    where that source is on), which the key must be allowed to use."""
    ns = gw.namespaces.resolve(query=namespace, headers=request.headers, body=body)
    principal.require_memory_api(ns)
    return ns


def memory_api_namespace(
    gw: GatewayState,
    principal: Principal,
    request: Request[Any, Any, Any],
    namespace: NamespaceQuery = None,
) -> str:
    """The ``ns`` of every memory API handler (a dependency of ``MEMORY_API``)."""
    return _namespace(gw, principal, namespace, request)


@post("/memories", status_code=200, summary="Add memories", responses=MEMORY_ERRORS)
async def add_memories(
    gw: GatewayState,
    ns: str,
    data: AddMemoriesRequest,
) -> AddMemoriesResponse:
    """Store up to 1,000 memories in the namespace; they are searchable when this returns."""
    stamp = now()
    memories = [_new_memory(ns, i, item, stamp) for i, item in enumerate(data.memories)]
    await gw.service.add(memories)
    return AddMemoriesResponse(ids=[m.id for m in memories])


@get("/memories", summary="List memories", responses=MEMORY_ERRORS)
async def list_memories(
    gw: GatewayState,
    ns: str,
    *,
    limit: Annotated[int, Parameter(ge=1, le=100)] = 20,
    after: Annotated[str | None, Parameter(max_length=200)] = None,
    filter_: FilterQuery = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
) -> MemoryList:
    """Memories of the namespace, newest first; ``after`` is the last id of the previous page
    (still valid when that memory was deleted since); ``filter`` keeps those whose metadata
    (or ``role``) match; ``created_after`` / ``created_before`` keep those created in that
    half-open range (at or after the one, before the other)."""
    where = checked_filter(filter_, "filter")
    since = checked_time(created_after, "created_after")
    until = checked_time(created_before, "created_before")
    try:
        memories, has_more = await gw.service.list(
            ns,
            limit=limit,
            after=after,
            where=where,
            created_after=since,
            created_before=until,
        )
    except CursorNotFound as exc:
        raise BadRequest(
            f"the page cursor {after!r} names no memory of this namespace (nor one deleted "
            "lately): start again without 'after'",
            param="after",
            code="invalid_cursor",
        ) from exc
    return MemoryList(data=[memory_out(m) for m in memories], has_more=has_more)


@delete(
    "/memories",
    status_code=200,
    summary="Delete memories by filter",
    responses=MEMORY_ERRORS,
)
async def delete_memories(
    gw: GatewayState,
    ns: str,
    *,
    conversation_id: Annotated[
        str | None,
        Parameter(
            min_length=1,
            max_length=128,
            description="the memories of one conversation (metadata conversation_id)",
        ),
    ] = None,
    filter_: FilterQuery = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
) -> MemoriesDeleted:
    """Delete every memory of the namespace that matches all the conditions given (the
    listing's ``filter`` and time range, ``conversation_id`` short for
    ``filter={"conversation_id": ...}``), queued ones included; how many. At least one
    condition is required: erasing a whole namespace is ``DELETE
    /v1/memory/namespaces/{namespace}`` (admin keys)."""
    where = checked_filter(filter_, "filter") or {}
    if conversation_id is not None:
        if "conversation_id" in where:
            raise BadRequest(
                "conversation_id is given twice (as a parameter and in filter)",
                param="conversation_id",
                code="invalid_value",
            )
        where = {**where, "conversation_id": conversation_id}
    since = checked_time(created_after, "created_after")
    until = checked_time(created_before, "created_before")
    if not where and since is None and until is None:
        raise BadRequest(
            "a delete by filter needs conversation_id, filter, created_after or "
            "created_before; a whole namespace is erased with DELETE "
            "/v1/memory/namespaces/{namespace}",
            param="filter",
            code="missing_required_parameter",
        )
    deleted = await gw.service.delete_where(
        ns, where or None, created_after=since, created_before=until
    )
    return MemoriesDeleted(namespace=ns, deleted=deleted)


@get("/memories/{memory_id:str}", summary="Get a memory", responses=MEMORY_ERRORS)
async def get_memory(
    gw: GatewayState,
    ns: str,
    memory_id: str,
) -> MemoryOut:
    memory = await gw.service.get(ns, memory_id)
    if memory is None:
        raise NotFound(f"no memory {memory_id!r} in this namespace", param="memory_id")
    return memory_out(memory)


@patch(
    "/memories/{memory_id:str}",
    status_code=200,
    summary="Change a memory",
    responses=MEMORY_ERRORS,
)
async def update_memory(
    gw: GatewayState,
    ns: str,
    memory_id: str,
    *,
    data: MemoryPatch,
) -> MemoryOut:
    """Change a memory's content, role or metadata (each given replaces the old one; content
    is embedded again); the version it replaces is kept (``.../history``). Its id and time
    stay."""
    changes: dict[str, Any] = {}
    if data.content is not None:
        if not data.content.strip():
            raise BadRequest("content must not be blank", param="content", code="invalid_value")
        changes["content"] = data.content
    if data.role is not None:
        if problem := role_problem(data.role):
            raise BadRequest(problem, param="role", code="invalid_value")
        changes["role"] = data.role
    if data.metadata is not None:
        if problem := metadata_problem(data.metadata):
            raise BadRequest(problem, param="metadata", code="invalid_value")
        changes["metadata"] = dict(data.metadata)
    if not changes:
        raise BadRequest("give content, role or metadata to change", code="invalid_value")
    try:
        memory = await gw.service.update(ns, memory_id, **changes)
    except StillQueued as exc:
        raise Conflict(
            f"memory {memory_id!r} is still being written; try again in a moment",
            param="memory_id",
        ) from exc
    if memory is None:
        raise NotFound(f"no memory {memory_id!r} in this namespace", param="memory_id")
    return memory_out(memory)


@get(
    "/memories/{memory_id:str}/history",
    summary="Earlier versions of a memory",
    responses=MEMORY_ERRORS,
)
async def memory_history(
    gw: GatewayState,
    ns: str,
    memory_id: str,
) -> VersionList:
    """The versions a memory had before its changes, oldest first (empty if never changed)."""
    if await gw.service.get(ns, memory_id) is None:
        raise NotFound(f"no memory {memory_id!r} in this namespace", param="memory_id")
    versions = await gw.service.versions(ns, memory_id)
    return VersionList(
        data=[
            VersionOut(
                content=v.memory.content,
                role=v.memory.role,
                created_at=to_rfc3339(v.memory.created_at),
                metadata=v.memory.metadata,
                replaced_at=to_rfc3339(v.replaced_at),
            )
            for v in versions
        ]
    )


@delete(
    "/memories/{memory_id:str}",
    status_code=200,
    summary="Delete a memory",
    responses=MEMORY_ERRORS,
)
async def delete_memory(
    gw: GatewayState,
    ns: str,
    memory_id: str,
) -> Deleted:
    if not await gw.service.delete(ns, memory_id):
        raise NotFound(f"no memory {memory_id!r} in this namespace", param="memory_id")
    return Deleted(id=memory_id, deleted=True)


@post("/search", status_code=200, summary="Search memories", responses=MEMORY_ERRORS)
async def search_memories(
    gw: GatewayState,
    ns: str,
    data: SearchRequest,
) -> SearchResult:
    """Exactly the recall the memory chat uses (before its token budget), best first: up to
    ``k`` memories, fewer when fewer pass the similarity floor."""
    if not data.query.strip():
        raise BadRequest("query must not be blank", param="query", code="invalid_value")
    where = checked_filter(data.filter, "filter")
    hits = await gw.service.recall(ns, data.query, k=data.k, where=where)
    return SearchResult(data=[search_hit(h) for h in hits])


@post(
    "/recall",
    status_code=200,
    summary="Preview a memory chat's injection",
    responses=MEMORY_ERRORS,
)
async def recall_preview(
    gw: GatewayState,
    principal: Principal,
    request: Request[Any, Any, Any],
    data: RecallRequest,
    namespace: NamespaceQuery = None,
) -> RecallResult:
    """Exactly what a memory chat with these messages would inject, after its token budget:
    the memories kept, best first, and the system message holding them (null when none
    would be injected). Nothing is remembered."""
    if data.messages is not None and data.query is not None:
        raise BadRequest("give messages or query, not both", param="query", code="invalid_value")
    if data.query is not None:
        if not data.query.strip():
            raise BadRequest("query must not be blank", param="query", code="invalid_value")
        messages: list[dict[str, Any]] = [{"role": "user", "content": data.query}]
    elif data.messages is not None:
        messages = check_messages(data.messages)
    else:
        raise BadRequest(
            "you must provide messages (or query)",
            param="messages",
            code="missing_required_parameter",
        )
    ns = _namespace(gw, principal, namespace, request, body={"user": data.user})
    hits = await recall_for(gw, ns, messages) if gw.settings.recall.enabled else []
    return RecallResult(
        namespace=ns,
        data=[search_hit(h) for h in hits],
        message=memory_message(hits) if hits else None,
    )


@delete(
    "/namespaces/{namespace:str}",
    status_code=200,
    summary="Erase a namespace",
    responses=ADMIN_ERRORS,
)
async def erase_namespace(
    gw: GatewayState, principal: Principal, namespace: str
) -> NamespaceErased:
    """Erase everything of the namespace, queued writes included; afterwards nothing of it
    can be searched, listed or recalled. Admin keys only."""
    principal.require_admin()
    ns = check_namespace(namespace, gw.settings.server.default_namespace)
    count = await gw.service.delete_namespace(ns)
    return NamespaceErased(namespace=ns, deleted=count)


class NamespaceInfo(msgspec.Struct):
    namespace: str
    count: int


class NamespaceOut(msgspec.Struct):
    namespace: str
    count: int
    object: str = "namespace"


@get(
    "/namespaces/{namespace:str}",
    summary="Count a namespace's memories",
    responses=MEMORY_ERRORS,
)
async def get_namespace(gw: GatewayState, principal: Principal, namespace: str) -> NamespaceOut:
    """How many memories the namespace holds (those still in the write queue not yet): any
    key that may use the namespace's memory API."""
    ns = check_namespace(namespace, gw.settings.server.default_namespace)
    principal.require_memory_api(ns)
    return NamespaceOut(namespace=ns, count=await gw.service.count(ns))


class NamespaceList(msgspec.Struct):
    data: list[NamespaceInfo]
    has_more: bool
    next_offset: int | None
    object: str = "list"


@get("/namespaces", summary="List namespaces", responses=ADMIN_ERRORS)
async def list_namespaces(
    gw: GatewayState,
    principal: Principal,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    offset: Annotated[int, Parameter(ge=0, le=2**31 - 1)] = 0,
) -> NamespaceList:
    """A page of the namespaces with their memory counts, in no particular order (the
    store's: neither by name nor by time) but the same from page to page while no namespace
    is made or erased; ``next_offset`` is the ``offset`` of the next page. Admin keys only."""
    principal.require_admin()
    page, has_more = await gw.service.namespaces(limit=limit, offset=offset)
    return NamespaceList(
        data=[NamespaceInfo(namespace=n.namespace, count=n.count) for n in page],
        has_more=has_more,
        next_offset=offset + limit if has_more else None,
    )


# The memory API: one prefix, and the namespace of each call (``ns``) resolved and checked once.
MEMORY_API = Router(
    path="/v1/memory",
    route_handlers=[
        add_memories,
        list_memories,
        delete_memories,
        get_memory,
        update_memory,
        memory_history,
        delete_memory,
        search_memories,
        recall_preview,
        erase_namespace,
        get_namespace,
        list_namespaces,
    ],
    dependencies={"ns": Provide(memory_api_namespace, sync_to_thread=False)},
)
