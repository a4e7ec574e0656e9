"""The MCP endpoint on fakes (raw JSON-RPC over the test client): switched off, rate limited,
counted, and a failing store said as a tool error. The official client against ``memgate
serve``: tests/e2e/test_mcp.py; keys and hostile input: tests/unit/test_hostile.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar.testing import TestClient

from gateway.config import KeySettings, key_hash
from gateway.memory_tools import TOOLS, input_schema
from tests.conftest import AppHarness, metric
from tests.unit.test_chat import assert_openai_error
from tests.unit.test_hostile import INITIALIZE, MCP_HEADERS, mcp_message, mcp_tool


def call(client: TestClient[Any], body: Any, path: str = "/mcp/ns/u1", **headers: str) -> Any:
    return client.post(path, json=body, headers={**MCP_HEADERS, **headers})


def test_it_can_be_switched_off(tmp_path: Path) -> None:
    with AppHarness(tmp_path, mcp={"enabled": False}).client() as c:
        assert_openai_error(call(c, INITIALIZE), 404)


def test_every_tool_refuses_unknown_arguments_and_names_no_namespace() -> None:
    for tool in TOOLS:
        schema = input_schema(tool.arguments)
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False
        assert "namespace" not in schema["properties"]
        for prop in schema["properties"].values():
            assert prop.get("description"), (tool.name, prop)


def test_it_is_rate_limited_and_counted_like_any_request(tmp_path: Path) -> None:
    keys = (KeySettings(name="k", key_sha256=key_hash("key"), namespaces=("u1",), memory_api=True),)
    with AppHarness(tmp_path, keys=keys, auth={"requests_per_minute": 2}).client() as c:
        key = {"authorization": "Bearer key"}
        assert call(c, INITIALIZE, **key).status_code == 200
        assert call(c, mcp_message("tools/list", {}), **key).status_code == 200
        r = call(c, mcp_message("tools/list", {}), **key)
        assert assert_openai_error(r, 429)["type"] == "rate_limit_error"
        assert "retry-after" in r.headers
        seen = c.get("/metrics").text
        labels = {"route": "/mcp", "method": "POST", "status": "200"}
        assert metric(seen, "memgate_http_requests_total", **labels) == 2


def test_a_failing_store_is_a_tool_error(harness: AppHarness, client: TestClient[Any]) -> None:
    harness.store.down = True
    for name, arguments in (
        ("add_memory", {"text": "x"}),
        ("list_memories", {}),
        ("get_memory", {"id": "mem_x"}),
        ("forget_conversation", {"conversation_id": "c"}),
    ):
        r = call(client, mcp_tool(name, arguments))
        assert r.status_code == 200
        result = r.json()["result"]
        assert result["isError"] is True
        assert result["content"][0]["text"] == "the memory store is unavailable; try again shortly"
