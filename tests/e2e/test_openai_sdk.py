"""The official ``openai`` SDK against a running gateway process."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import ADMIN_KEY, TEAM_KEY, GatewayProcess, start_gateway
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow


def ns() -> str:
    return "e2e-" + uuid.uuid4().hex[:8]


def sdk(gateway: GatewayProcess, namespace: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gateway.url + "/v1/memory",
        api_key="sk-client",
        default_query={"namespace": namespace},
        max_retries=0,
    )


def memory_text(body: dict[str, object]) -> str:
    messages = body["messages"]
    assert isinstance(messages, list)
    return "\n".join(str(m.get("content")) for m in messages if m.get("role") == "system")


def test_sync_memory_flow_and_isolation(
    gateway: GatewayProcess, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, _ = upstream
    a, b = ns(), ns()
    client = sdk(gateway, a)
    first = client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "My favourite colour is teal."}],
    )
    assert first.choices[0].message.content == "echo: My favourite colour is teal."
    raw = client.chat.completions.with_raw_response.create(
        model="fake-model",
        messages=[{"role": "user", "content": "What is my favourite colour?"}],
    )
    assert raw.headers["x-memory-namespace"] == a
    assert int(raw.headers["x-memory-recalled"]) >= 1
    assert "My favourite colour is teal." in memory_text(fake.last_body())
    assert fake.requests[-1].headers["authorization"] == "Bearer sk-e2e-upstream"

    other = sdk(gateway, b).chat.completions.with_raw_response.create(
        model="fake-model",
        messages=[{"role": "user", "content": "What is my favourite colour?"}],
    )
    assert other.headers["x-memory-recalled"] == "0"
    assert "teal" not in str(fake.last_body()["messages"])


def test_async_client_with_path_form_namespace(
    gateway: GatewayProcess, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, _ = upstream
    name = ns()

    async def run() -> None:
        client = openai.AsyncOpenAI(
            base_url=f"{gateway.url}/v1/memory/ns/{name}", api_key="k", max_retries=0
        )
        await client.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "I keep my spare key under the blue pot."}],
        )
        reply = await client.chat.completions.create(
            model="fake-model",
            messages=[
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": "Where is my spare key?"},
            ],
        )
        assert reply.choices[0].message.content == "echo: Where is my spare key?"
        seen = fake.last_body()["messages"]
        assert seen[0] == {"role": "system", "content": "You are helpful."}
        assert "blue pot" in seen[1]["content"]
        models = await client.models.list()
        assert [m.id for m in models.data] == ["fake-model"]
        await client.close()

    asyncio.run(run())


def test_streaming_with_the_sdk(gateway: GatewayProcess) -> None:
    name = ns()
    client = sdk(gateway, name)
    stream = client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "I was born in Reykjavik."}],
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "echo: I was born in Reykjavik."
    hits = httpx.post(
        gateway.url + "/v1/memory/search",
        params={"namespace": name},
        json={"query": "Where was I born?"},
    ).json()["data"]
    contents = [h["content"] for h in hits]
    assert "I was born in Reykjavik." in contents
    assert "echo: I was born in Reykjavik." in contents


def test_usage_is_counted_and_the_stream_is_the_one_asked_for(
    keyed_gateway: GatewayProcess, upstream: tuple[FakeUpstream, str]
) -> None:
    """The gateway asks for a stream's usage to count it; the SDK sees no usage chunk unless
    it asked for one itself."""
    name = "team-" + ns()
    client = openai.OpenAI(
        base_url=keyed_gateway.url + f"/v1/memory/ns/{name}", api_key=TEAM_KEY, max_retries=0
    )
    message = [{"role": "user", "content": "count my words please"}]
    chunks = list(client.chat.completions.create(model="fake-model", messages=message, stream=True))
    assert upstream[0].last_body()["stream_options"] == {"include_usage": True}
    assert all(c.choices for c in chunks)  # no usage-only chunk
    assert all(c.usage is None for c in chunks)
    raw = httpx.post(
        keyed_gateway.url + f"/v1/memory/ns/{name}/chat/completions",
        headers={"authorization": f"Bearer {TEAM_KEY}"},
        json={"model": "fake-model", "messages": message, "stream": True},
    ).text
    assert '"usage"' not in raw
    asked = list(
        client.chat.completions.create(
            model="fake-model",
            messages=message,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert asked[-1].usage is not None
    assert asked[-1].usage.completion_tokens == 5  # "echo: count my words please"
    report = httpx.get(
        keyed_gateway.url + "/v1/memory/usage",
        params={"namespace": name},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    ).json()
    assert report["total"] == {
        "requests": 3,
        "prompt_tokens": 9,
        "completion_tokens": 15,
        "total_tokens": 24,
    }
    assert [r["key"] for r in report["data"]] == ["team"]


def test_responses_api_with_memory(
    gateway: GatewayProcess, upstream: tuple[FakeUpstream, str]
) -> None:
    """The SDK's Responses API against /v1/memory: plain and streamed, remembered, recalled."""
    name = ns()
    client = sdk(gateway, name)
    first = client.responses.create(model="fake-model", input="My sister is called Ines.")
    assert first.output_text == "echo: My sister is called Ines."
    with client.responses.create(
        model="fake-model", input="I keep bees in the garden.", stream=True
    ) as events:
        kinds = [event.type for event in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    contents: set[str] = set()
    for _ in range(100):
        listed = httpx.get(
            gateway.url + "/v1/memory/memories", params={"namespace": name, "limit": 10}
        ).json()["data"]
        contents = {m["content"] for m in listed}
        if len(contents) == 4:
            break
        time.sleep(0.05)
    assert contents == {
        "My sister is called Ines.",
        "echo: My sister is called Ines.",
        "I keep bees in the garden.",
        "echo: I keep bees in the garden.",
    }
    later = client.responses.create(
        model="fake-model",
        instructions="Answer briefly.",
        input=[{"role": "user", "content": "What is my sister called?"}],
    )
    assert later.output_text == "echo: What is my sister called?"
    sent = upstream[0].last_body()
    assert sent["instructions"].startswith("Answer briefly.\n\nMemories from earlier")
    assert "My sister is called Ines." in sent["instructions"]


def test_errors_reach_the_sdk_as_api_errors(
    gateway: GatewayProcess, upstream: tuple[FakeUpstream, str]
) -> None:
    # The SDK's own retries are on (2, its default): the gateway retried already (2, its
    # default) and says so in x-should-retry, so the upstream is asked 3 times, not 9.
    client = sdk(gateway, ns()).with_options(max_retries=2)
    before = len(upstream[0].requests)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="fail-500", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 500
    assert info.value.response.headers["x-should-retry"] == "false"
    assert len(upstream[0].requests) - before == 3
    bad = openai.OpenAI(
        base_url=gateway.url + "/v1/memory",
        api_key="k",
        default_query={"namespace": "not ok!"},
        max_retries=0,
    )
    with pytest.raises(openai.BadRequestError) as bad_info:
        bad.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert bad_info.value.body["param"] == "namespace"  # type: ignore[index]
    with pytest.raises(openai.APIError):
        list(
            client.chat.completions.create(
                model="cut", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )


def test_memory_api_round_trip(gateway: GatewayProcess) -> None:
    name = ns()
    http = httpx.Client(base_url=gateway.url, params={"namespace": name})
    ids = http.post(
        "/v1/memory/memories",
        json={
            "memories": [
                {"content": "Takes the 7:40 train to work"},
                {"content": "Owns a red kayak"},
            ]
        },
    ).json()["ids"]
    assert len(ids) == 2
    hits = http.post("/v1/memory/search", json={"query": "boat", "k": 2}).json()["data"]
    assert hits[0]["id"] == ids[1]
    listed = http.get("/v1/memory/memories").json()
    assert {m["id"] for m in listed["data"]} == set(ids)
    assert (
        http.get(f"/v1/memory/memories/{ids[0]}").json()["content"]
        == "Takes the 7:40 train to work"
    )
    assert http.delete(f"/v1/memory/memories/{ids[0]}").json()["deleted"] is True
    assert http.get(f"/v1/memory/memories/{ids[0]}").status_code == 404
    erased = http.delete(f"/v1/memory/namespaces/{name}").json()
    assert erased["deleted"] == 1
    assert http.post("/v1/memory/search", json={"query": "kayak"}).json()["data"] == []
    assert http.get("/v1/memory/memories").json()["data"] == []


def test_sigterm_flushes_the_queue(tmp_path: Path, upstream: tuple[FakeUpstream, str]) -> None:
    gw = start_gateway(tmp_path / "data", upstream[1])
    try:
        client = sdk(gw, "flush")
        for i in range(5):
            client.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": f"fact number {i}"}]
            )
    finally:
        code = gw.stop()
    assert code == 0, gw.log()
    assert "memgate stopped" in gw.log()
    from memory.chroma import ChromaStore
    from memory.outbox import Outbox

    assert Outbox(tmp_path / "data" / "outbox.sqlite3").depth() == 0
    assert ChromaStore(path=tmp_path / "data" / "chroma").count("flush") == 10


def test_the_rest_of_v1_goes_through_with_the_sdk(
    gateway: GatewayProcess, upstream: tuple[FakeUpstream, str]
) -> None:
    """An app that set OPENAI_BASE_URL to the gateway (plain or memory base URL) keeps
    working past its first call that is not a chat."""
    for base in ("/v1", "/v1/memory", "/v1/memory/ns/alice"):
        client = openai.OpenAI(base_url=gateway.url + base, api_key="sk-client", max_retries=0)
        got = client.embeddings.create(model="text-embedding-3-small", input=["ab", "abcd"])
        assert [d.embedding for d in got.data] == [[2.0, 1.0], [4.0, 1.0]]
        assert upstream[0].requests[-1].path == "/v1/embeddings"
        with pytest.raises(openai.NotFoundError):  # the upstream's own answer
            client.moderations.create(model="omni-moderation-latest", input="x")


URL_FORMS = {
    "query": {"base": "/v1/memory", "query": True},
    "path": {"base": "/v1/memory/ns/{ns}"},
    "header": {"base": "/v1/memory", "header": True},
    "plain": {"base": "/v1"},
}


@pytest.mark.parametrize("form", list(URL_FORMS))
def test_the_sdks_stored_object_calls_pass_through_in_every_url_form(
    gateway: GatewayProcess, upstream: tuple[FakeUpstream, str], form: str
) -> None:
    """The Responses API's and stored chat completions' calls on an id (retrieve, cancel,
    input items, update, list, delete, messages) reach the upstream at its own path in each
    base URL form, and the upstream never sees the namespace parameter."""
    fake, namespace = upstream[0], ns()
    shape = URL_FORMS[form]
    client = openai.OpenAI(
        base_url=gateway.url + str(shape["base"]).format(ns=namespace),
        api_key="sk-client",
        max_retries=0,
        default_query={"namespace": namespace, "keep": "1"}
        if shape.get("query")
        else {"keep": "1"},
        default_headers={"x-memory-namespace": namespace} if shape.get("header") else None,
    )
    before = len(fake.requests)
    calls = [
        ("GET", "/v1/responses/resp_123", lambda: client.responses.retrieve("resp_123").id),
        (
            "POST",
            "/v1/responses/resp_123/cancel",
            lambda: client.responses.cancel("resp_123").status,
        ),
        (
            "GET",
            "/v1/responses/resp_1/input_items",
            lambda: client.responses.input_items.list("resp_1").data[0].content[0].text,  # type: ignore[union-attr]
        ),
        ("DELETE", "/v1/responses/resp_123", lambda: client.responses.delete("resp_123")),
        (
            "POST",
            "/v1/responses/input_tokens",
            lambda: (
                client.responses.input_tokens.count(model="fake-model", input="hi").input_tokens
            ),
        ),
        ("GET", "/v1/chat/completions/abc", lambda: client.chat.completions.retrieve("abc").id),
        (
            "POST",
            "/v1/chat/completions/abc",
            lambda: client.chat.completions.update("abc", metadata={"k": "v"}).metadata,
        ),
        ("GET", "/v1/chat/completions", lambda: client.chat.completions.list().data[0].id),
        (
            "DELETE",
            "/v1/chat/completions/abc",
            lambda: client.chat.completions.delete("abc").deleted,
        ),
        (
            "GET",
            "/v1/chat/completions/abc/messages",
            lambda: client.chat.completions.messages.list("abc").data[0].id,
        ),
        ("GET", "/v1/models/fake-model", lambda: client.models.retrieve("fake-model").id),
    ]
    answers = [call() for _, _, call in calls]
    assert answers == [
        "resp_123",
        "cancelled",
        "input of resp_1",
        None,
        3,
        "abc",
        {"k": "v"},
        "chatcmpl-fake",
        True,
        "abc-0",
        "fake-model",
    ]
    seen = [(r.method, r.path, r.query) for r in fake.requests[before:]]
    assert [(method, path) for method, path, _ in seen] == [(m, p) for m, p, _ in calls]
    assert all("namespace" not in query for _, _, query in seen), seen
    assert all("keep=1" in query for _, _, query in seen), seen  # other parameters go on
