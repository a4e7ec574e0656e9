"""LangChain's ``ChatOpenAI`` (langchain-openai) pointed at the gateway: a plain call and a
streamed one, the namespace in the base URL's path."""

from __future__ import annotations

import uuid

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from tests.e2e.conftest import GatewayProcess
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow


def test_chat_openai_plain_and_streamed(
    gateway: GatewayProcess, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, _ = upstream
    name = "lc-" + uuid.uuid4().hex[:8]
    llm = ChatOpenAI(
        model="fake-model",
        base_url=f"{gateway.url}/v1/memory/ns/{name}",
        api_key="unused",
        max_retries=0,
        temperature=0.2,
    )
    reply = llm.invoke([SystemMessage("Be brief."), HumanMessage("My favourite tea is genmaicha.")])
    assert reply.content == "echo: My favourite tea is genmaicha."
    sent = fake.last_body()
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My favourite tea is genmaicha."},
    ]
    assert sent["temperature"] == 0.2

    chunks = list(llm.stream("Which tea do I like?"))
    assert len(chunks) > 2
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(str(c.content) for c in chunks) == "echo: Which tea do I like?"
    streamed = fake.last_body()
    assert streamed["stream"] is True
    memory, question = streamed["messages"]
    assert memory["role"] == "system"
    assert "My favourite tea is genmaicha." in memory["content"]
    assert question == {"role": "user", "content": "Which tea do I like?"}
