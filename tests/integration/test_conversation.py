"""Memory that follows the conversation, at the wire: the real model, embedded Chroma behind
the gateway's local copy, the memory chat endpoint, and a fake upstream on loopback that
records what it received. A follow-up recalls the person it leans on; a changed fact injects
the new statement, and it reads as current; a self-contained question is unaffected; nothing
of the request's own messages comes back; each behaviour has a setting that turns it off."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.inject import HEADER
from memory.embedder import Embedder
from tests.conftest import make_settings
from tests.fake_upstream import FakeUpstream, serve_in_thread

pytestmark = pytest.mark.slow

DAY = 86400
# A history of one user: facts about people said in passing, chatter, and questions.
HISTORY = [
    ("Can you help me plan a budget? My cousin Ravi has got hooked on pottery lately.", 1),
    ("My colleague Mina won't stop talking about fencing. Any tips for sleeping better?", 2),
    ("What should I pack for a weekend trip? My neighbour Omar lives in Bergen.", 3),
    ("My aunt Dalia works as a pharmacist. How do I write a polite email?", 4),
    ("My friend Greta is really into astronomy these days.", 5),
    ("thanks!", 6),
    ("Where does my neighbour Omar live, do you know?", 7),
    ("Omar moved away from Bergen, he lives in Seville now. Any podcast tips?", 40),
    ("My brother Luca took up salsa dancing this year.", 41),
    ("Help me write a cover letter for a job in marketing.", 42),
]


class Gateway:
    def __init__(self, url: str, upstream: FakeUpstream) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)
        self.upstream = upstream

    def load(self, ns: str) -> None:
        memories = [
            {"content": text, "role": "user", "created_at": _date(day)} for text, day in HISTORY
        ]
        r = self.http.post(
            "/v1/memory/memories", params={"namespace": ns}, json={"memories": memories}
        )
        assert r.status_code == 200, r.text

    def chat(self, ns: str, *turns: str) -> list[str]:
        """A conversation sent as a chat app sends it, one request a user turn (each answered
        and remembered); the memory texts injected into the last request, in their order."""
        messages: list[dict[str, Any]] = []
        for turn in turns:
            messages.append({"role": "user", "content": turn})
            r = self.http.post(
                "/v1/memory/chat/completions",
                params={"namespace": ns},
                json={"model": "fake-model", "messages": messages},
            )
            assert r.status_code == 200, r.text
            messages.append(r.json()["choices"][0]["message"])
        return injected(self.upstream.last_body()["messages"])

    def search(self, ns: str, query: str) -> list[str]:
        r = self.http.post(
            "/v1/memory/search", params={"namespace": ns}, json={"query": query, "k": 10}
        )
        return [hit["content"] for hit in r.json()["data"]]


def _date(day: int) -> str:
    return f"2024-{1 + day // 28:02d}-{1 + day % 28:02d}T10:00:00Z"


def injected(messages: list[dict[str, Any]]) -> list[str]:
    for message in messages:
        content = message.get("content")
        if message["role"] == "system" and isinstance(content, str) and content.startswith(HEADER):
            return [json.loads(line)["text"] for line in content.split("\n")[1:]]
    return []


@pytest.fixture
def gateway_with(
    tmp_path: Path, minilm: Embedder, fake_upstream: tuple[FakeUpstream, str]
) -> Iterator[Any]:
    """A factory: a gateway with these ``[recall]`` settings, its history loaded."""
    upstream, upstream_url = fake_upstream
    opened: list[Any] = []

    def make(**recall: Any) -> Gateway:
        folder = tmp_path / f"gw{len(opened)}"
        settings = make_settings(
            folder,
            upstream={"url": upstream_url},
            store={"embedded_process": False},
            recall={"k": 4, **recall},
        )
        server = serve_in_thread(create_app(settings, embedder=minilm))
        url = server.__enter__()
        opened.append(server)
        gw = Gateway(url, upstream)
        gw.load("u")
        return gw

    yield make
    for server in opened:
        server.__exit__(None, None, None)


def test_a_follow_up_recalls_the_person_it_leans_on(gateway_with: Any) -> None:
    gw = gateway_with()
    got = gw.chat("u", "I want to get my cousin Ravi something nice.", "What is he into again?")
    assert any("Ravi has got hooked on pottery" in t for t in got)
    # the request's own messages never come back, though the first turn was remembered
    assert not any(t.startswith("I want to get my cousin Ravi") for t in got)


def test_follow_ups_can_be_turned_off(gateway_with: Any) -> None:
    gw = gateway_with(follow_up_messages=0)
    got = gw.chat("u", "I want to get my cousin Ravi something nice.", "What is he into again?")
    assert not any("Ravi" in t for t in got)


def test_a_self_contained_question_is_unaffected(gateway_with: Any) -> None:
    question = "What hobby has my cousin Ravi got into?"
    on = gateway_with().chat("u", question)
    off = gateway_with(follow_up_messages=0).chat("u", question)
    assert on == off
    assert any("Ravi has got hooked on pottery" in t for t in on)


def test_a_changed_fact_injects_the_new_statement_as_current(gateway_with: Any) -> None:
    gw = gateway_with()
    got = gw.chat("u", "Which city does my neighbour Omar live in?")
    new = next(i for i, t in enumerate(got) if "he lives in Seville now" in t)
    old = [i for i, t in enumerate(got) if "Omar lives in Bergen" in t]
    assert all(i < new for i in old)  # time order: the later note reads as current
    assert "the later one is current" in HEADER
    assert not any(t == "Where does my neighbour Omar live, do you know?" for t in got[:1])
    # search ranks the latest statement above the older one
    found = gw.search("u", "Which city does my neighbour Omar live in?")
    first = [t for t in found if "Omar" in t and ("Bergen" in t or "Seville" in t)]
    assert "Seville now" in first[0]


def test_current_first_can_be_turned_off(gateway_with: Any) -> None:
    gw = gateway_with(same_subject=2.0)
    found = gw.search("u", "Which city does my neighbour Omar live in?")
    first = [t for t in found if "Omar" in t and ("Bergen" in t or "Seville" in t)]
    assert "Bergen." in first[0]  # by relevance alone the older statement ranks first


def test_bare_questions_weigh_less_than_statements(gateway_with: Any) -> None:
    on = gateway_with().search("u", "Where does my neighbour Omar live?")
    assert not on[0].startswith("Where does my neighbour Omar live")
    off = gateway_with(question_weight=1.0, same_subject=2.0).search(
        "u", "Where does my neighbour Omar live?"
    )
    assert off[0].startswith("Where does my neighbour Omar live")
