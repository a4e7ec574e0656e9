"""The memory tools of the MCP endpoint (``gateway.mcp``): what each takes, what it tells a
model about itself, and what it does with the memory service, in the one namespace the
connection was given (never one named by a tool argument).

Each tool's arguments are a msgspec Struct (its JSON Schema is the tool's input schema;
unknown fields are refused); each returns a JSON object. A memory is shown compactly, as a
chat's injection shows it: ``{"id", "date", "role", "text"}``, with its ``conversation_id``
when it has one; long texts are cut in lists (``get_memory`` gives all of one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from gateway.auth import Principal
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.pipeline import recall_for
from gateway.state import GatewayState
from memory.errors import StillQueued
from memory.records import (
    MAX_CONTENT,
    Filter,
    Memory,
    Metadata,
    new_id,
    now,
    role_problem,
    to_rfc3339,
)
from memory.store import CursorNotFound

# Characters of a memory's text shown in a list of memories (search, recall, list).
LIST_TEXT = 2000


@dataclass(frozen=True)
class Caller:
    """Who calls a tool, and the namespace its connection resolved and checked."""

    gw: GatewayState
    principal: Principal
    namespace: str


Text = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CONTENT)]
MemoryId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=200,
        description="A memory's id, as a search or listing gave it (mem_...)",
    ),
]
ConversationId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=128,
        description="A conversation's id (the conversation_id memories show), not its title",
    ),
]
Role = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        description="What kind of memory: fact, preference, note, user, assistant, ...",
    ),
]


class Search(msgspec.Struct, forbid_unknown_fields=True):
    query: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=MAX_CONTENT,
            description="What to look for, in plain words: a question, a topic, a name",
        ),
    ]
    limit: Annotated[int, msgspec.Meta(ge=1, le=50, description="At most this many")] = 10
    conversation_id: ConversationId | None = None


class Preview(msgspec.Struct, forbid_unknown_fields=True):
    message: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=MAX_CONTENT,
            description="A user message, as it would be sent to the chat",
        ),
    ]


class Add(msgspec.Struct, forbid_unknown_fields=True):
    text: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=MAX_CONTENT,
            description="The memory, self-contained: 'The user's daughter Mia turns 7 on May 3'",
        ),
    ]
    role: Role = "fact"
    conversation_id: ConversationId | None = None


class Page(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=100, description="At most this many")] = 20
    cursor: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=200,
                description="The next_cursor of the previous page, for the page after it",
            ),
        ]
        | None
    ) = None
    conversation_id: ConversationId | None = None


class Get(msgspec.Struct, forbid_unknown_fields=True):
    id: MemoryId


class Update(msgspec.Struct, forbid_unknown_fields=True):
    id: MemoryId
    text: (
        Annotated[
            str, msgspec.Meta(min_length=1, max_length=MAX_CONTENT, description="The new text")
        ]
        | None
    ) = None
    role: Role | None = None


class Delete(msgspec.Struct, forbid_unknown_fields=True):
    id: MemoryId


class Forget(msgspec.Struct, forbid_unknown_fields=True):
    conversation_id: ConversationId


def date_of(memory: Memory) -> str:
    """When a memory was made, to the second (UTC)."""
    return to_rfc3339(memory.created_at)[:19] + "Z"


def shown(memory: Memory, *, cut: bool = True, score: float | None = None) -> dict[str, Any]:
    """A memory as a tool shows it."""
    text = memory.content
    if cut and len(text) > LIST_TEXT:
        more = len(text) - LIST_TEXT
        text = f"{text[:LIST_TEXT]} [... {more:,} more characters: get_memory shows all]"
    out: dict[str, Any] = {"id": memory.id, "date": date_of(memory), "role": memory.role}
    out["text"] = text
    conversation = memory.metadata.get("conversation_id")
    if conversation is not None:
        out["conversation_id"] = conversation
    if score is not None:
        out["score"] = round(score, 3)
    return out


def _blank(value: str, name: str) -> None:
    if not value.strip():
        raise BadRequest(f"{name} must not be blank", param=name, code="invalid_value")


def _role(role: str) -> str:
    if problem := role_problem(role):
        raise BadRequest(problem, param="role", code="invalid_value")
    return role


def _conversation(conversation_id: str | None) -> Filter | None:
    if conversation_id is None:
        return None
    _blank(conversation_id, "conversation_id")
    return {"conversation_id": conversation_id}


async def search_memory(c: Caller, args: Search) -> dict[str, Any]:
    _blank(args.query, "query")
    hits = await c.gw.service.recall(
        c.namespace, args.query, k=args.limit, where=_conversation(args.conversation_id)
    )
    return {"memories": [shown(h.memory, score=h.score) for h in hits]}


async def preview_recall(c: Caller, args: Preview) -> dict[str, Any]:
    _blank(args.message, "message")
    if not c.gw.settings.recall.enabled:
        return {"memories": [], "note": "recall is off on this gateway: a chat injects nothing"}
    hits = await recall_for(c.gw, c.namespace, [{"role": "user", "content": args.message}])
    return {"memories": [shown(h.memory) for h in hits]}


async def add_memory(c: Caller, args: Add) -> dict[str, Any]:
    _blank(args.text, "text")
    metadata: Metadata = {"source": "mcp", **(_conversation(args.conversation_id) or {})}
    stamp = now()
    memory = Memory(
        id=new_id(stamp),
        namespace=c.namespace,
        content=args.text,
        role=_role(args.role),
        created_at=stamp,
        metadata=metadata,
    )
    await c.gw.service.add([memory])
    return {"id": memory.id, "date": date_of(memory)}


async def list_memories(c: Caller, args: Page) -> dict[str, Any]:
    try:
        memories, more = await c.gw.service.list(
            c.namespace,
            limit=args.limit,
            after=args.cursor,
            where=_conversation(args.conversation_id),
        )
    except CursorNotFound as exc:
        raise BadRequest(
            f"the cursor {args.cursor!r} names no memory here: list again without a cursor",
            param="cursor",
            code="invalid_cursor",
        ) from exc
    return {
        "memories": [shown(m) for m in memories],
        "next_cursor": memories[-1].id if more and memories else None,
    }


async def get_memory(c: Caller, args: Get) -> dict[str, Any]:
    memory = await c.gw.service.get(c.namespace, args.id)
    if memory is None:
        raise NotFound(f"no memory {args.id!r} here", param="id")
    return {**shown(memory, cut=False), "metadata": memory.metadata}


async def update_memory(c: Caller, args: Update) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if args.text is not None:
        _blank(args.text, "text")
        changes["content"] = args.text
    if args.role is not None:
        changes["role"] = _role(args.role)
    if not changes:
        raise BadRequest("give the new text, or role, or both", code="invalid_value")
    try:
        memory = await c.gw.service.update(c.namespace, args.id, **changes)
    except StillQueued as exc:
        raise Conflict(
            f"memory {args.id!r} is still being written; try again in a moment", param="id"
        ) from exc
    if memory is None:
        raise NotFound(f"no memory {args.id!r} here", param="id")
    return shown(memory, cut=False)


async def delete_memory(c: Caller, args: Delete) -> dict[str, Any]:
    if not await c.gw.service.delete(c.namespace, args.id):
        raise NotFound(f"no memory {args.id!r} here", param="id")
    return {"deleted": args.id}


async def forget_conversation(c: Caller, args: Forget) -> dict[str, Any]:
    _blank(args.conversation_id, "conversation_id")
    deleted = await c.gw.service.delete_where(
        c.namespace, {"conversation_id": args.conversation_id}
    )
    return {"conversation_id": args.conversation_id, "deleted": deleted}


@dataclass(frozen=True)
class MemoryTool:
    name: str
    title: str
    description: str
    arguments: type[msgspec.Struct]
    run: Callable[[Caller, Any], Awaitable[dict[str, Any]]]
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False


TOOLS: tuple[MemoryTool, ...] = (
    MemoryTool(
        "search_memory",
        "Search memory",
        "Search the user's long-term memory (what they said in earlier chats, and facts saved "
        "about them) for what is relevant to a question or topic: the same search their chat "
        "app's memory uses. Best match first, each with its id, date, role and text. Use it "
        "before answering anything that may depend on the user's past, preferences or "
        "people; conversation_id keeps one conversation's memories only.",
        Search,
        search_memory,
        read_only=True,
        idempotent=True,
    ),
    MemoryTool(
        "preview_recall",
        "Preview recall",
        "Show exactly which memories the user's memory chat would add to its prompt if the "
        "user sent this message now (after its relevance and length limits). Changes "
        "nothing. Use it to check what the chat will know, or why it remembered something.",
        Preview,
        preview_recall,
        read_only=True,
        idempotent=True,
    ),
    MemoryTool(
        "add_memory",
        "Add a memory",
        "Save one thing worth remembering about the user for later chats and agents: a "
        "fact, preference, plan or decision, written so that it makes sense on its own. "
        "Search first to avoid saving something again, and use update_memory to correct "
        "an existing memory. Returns the new memory's id.",
        Add,
        add_memory,
    ),
    MemoryTool(
        "list_memories",
        "List recent memories",
        "List the user's memories newest first, a page at a time (pass next_cursor back as "
        "cursor for the next page); conversation_id keeps one conversation's. Use it to "
        "review what was remembered lately; use search_memory to find something.",
        Page,
        list_memories,
        read_only=True,
        idempotent=True,
    ),
    MemoryTool(
        "get_memory",
        "Get a memory",
        "Get one memory by its id, with its whole text and metadata (lists cut long texts).",
        Get,
        get_memory,
        read_only=True,
        idempotent=True,
    ),
    MemoryTool(
        "update_memory",
        "Update a memory",
        "Correct a memory that is wrong or outdated: replace its text and/or role, by id. "
        "Its id and date stay; the old version is kept in its history. Prefer this to "
        "adding a contradicting memory.",
        Update,
        update_memory,
        idempotent=True,
    ),
    MemoryTool(
        "delete_memory",
        "Delete a memory",
        "Delete one memory by its id, for good: when the user asks to forget it, or it is "
        "wrong and not worth correcting.",
        Delete,
        delete_memory,
        destructive=True,
        idempotent=True,
    ),
    MemoryTool(
        "forget_conversation",
        "Forget a conversation",
        "Delete, for good, every memory of one conversation (by the conversation_id its "
        "memories show): when the user asks to forget what was said in that chat. Returns "
        "how many were deleted.",
        Forget,
        forget_conversation,
        destructive=True,
        idempotent=True,
    ),
)


def input_schema(arguments: type[msgspec.Struct]) -> dict[str, Any]:
    """A tool's input schema: the JSON Schema of its arguments' Struct, inline."""
    (ref,), components = msgspec.json.schema_components([arguments])
    schema: dict[str, Any] = dict(components[ref["$ref"].rsplit("/", 1)[-1]])
    schema.pop("title", None)
    schema["properties"] = {
        name: _nullable(prop) for name, prop in schema.get("properties", {}).items()
    }
    return schema


def _nullable(prop: dict[str, Any]) -> dict[str, Any]:
    """``{"anyOf": [X, {"type": "null"}]}`` as X with ``"type": [t, "null"]``: its description
    where a host shows it, in the form every JSON Schema reader knows."""
    options = prop.get("anyOf")
    if not (isinstance(options, list) and len(options) == 2 and {"type": "null"} in options):
        return prop
    (other,) = [o for o in options if o != {"type": "null"}]
    if not isinstance(other.get("type"), str):
        return prop
    rest = {k: v for k, v in prop.items() if k != "anyOf"}
    return {**other, **rest, "type": [other["type"], "null"]}
