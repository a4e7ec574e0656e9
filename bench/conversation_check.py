#!/usr/bin/env python3
"""A conversation-shaped recall check: multi-turn chats through the memory chat endpoint, judged
on what the gateway injected into the request the upstream received.

Usage::

    python bench/conversation_check.py [--seed 11] [--personas 6] [--json OUT] [--misses]
                                       [--set KEY=VALUE ...]

Each persona is a namespace holding a generated chat history (~450 messages, stored as an
import would: one memory a message, with its role, time and conversation): requests for help,
small talk, content-free replies, code, chatter about other people and places, the user's own
questions, and facts about the people in the user's life (a cousin's hobby, a colleague's
job, a sister's city, a pet...), each said in passing inside another request. A third of
those facts change later ("... gave up X and is all about Y now"); some are restated.

Then, for every fact, chats are sent through ``POST /v1/memory/chat/completions`` to a fake
upstream on loopback that records the request it received:

- **direct**: one self-contained question naming the person ("What does my cousin Ravi do
  for a living?");
- **follow-up**: a conversation of two requests, as a chat app sends it: first a turn that
  names the person ("I want to get my cousin Ravi something for his birthday."), answered by
  the upstream and remembered; then the whole conversation with a follow-up that leans on it
  ("What is he into these days, do you remember?"). Judged on the second request.

Reported, from the memories injected (the memory message the gateway added):

- the share of chats whose evidence (the latest statement of the fact) was injected, direct
  and follow-up, and their ratio;
- for changed facts: the latest statement injected; only a stale one injected (the model is
  misled); the latest reading as current (the block is in time order, its header says a later
  note is current: the latest after every stale one);
- repeats: injected memories equal to a message of the request itself;
- the content-free share: injected memories that are acknowledgements ("thanks!", "Happy to
  help!") by the generator's own lists.

Everything comes from ``--seed``; the generator (templates, names, values) is this script's
own: it shares no text with LoCoMo. The README figure is seed 11; seed 23 is held out (never
looked at while choosing settings).
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from history_check import (
    CODE_TASKS,
    DISTRACTOR_REPLY,
    DISTRACTORS,
    EMPTY_REPLY,
    GENERIC_REPLY,
    INSTRUMENTS,
    JOBS,
    PETS,
    REQUESTS,
    TRIVIAL_USER,
    fill,
)
from loadbench.processes import free_port
from locomo import ApiError, add_recall_settings, check, erase, local_gateway, log, recall_env

# -- the people in a persona's life ----------------------------------------------------------

FEMALE = ["Mina", "Greta", "Amara", "Noor", "Elif", "Chiara", "Ingrid", "Dalia", "Rosa", "Yara"]
MALE = ["Ravi", "Felix", "Arjun", "Mikko", "Desmond", "Luca", "Omar", "Bram", "Kenji", "Matteo"]
RELATIONS_F = ["sister", "aunt", "niece", "cousin", "best friend", "colleague", "neighbour"]
RELATIONS_M = ["brother", "uncle", "nephew", "cousin", "best friend", "colleague", "flatmate"]

VALUES: dict[str, list[str]] = {
    "hobby": [
        "pottery", "sailing", "chess", "birdwatching", "salsa dancing", "beekeeping",
        "woodworking", "astronomy", "kayaking", "knitting", "film photography", "fencing",
    ],
    "work": [
        "a dentist", "a pilot", "a baker", "a journalist", "an electrician", "a vet",
        "a firefighter", "a translator", "an architect", "a tram driver", "a pharmacist",
    ],
    "home": [
        "Bergen", "Seville", "Antwerp", "Graz", "Turku", "Bari", "Nantes", "Aarhus", "Cork",
        "Split", "Gdansk", "Porto Alegre",
    ],
    "diet": [
        "vegetarian", "vegan", "gluten-free", "lactose intolerant", "allergic to nuts",
        "off sugar", "pescatarian",
    ],
}  # fmt: skip

# how a fact is first said ({n} name, {r} relation, {p} he/she, {q} his/her, {x} the value)
SAY: dict[str, list[str]] = {
    "hobby": [
        "My {r} {n} has got hooked on {x}, {p} spends every weekend on it.",
        "{n} (my {r}) is really into {x} lately.",
        "Funny thing, my {r} {n} took up {x} this year.",
        "My {r} {n} won't stop talking about {x}.",
    ],
    "work": [
        "My {r} {n} works as {x}.",
        "{n}, my {r}, just got a job as {x}.",
        "My {r} {n} has been {x} for years now.",
    ],
    "home": [
        "My {r} {n} lives in {x}.",
        "{n}, my {r}, has a small flat in {x}.",
        "My {r} {n} is based in {x}.",
    ],
    "diet": [
        "My {r} {n} is {x}, so I always have to check the menu.",
        "Heads up that {n}, my {r}, is {x}.",
    ],
}
# how a change is said ({o} the old value)
CHANGE: dict[str, list[str]] = {
    "hobby": [
        "{n} gave up {o} and is all about {x} now.",
        "My {r} {n} has switched from {o} to {x}.",
        "These days my {r} {n} does {x} instead of {o}.",
    ],
    "work": [
        "{n} quit being {o} and now works as {x}.",
        "Big news: my {r} {n} retrained and is {x} now.",
        "My {r} {n} changed careers, {p}'s {x} these days.",
    ],
    "home": [
        "{n} moved away from {o}, {p} lives in {x} now.",
        "My {r} {n} relocated to {x} last month.",
        "{n} left {o}; my {r} is settled in {x} now.",
    ],
}
RESTATE: dict[str, list[str]] = {
    "hobby": ["As I said, my {r} {n} is still into {x}.", "{n} still loves {x}, by the way."],
    "work": ["As I said, my {r} {n} is still {x}.", "{n} is still working as {x}, by the way."],
    "home": ["As I said, my {r} {n} still lives in {x}.", "{n} is still in {x}, by the way."],
    "diet": ["As I said, my {r} {n} is {x}.", "{n} is still {x}, by the way."],
}
# the user's own questions about the people (stored like any message; they answer nothing)
OWN_QUESTION: dict[str, list[str]] = {
    "hobby": ["Do you think my {r} {n} would like a book about it?", "What gift would suit {n}?"],
    "work": ["How do I congratulate {n} on the new job?", "What's a good card for my {r} {n}?"],
    "home": ["Is it worth visiting my {r} {n} in winter?", "How long is the trip to {n}'s place?"],
    "diet": ["What should I cook when my {r} {n} comes over?"],
}
ASK: dict[str, list[str]] = {
    "hobby": ["What hobby is my {r} {n} into?", "What does my {r} {n} do for fun?"],
    "work": ["What does my {r} {n} do for a living?", "What is my {r} {n}'s job?"],
    "home": ["Which city does my {r} {n} live in?", "Where does my {r} {n} live?"],
    "diet": ["What can't my {r} {n} eat?", "Does my {r} {n} have any diet restrictions?"],
}
SETUP = [
    "I want to get my {r} {n} something for {q} birthday.",
    "My {r} {n} is coming to stay with me next weekend.",
    "I'm writing a card for my {r} {n}.",
    "I'm planning a surprise for my {r} {n}.",
    "I haven't talked to my {r} {n} in ages and want to call {m} tonight.",
]
FOLLOW: dict[str, list[str]] = {
    "hobby": [
        "What is {p} into these days, do you remember?",
        "Remind me, what does {p} do for fun again?",
        "Any idea what hobby {p} has at the moment?",
    ],
    "work": [
        "What does {p} do for a living again?",
        "Remind me what {q} job is?",
        "Where does {p} work these days?",
    ],
    "home": [
        "Which city is {p} in again?",
        "Where does {p} live now, do you remember?",
        "Remind me where {p} is based?",
    ],
    "diet": [
        "Is there anything {p} can't eat?",
        "Remind me, does {p} have a diet thing?",
    ],
}
CHANGING = ("hobby", "work", "home")
# what the fake upstream answers a chat's first request with (it is remembered too)
SETUP_REPLY = [
    "That sounds lovely! How can I help?",
    "Happy to help with that. What do you have in mind?",
    "Nice! Tell me a bit more and I'll suggest something.",
]


@dataclass
class Message:
    mid: str
    role: str
    text: str
    created: datetime
    conversation_id: str


@dataclass
class Chat:
    """A chat sent to the gateway: ``turns`` are the user messages (a follow-up has two, the
    first answered by the upstream before the second is sent); judged on the last request."""

    kind: str  # direct | follow-up
    turns: list[str]
    latest: str  # the text of the latest statement of the fact
    older: list[str]  # texts of earlier statements of it (changed facts)
    fact: str


@dataclass
class Persona:
    name: str
    messages: list[Message] = field(default_factory=list)
    chats: list[Chat] = field(default_factory=list)
    noise: set[str] = field(default_factory=set)  # content-free texts


class Builder:
    def __init__(self, persona: str, rng: random.Random) -> None:
        self.p = Persona(persona)
        self.rng = rng
        self.now = datetime(2024, 2, 1, 8, 0, tzinfo=UTC)
        self.count = 0
        self.conv = ""

    def conversation(self) -> None:
        self.now += timedelta(days=self.rng.uniform(0.5, 3.0), hours=self.rng.uniform(0, 8))
        self.conv = f"{self.p.name}-c{self.count}"

    def say(self, role: str, text: str) -> None:
        self.count += 1
        self.now += timedelta(seconds=self.rng.uniform(20, 300))
        self.p.messages.append(Message(f"m{self.count}", role, text, self.now, self.conv))

    def exchange(self, user: str, reply: str) -> None:
        self.say("user", user)
        self.say("assistant", reply)

    def chatter(self) -> None:
        for _ in range(self.rng.randint(0, 3)):
            if self.rng.random() < 0.6:
                user, reply = self.rng.choice(TRIVIAL_USER), self.rng.choice(EMPTY_REPLY)
                self.p.noise.update((user, reply))
                self.exchange(user, reply)
            else:
                self.exchange(self.rng.choice(REQUESTS), self.rng.choice(GENERIC_REPLY))

    def filler(self) -> None:
        kind = self.rng.random()
        self.conversation()
        if kind < 0.25:
            ask, lang, code = self.rng.choice(CODE_TASKS)
            self.exchange(f"{ask}\n\n```{lang}\n{code}\n```", "Here's a fixed version.")
        elif kind < 0.45:
            values = {
                "city": self.rng.choice(VALUES["home"]),
                "job": self.rng.choice(JOBS)[0],
                "animal": self.rng.choice(PETS)[0],
                "instrument": self.rng.choice(INSTRUMENTS),
            }
            self.exchange(
                fill(self.rng.choice(DISTRACTORS), values),
                fill(self.rng.choice(DISTRACTOR_REPLY), values),
            )
        else:
            self.exchange(self.rng.choice(REQUESTS), self.rng.choice(GENERIC_REPLY))
        self.chatter()


def person_words(name: str, relation: str, female: bool) -> dict[str, str]:
    """Template words: name, relation, he/she, his/her, him/her."""
    pronouns = ("she", "her", "her") if female else ("he", "his", "him")
    return {"n": name, "r": relation, **dict(zip("pqm", pronouns, strict=True))}


def make_persona(index: int, rng: random.Random) -> Persona:
    b = Builder(f"p{index}", rng)
    people = []
    names_f, names_m = rng.sample(FEMALE, 3), rng.sample(MALE, 3)
    for i in range(5):
        female = i % 2 == 0
        name = (names_f if female else names_m)[i // 2]
        relation = rng.choice(RELATIONS_F if female else RELATIONS_M)
        people.append(person_words(name, relation, female))
    # facts: two or three a person; a third of the changeable ones change once or twice
    plan: list[tuple[int, str, int]] = []  # (person, fact, how many times its value changes)
    for i in range(len(people)):
        for fact in rng.sample(list(VALUES), rng.choice([2, 3])):
            changes = rng.choice([1, 2]) if fact in CHANGING and rng.random() < 0.4 else 0
            plan.append((i, fact, changes))
    events: list[tuple[int, str, int, int]] = []  # (person, fact, step, changes)
    for person, fact, changes in plan:
        events += [(person, fact, step, changes) for step in range(changes + 1)]
    conversations = 100
    slots = sorted(rng.sample(range(3, conversations - 2), len(events)))
    rng.shuffle(events)
    # a fact's steps in time order
    ordered: dict[tuple[int, str], list[int]] = defaultdict(list)
    for slot, (person, fact, _, _) in zip(slots, events, strict=True):
        ordered[(person, fact)].append(slot)
    at: dict[int, tuple[int, str, int]] = {}
    for (person, fact), fact_slots in ordered.items():
        for step, slot in enumerate(sorted(fact_slots)):
            at[slot] = (person, fact, step)
    statements: dict[tuple[int, str], list[str]] = defaultdict(list)
    values: dict[tuple[int, str], list[str]] = {}
    for person, fact, changes in plan:
        values[(person, fact)] = rng.sample(VALUES[fact], changes + 1)
    for number in range(conversations):
        b.filler()
        event = at.get(number)
        if event is None:
            if rng.random() < 0.15 and statements:  # the user's own question about someone
                person, fact = rng.choice(list(statements))
                b.exchange(
                    fill(rng.choice(OWN_QUESTION[fact]), people[person]),
                    rng.choice(GENERIC_REPLY),
                )
            continue
        person, fact, step = event
        words = {**people[person], "x": values[(person, fact)][step]}
        if step == 0:
            statement = fill(rng.choice(SAY[fact]), words)
        else:
            words["o"] = values[(person, fact)][step - 1]
            statement = fill(rng.choice(CHANGE[fact]), words)
        request = rng.choice(REQUESTS)
        text = f"{statement} {request}" if rng.random() < 0.5 else f"{request} {statement}"
        b.exchange(text, rng.choice(GENERIC_REPLY))
        statements[(person, fact)].append(text)
        b.chatter()
        if step == len(values[(person, fact)]) - 1 and rng.random() < 0.2:
            # restated later, unchanged: a near-duplicate fact, not a change
            b.conversation()
            b.exchange(f"{fill(rng.choice(RESTATE[fact]), words)} {rng.choice(REQUESTS)}", "Noted!")
    for (person, fact), said in statements.items():
        words = people[person]
        latest, older = said[-1], said[:-1]
        direct = fill(rng.choice(ASK[fact]), words)
        b.p.chats.append(Chat("direct", [direct], latest, older, fact))
        setup = fill(rng.choice(SETUP), words)
        follow = fill(rng.choice(FOLLOW[fact]), words)
        b.p.chats.append(Chat("follow-up", [setup, follow], latest, older, fact))
    rng.shuffle(b.p.chats)
    b.p.noise.update((*SETUP_REPLY, "Sure.", "Noted!"))
    return b.p


def generate(seed: int, personas: int) -> list[Persona]:
    rng = random.Random(seed)
    return [make_persona(i + 1, rng) for i in range(personas)]


# -- the fake upstream: records what it received ---------------------------------------------


class Recorder:
    """An OpenAI-compatible upstream answering every chat with a fixed reply, keeping the
    messages of the last request it received."""

    def __init__(self) -> None:
        self.last: list[dict[str, Any]] = []
        self.reply = "Sure."

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].replace("lifespan.", "")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"].endswith("/chat/completions"):
            self.last = json.loads(raw)["messages"]
            body = {
                "id": "chatcmpl-x",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": "fake",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.reply},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        else:
            body = {"object": "list", "data": []}
        data = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": data})


@contextmanager
def serve(app: Recorder) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)


# -- the run ---------------------------------------------------------------------------------


def injected(messages: Sequence[dict[str, Any]]) -> list[str]:
    """The memory texts of the memory message the gateway added, in its order."""
    for message in messages:
        content = message.get("content")
        if message.get("role") == "system" and isinstance(content, str):
            lines = content.split("\n")
            if lines and lines[0].startswith("Memories from earlier conversations"):
                return [json.loads(line)["text"] for line in lines[1:] if line.startswith("{")]
    return []


@dataclass
class Outcome:
    chat: Chat
    injected: list[str]
    request: list[str]  # the texts of the request's own messages


def norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def run(url: str, upstream: Recorder, personas: Sequence[Persona]) -> list[list[Outcome]]:
    run_id = secrets.token_hex(4)
    namespaces = [f"conv-{run_id}-{p.name}" for p in personas]
    out: list[list[Outcome]] = []
    with httpx.Client(base_url=url, timeout=120.0, trust_env=False) as client:
        try:
            for namespace, persona in zip(namespaces, personas, strict=True):
                memories = [
                    {
                        "content": m.text,
                        "role": m.role,
                        "created_at": m.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "metadata": {"source": "chatgpt", "conversation_id": m.conversation_id},
                    }
                    for m in persona.messages
                ]
                log(f"loading {persona.name}: {len(memories)} messages")
                for start in range(0, len(memories), 1000):
                    check(
                        client.post(
                            "/v1/memory/memories",
                            params={"namespace": namespace},
                            json={"memories": memories[start : start + 1000]},
                        )
                    )
            rng = random.Random(0)
            for namespace, persona in zip(namespaces, personas, strict=True):
                outcomes = []
                for chat in persona.chats:
                    messages: list[dict[str, Any]] = []
                    for i, turn in enumerate(chat.turns):
                        messages.append({"role": "user", "content": turn})
                        last = i == len(chat.turns) - 1
                        upstream.reply = "Sure." if last else rng.choice(SETUP_REPLY)
                        check(
                            client.post(
                                "/v1/memory/chat/completions",
                                params={"namespace": namespace},
                                json={"model": "fake", "messages": messages},
                            )
                        )
                        if not last:
                            messages.append({"role": "assistant", "content": upstream.reply})
                    texts = [str(m["content"]) for m in messages]
                    outcomes.append(Outcome(chat, injected(upstream.last), texts))
                out.append(outcomes)
        finally:
            erase(client, namespaces)
    return out


def figures(personas: Sequence[Persona], results: list[list[Outcome]]) -> dict[str, Any]:
    found: dict[str, list[bool]] = defaultdict(list)
    changed = {"latest": 0, "stale_only": 0, "latest_current": 0, "chats": 0}
    repeats = total = noise = 0
    for persona, outcomes in zip(personas, results, strict=True):
        for o in outcomes:
            got = [norm(t) for t in o.injected]
            hit = norm(o.chat.latest) in got
            found[o.chat.kind].append(hit)
            if o.chat.older:
                changed["chats"] += 1
                stale = [got.index(norm(t)) for t in o.chat.older if norm(t) in got]
                changed["latest"] += hit
                changed["stale_only"] += bool(stale) and not hit
                # the block is in time order, and its header says a later note is current
                changed["latest_current"] += hit and all(
                    got.index(norm(o.chat.latest)) > s for s in stale
                )
            own = {norm(t) for t in o.request}
            repeats += sum(g in own for g in got)
            total += len(got)
            noise += sum(t in persona.noise for t in o.injected)
    share = {kind: sum(v) / len(v) for kind, v in found.items()}
    n = changed["chats"] or 1
    return {
        "direct": share.get("direct", float("nan")),
        "follow_up": share.get("follow-up", float("nan")),
        "follow_up_ratio": share.get("follow-up", 0.0) / (share.get("direct") or 1.0),
        "chats": {kind: len(v) for kind, v in found.items()},
        "changed_chats": changed["chats"],
        "changed_latest": changed["latest"] / n,
        "changed_stale_only": changed["stale_only"] / n,
        "changed_latest_current": changed["latest_current"] / n,
        "repeats": repeats,
        "injected": total,
        "content_free_share": noise / total if total else 0.0,
    }


def report(result: dict[str, Any]) -> str:

    def pct(value: float) -> str:
        return f"{value * 100:.1f}%"

    return "\n".join(
        [
            f"## Conversation check ({result['chats']} chats)",
            "",
            "| Measure | Value |",
            "|---|---:|",
            f"| Direct questions: fact injected | {pct(result['direct'])} |",
            f"| Follow-ups: fact injected | {pct(result['follow_up'])} |",
            f"| Follow-up / direct | {result['follow_up_ratio']:.2f} |",
            f"| Changed facts ({result['changed_chats']} chats): latest injected | "
            f"{pct(result['changed_latest'])} |",
            f"| Changed facts: only a stale statement injected | "
            f"{pct(result['changed_stale_only'])} |",
            f"| Changed facts: latest injected, after every stale one (reads as current) | "
            f"{pct(result['changed_latest_current'])} |",
            f"| Repeats of the request's own messages | {result['repeats']} |",
            f"| Content-free share of injected memories | {pct(result['content_free_share'])} "
            f"(of {result['injected']}) |",
        ]
    )


def misses(results: list[list[Outcome]]) -> str:
    lines = ["## Misses"]
    for outcomes in results:
        for o in outcomes:
            got = [norm(t) for t in o.injected]
            if norm(o.chat.latest) in got:
                continue
            lines.append(f"\n### {o.chat.kind}: {' / '.join(o.chat.turns)}")
            lines.append(f"- latest: {o.chat.latest!r}")
            lines.extend(f"- older: {t!r}" for t in o.chat.older)
            lines.extend(f"  {i}. {t[:110]!r}" for i, t in enumerate(o.injected, 1))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--personas", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None, metavar="OUT")
    parser.add_argument("--misses", action="store_true")
    parser.add_argument("--quick", action="store_true", help="two personas: a smoke run")
    add_recall_settings(parser)
    args = parser.parse_args(argv)
    env = recall_env(args.set)
    personas = generate(args.seed, 2 if args.quick else args.personas)
    log(
        f"{len(personas)} personas, {sum(len(p.messages) for p in personas)} messages, "
        f"{sum(len(p.chats) for p in personas)} chats"
    )
    recorder = Recorder()
    began = time.perf_counter()
    try:
        with (
            serve(recorder) as upstream,
            local_gateway(False, env=env, upstream=upstream) as (
                url,
                _,
            ),
        ):
            results = run(url, recorder, personas)
    except (ApiError, RuntimeError, httpx.HTTPError) as exc:
        log(f"error: {exc}")
        return 1
    result = figures(personas, results)
    print(report(result))
    log(f"done in {time.perf_counter() - began:.1f} s")
    if args.misses:
        print(misses(results))
    if args.json is not None:
        args.json.write_text(json.dumps({"seed": args.seed, **result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
