"""A tool-call round trip with the official ``openai`` SDK through the memory endpoint: the
assistant's tool call and the tool's result reach the upstream untouched, and what is
remembered is the user's question, the call, and the final answer (not the tool's output)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import wait_until
from tests.e2e.conftest import GatewayProcess
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
QUESTION = "What is the weather like in Paris?"
RESULT = json.dumps({"city": "Paris", "sky": "clear", "temp_c": 18})


def memories(gateway: GatewayProcess, namespace: str) -> list[tuple[str, str]]:
    page = httpx.get(
        gateway.url + "/v1/memory/memories", params={"namespace": namespace, "limit": 100}
    ).json()
    return sorted((m["role"], m["content"]) for m in page["data"])


def check_second_request(fake: FakeUpstream, sent: list[dict[str, Any]]) -> None:
    seen = fake.last_body()
    assert seen["model"] == "tool"
    assert seen["tools"] == TOOLS
    # Everything the client sent arrives as is; the gateway only adds its memory message.
    assert [m for m in seen["messages"] if m["role"] != "system"] == sent


def expected_memories(final: str) -> list[tuple[str, str]]:
    return sorted(
        [
            ("user", QUESTION),
            ("assistant", '[called tool get_weather({"city": "Paris"})]'),
            ("assistant", final),
        ]
    )


def test_tool_call_round_trip(gateway: GatewayProcess, upstream: tuple[FakeUpstream, str]) -> None:
    fake, _ = upstream
    name = "tools-" + uuid.uuid4().hex[:8]
    client = openai.OpenAI(
        base_url=gateway.url + "/v1/memory",
        api_key="k",
        default_query={"namespace": name},
        max_retries=0,
    )
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    first = client.chat.completions.create(model="tool", messages=messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert (call.id, call.function.name) == ("call_fake1", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": RESULT},
    ]
    second = client.chat.completions.create(model="tool", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == f"tool said: {RESULT}"
    check_second_request(fake, messages)
    wait_until(lambda: memories(gateway, name) == expected_memories(f"tool said: {RESULT}"))


def test_streamed_tool_call_round_trip(
    gateway: GatewayProcess, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, _ = upstream
    name = "tools-" + uuid.uuid4().hex[:8]
    client = openai.OpenAI(
        base_url=f"{gateway.url}/v1/memory/ns/{name}", api_key="k", max_retries=0
    )
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for chunk in client.chat.completions.create(
        model="tool", messages=messages, tools=TOOLS, stream=True
    ):
        for delta_call in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(
                delta_call.index,
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
            )
            entry["id"] = delta_call.id or entry["id"]
            if delta_call.function is not None:
                entry["function"]["name"] += delta_call.function.name or ""
                entry["function"]["arguments"] += delta_call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}

    messages += [
        {"role": "assistant", "content": None, "tool_calls": [calls[0]]},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": RESULT},
    ]
    text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model="tool", messages=messages, tools=TOOLS, stream=True
        )
        if chunk.choices
    )
    assert text == f"tool said: {RESULT}"
    check_second_request(fake, messages)
    wait_until(lambda: memories(gateway, name) == expected_memories(f"tool said: {RESULT}"))
