"""The MCP endpoint of ``memgate serve`` on its defaults, through the official MCP client over
streamable HTTP: the tools and each one's work, bad arguments as tool errors, keys and their
namespaces, memories shared with the memory chat both ways, and across a fleet."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult

from tests.conftest import wait_until
from tests.e2e.conftest import ADMIN_KEY, CHAT_KEY, TEAM_KEY, GatewayProcess, start_gateway
from tests.fake_upstream import FakeUpstream
from tests.processes import ChromaServer

pytestmark = pytest.mark.slow

T = TypeVar("T")

TOOLS = {
    "search_memory",
    "preview_recall",
    "add_memory",
    "list_memories",
    "get_memory",
    "update_memory",
    "delete_memory",
    "forget_conversation",
}


@contextlib.asynccontextmanager
async def connect(
    url: str, *, key: str | None = None, mode: str = "auto", **headers: str
) -> AsyncIterator[Client]:
    """An MCP client session on ``url`` (the SDK's ``Client`` on its streamable HTTP
    transport), sending ``key`` as a bearer token."""
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,  # type: ignore[arg-type]
    ):
        yield client


def session(url: str, work: Callable[[Client], Awaitable[T]], **kw: Any) -> T:
    async def run() -> T:
        async with connect(url, **kw) as client:
            return await work(client)

    return asyncio.run(run())


def ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def error(result: CallToolResult) -> str:
    assert result.is_error, result
    text = result.content[0].text  # type: ignore[union-attr]
    assert isinstance(text, str)
    return text


def fresh(prefix: str = "mcp") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def chat(gw: GatewayProcess, ns: str, text: str, **headers: str) -> httpx.Response:
    r = httpx.post(
        f"{gw.url}/v1/memory/chat/completions",
        params={"namespace": ns},
        json={"model": "fake-model", "messages": [{"role": "user", "content": text}]},
        headers=headers,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r


def injected(upstream: FakeUpstream) -> str:
    """The memory message the last memory chat sent upstream ("" when none)."""
    messages = upstream.last_body()["messages"]
    return "\n".join(
        m["content"] for m in messages if m["role"] == "system" and "Memories" in m["content"]
    )


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_the_tools_are_listed_for_a_model_to_choose(gateway: GatewayProcess, mode: str) -> None:
    async def work(client: Client) -> Any:
        return (await client.list_tools()).tools

    tools = {t.name: t for t in session(f"{gateway.url}/mcp/ns/{fresh()}", work, mode=mode)}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert len(tool.description or "") > 60
        schema = tool.input_schema
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False
        assert "namespace" not in schema["properties"]  # never a way to another namespace
        assert tool.annotations is not None
    reading = {"search_memory", "preview_recall", "list_memories", "get_memory"}
    assert {n for n, t in tools.items() if t.annotations and t.annotations.read_only_hint} == (
        reading
    )
    assert {n for n, t in tools.items() if t.annotations and t.annotations.destructive_hint} == {
        "delete_memory",
        "forget_conversation",
    }
    assert tools["search_memory"].input_schema["required"] == ["query"]


def test_each_tool_does_its_job(gateway: GatewayProcess) -> None:
    ns = fresh()

    async def work(c: Client) -> None:
        added = [
            ok(await c.call_tool("add_memory", {"text": text, "conversation_id": conv}))
            for text, conv in (
                ("The user's daughter Mia turns 7 on May 3", "trip-1"),
                ("The user is allergic to peanuts", "trip-1"),
                ("The user drives a green Volvo estate", "cars-2"),
            )
        ]
        assert all(a["id"].startswith("mem_") and a["date"].endswith("Z") for a in added)
        mia, peanuts, volvo = (a["id"] for a in added)

        found = ok(await c.call_tool("search_memory", {"query": "when is Mia's birthday?"}))
        best = found["memories"][0]
        assert best["id"] == mia
        assert set(best) == {"id", "date", "role", "text", "conversation_id", "score"}
        assert best["role"] == "fact"
        assert best["conversation_id"] == "trip-1"
        one = ok(
            await c.call_tool(
                "search_memory", {"query": "car", "conversation_id": "cars-2", "limit": 5}
            )
        )
        assert [m["id"] for m in one["memories"]] == [volvo]

        preview = ok(await c.call_tool("preview_recall", {"message": "Any food allergies?"}))
        assert peanuts in [m["id"] for m in preview["memories"]]

        page = ok(await c.call_tool("list_memories", {"limit": 2}))
        assert [m["id"] for m in page["memories"]] == [volvo, peanuts]  # newest first
        rest = ok(await c.call_tool("list_memories", {"cursor": page["next_cursor"]}))
        assert [m["id"] for m in rest["memories"]] == [mia]
        assert rest["next_cursor"] is None
        trip = ok(await c.call_tool("list_memories", {"conversation_id": "trip-1"}))
        assert [m["id"] for m in trip["memories"]] == [peanuts, mia]

        got = ok(await c.call_tool("get_memory", {"id": mia}))
        assert got["text"] == "The user's daughter Mia turns 7 on May 3"
        assert got["metadata"] == {"source": "mcp", "conversation_id": "trip-1"}

        changed = ok(
            await c.call_tool(
                "update_memory", {"id": volvo, "text": "The user drives a red Tesla Model 3"}
            )
        )
        assert changed["text"] == "The user drives a red Tesla Model 3"
        assert changed["id"] == volvo
        found = ok(await c.call_tool("search_memory", {"query": "what car does the user drive"}))
        assert "red Tesla" in found["memories"][0]["text"]

        assert ok(await c.call_tool("delete_memory", {"id": volvo})) == {"deleted": volvo}
        assert "no memory" in error(await c.call_tool("get_memory", {"id": volvo}))

        forgot = ok(await c.call_tool("forget_conversation", {"conversation_id": "trip-1"}))
        assert forgot == {"conversation_id": "trip-1", "deleted": 2}
        assert ok(await c.call_tool("list_memories", {}))["memories"] == []

    session(f"{gateway.url}/mcp/ns/{ns}", work)
    # what the tools did is what the memory API sees
    r = httpx.get(f"{gateway.url}/v1/memory/memories", params={"namespace": ns})
    assert r.json()["data"] == []


def test_bad_arguments_are_tool_errors_the_model_can_read(gateway: GatewayProcess) -> None:
    async def work(c: Client) -> None:
        for name, arguments, said in (
            ("search_memory", {}, "missing required field `query`"),
            ("search_memory", {"query": 42}, "Expected `str`, got `int` - at `query`"),
            ("search_memory", {"query": "x", "limit": 500}, "at `limit`"),
            ("search_memory", {"query": "  "}, "query must not be blank"),
            ("search_memory", {"query": "x", "namespace": "other"}, "tools take no namespace"),
            ("add_memory", {"text": "x", "role": "system"}, "not allowed for a memory"),
            ("add_memory", {"text": "x", "tags": ["a"]}, "unknown field `tags`"),
            ("update_memory", {"id": "mem_x"}, "give the new text"),
            ("update_memory", {"id": "mem_x", "text": "y"}, "no memory 'mem_x'"),
            ("delete_memory", {"id": "mem_x"}, "no memory 'mem_x'"),
            ("list_memories", {"cursor": "nope"}, "list again without a cursor"),
            ("forget_conversation", {"conversation_id": ""}, "length >= 1"),
        ):
            assert said in error(await c.call_tool(name, arguments)), (name, arguments)
        with pytest.raises(MCPError, match="unknown tool"):  # a protocol error, as MCP says
            await c.call_tool("drop_database", {})
        # the session goes on after its errors
        ok(await c.call_tool("list_memories", {}))

    session(f"{gateway.url}/mcp/ns/{fresh()}", work)


def test_a_memory_added_through_mcp_is_recalled_by_a_chat_and_back(
    gateway: GatewayProcess, upstream: tuple[FakeUpstream, str]
) -> None:
    ns = fresh()
    url = f"{gateway.url}/mcp"  # the namespace by header this time

    async def add(c: Client) -> Any:
        text = "The user's favourite climbing crag is Fontainebleau"
        return ok(await c.call_tool("add_memory", {"text": text}))

    session(url, add, **{"x-memory-namespace": ns})
    r = chat(gateway, ns, "Where should I go climbing this weekend?")
    assert int(r.headers["x-memory-recalled"]) >= 1
    assert "Fontainebleau" in injected(upstream[0])

    # and back: what a chat remembered (maybe still queued) is found through MCP, by its
    # conversation too, and forgetting the conversation takes it out of the next chat
    chat(gateway, ns, "My bouldering grade is 6B+", **{"x-memory-conversation": "conv-9"})

    async def find(c: Client) -> Any:
        found = ok(await c.call_tool("search_memory", {"query": "bouldering grade"}))
        return found["memories"]

    hits = session(url, find, **{"x-memory-namespace": ns})
    assert hits[0]["text"] == "My bouldering grade is 6B+"
    assert hits[0]["role"] == "user"
    assert hits[0]["conversation_id"] == "conv-9"

    async def forget(c: Client) -> Any:
        return ok(await c.call_tool("forget_conversation", {"conversation_id": "conv-9"}))

    # the user turn and the assistant's answer
    assert session(url, forget, **{"x-memory-namespace": ns})["deleted"] == 2
    chat(gateway, ns, "What is my bouldering grade?")
    assert "6B+" not in injected(upstream[0])
    assert all("6B+" not in hit["text"] for hit in session(url, find, **{"x-memory-namespace": ns}))


def test_keys_reach_only_their_namespaces(keyed_gateway: GatewayProcess) -> None:
    base = f"{keyed_gateway.url}/mcp"
    team_ns, other_ns = fresh("team"), fresh("other")

    async def add(c: Client) -> Any:
        return ok(await c.call_tool("add_memory", {"text": "The team ships on Thursdays"}))

    async def listing(c: Client) -> Any:
        return ok(await c.call_tool("list_memories", {}))["memories"]

    # the scoped key in its namespace
    added = session(f"{base}/ns/{team_ns}", add, key=TEAM_KEY)
    # ... and outside it: refused at the HTTP level, by path, query and header
    for url, headers in (
        (f"{base}/ns/{other_ns}", {}),
        (f"{base}?namespace={other_ns}", {}),
        (base, {"x-memory-namespace": other_ns}),
        (base, {}),  # the default namespace is not the team's either
    ):
        # the SDK's client says only that the server answered with an error ...
        with pytest.raises(BaseExceptionGroup) as caught:
            session(url, listing, key=TEAM_KEY, **headers)
        assert caught.value.subgroup(MCPError) is not None, caught.value
        # ... which is the gateway's OpenAI-shaped 403
        raw = httpx.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            headers={
                "authorization": f"Bearer {TEAM_KEY}",
                "accept": "application/json, text/event-stream",
                **headers,
            },
        )
        assert raw.status_code == 403
        assert raw.json()["error"]["type"] == "permission_error"

    # a tool argument is no way out either
    async def plant(c: Client) -> Any:
        return error(await c.call_tool("add_memory", {"text": "planted", "namespace": other_ns}))

    assert "tools take no namespace" in session(f"{base}/ns/{team_ns}", plant, key=TEAM_KEY)
    assert session(f"{base}/ns/{other_ns}", listing, key=ADMIN_KEY) == []
    # the admin key sees the team's memory; no key, a wrong key, a chat-only key: refused
    assert [m["id"] for m in session(f"{base}/ns/{team_ns}", listing, key=ADMIN_KEY)] == [
        added["id"]
    ]
    for key, status in ((None, 401), ("mg-e2e-wrong-key", 401), (CHAT_KEY, 403)):
        raw = httpx.post(
            f"{base}/ns/{team_ns}",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            headers={"authorization": f"Bearer {key}"} if key else {},
        )
        assert raw.status_code == status, raw.text
        assert set(raw.json()["error"]) == {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, upstream: tuple[FakeUpstream, str]
) -> Iterator[list[GatewayProcess]]:
    root: Path = tmp_path_factory.mktemp("mcp-fleet")
    server = ChromaServer(root / "chroma").start()
    gateways: list[GatewayProcess] = []
    try:
        for name in ("a", "b"):
            gateways.append(start_gateway(root / name, upstream[1], "--chroma-url", server.url))
        yield gateways
    finally:
        for gw in gateways:
            gw.stop()
        server.stop()


def test_added_through_mcp_on_one_gateway_recalled_through_another(
    fleet: list[GatewayProcess], upstream: tuple[FakeUpstream, str]
) -> None:
    a, b = fleet
    ns = fresh()

    async def add(c: Client) -> Any:
        for text, conv in (
            ("The user's cat is called Miso", "pets"),
            ("The user's dog is called Biscuit", "pets"),
            ("The user works night shifts", "work"),
        ):
            ok(await c.call_tool("add_memory", {"text": text, "conversation_id": conv}))

    session(f"{a.url}/mcp/ns/{ns}", add)

    async def search(c: Client) -> Any:
        return ok(await c.call_tool("search_memory", {"query": "what is the cat's name"}))

    # through B: its MCP search and its memory chat
    assert session(f"{b.url}/mcp/ns/{ns}", search)["memories"][0]["text"] == (
        "The user's cat is called Miso"
    )
    chat(b, ns, "Remind me of my cat's name")
    assert "Miso" in injected(upstream[0])

    # a conversation forgotten through B is gone through A (within the propagation bound)
    async def forget(c: Client) -> Any:
        return ok(await c.call_tool("forget_conversation", {"conversation_id": "pets"}))

    assert session(f"{b.url}/mcp/ns/{ns}", forget)["deleted"] == 2

    def texts_through_a() -> set[str]:
        async def listing(c: Client) -> Any:
            return ok(await c.call_tool("list_memories", {}))["memories"]

        return {m["text"] for m in session(f"{a.url}/mcp/ns/{ns}", listing)}

    pets = {"The user's cat is called Miso", "The user's dog is called Biscuit"}
    wait_until(lambda: "The user works night shifts" in texts_through_a(), timeout=10)
    wait_until(lambda: not texts_through_a() & pets, timeout=10)
    hits = session(f"{a.url}/mcp/ns/{ns}", search)["memories"]
    assert all("Miso" not in h["text"] for h in hits)

    # written through A a moment ago, forgotten through B at once: B reads what A wrote
    # before it lists the conversation, not a second later
    async def add_late(c: Client) -> Any:
        for text in ("The user plans a trip to Lisbon", "The user wants to see Sintra"):
            ok(await c.call_tool("add_memory", {"text": text, "conversation_id": "late"}))

    async def forget_late(c: Client) -> Any:
        return ok(await c.call_tool("forget_conversation", {"conversation_id": "late"}))

    for _ in range(3):
        session(f"{a.url}/mcp/ns/{ns}", add_late)
        assert session(f"{b.url}/mcp/ns/{ns}", forget_late)["deleted"] == 2
    left = texts_through_a()
    assert "The user works night shifts" in left
    assert not {t for t in left if "Lisbon" in t or "Sintra" in t}
