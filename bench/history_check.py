#!/usr/bin/env python3
"""A second recall check, not LoCoMo: generated chat histories shaped like a ChatGPT export.

Usage::

    python bench/history_check.py [--seed 7] [--personas 6] [--url http://host:port]
                                  [--write-export DIR] [--json OUT] [--misses]

Each persona is one namespace holding the messages of its ChatGPT-style conversations, stored
the way ``memgate import`` stores an export: one memory a message, its raw text, role
``user`` or ``assistant``, the message's ``created_at`` and metadata ``{"source":
"chatgpt", "conversation", "conversation_id"}`` (plus ``dia_id``, the message's id, which the
script scores by). The histories hold what real ones do: trivial turns ("thanks!", "ok"),
content-free replies ("Happy to help!"), code blocks, long generic answers, topic switches
within a conversation, and facts about the user that change over time ("I moved to Lisbon",
months later "we just moved to Porto"). Every fact is said in a paraphrase drawn from several
templates, in the middle of an unrelated request; distractor conversations mention the same
places, jobs and animals about other people.

Questions are asked as-is through ``POST /v1/memory/search`` (the path ``bench/locomo.py``
uses). Their evidence is the user message that states the fact, the latest statement for a
fact that changed. Reported: R@5 and R@10 (share of evidence in the top k, as in LoCoMo)
overall and per kind, and the *newer-first rate*: of the questions about a changed fact, the
share whose latest statement is in the top 10 and ranks above every older statement of it.

Everything is generated from ``--seed`` (the default is the figure the README reports);
``--write-export DIR`` also writes each persona's history as a ChatGPT ``conversations.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from loadbench.processes import wait_ready
from locomo import (
    READY_TIMEOUT,
    ApiError,
    RunStats,
    add_recall_settings,
    check,
    erase,
    local_gateway,
    log,
    recall_at,
    recall_env,
    search,
)
from stats import percentile

# -- what the personas are made of -----------------------------------------------------------

CITIES = [
    "Lisbon", "Porto", "Valencia", "Leipzig", "Gothenburg", "Ljubljana", "Krakow", "Utrecht",
    "Bologna", "Montreal", "Austin", "Wellington", "Edinburgh", "Tallinn", "Lyon", "Brno",
]  # fmt: skip
JOBS = [
    ("a nurse", "the children's hospital"), ("a data analyst", "an insurance company"),
    ("a high-school chemistry teacher", "a public school"), ("a UX designer", "a fintech startup"),
    ("a line cook", "a ramen place"), ("a civil engineer", "the city's transport department"),
    ("a paralegal", "a small law firm"), ("a backend developer", "a logistics company"),
    ("a physiotherapist", "a sports clinic"), ("a librarian", "the university library"),
]  # fmt: skip
PETS = [
    ("dog", "Biscuit"), ("cat", "Miso"), ("dog", "Pepper"), ("rabbit", "Clover"),
    ("cat", "Noodle"), ("parrot", "Kiwi"), ("dog", "Juniper"), ("cat", "Tofu"),
]  # fmt: skip
PARTNERS = ["Sam", "Priya", "Jonas", "Leila", "Mateo", "Hana", "Tom", "Ines", "Kofi", "Yuki"]
ALLERGIES = ["peanuts", "shellfish", "penicillin", "cats", "pollen", "lactose", "kiwi"]
INSTRUMENTS = ["cello", "bass guitar", "piano", "drums", "ukulele", "trumpet"]
SPORTS = ["bouldering", "trail running", "rowing", "volleyball", "swimming", "yoga"]
CARS = ["a 2012 Honda Civic", "an old Volvo estate", "a Toyota Prius", "an electric Renault Zoe"]
LANGS = ["Rust", "Go", "TypeScript", "Python", "Kotlin", "Elixir"]

# Paraphrases: {x} is the fact's value; each template states it in passing.
SAY: dict[str, list[str]] = {
    "city": [
        "I moved to {x} last spring and I still don't know where to buy decent bread.",
        "We just moved to {x}, so I'm trying to figure out the public transport here.",
        "Since relocating to {x} my commute is way shorter.",
        "Living in {x} now, and the rent is eating half my salary.",
        "Quick context: I'm based in {x} these days.",
        "Now that I live in {x}, I want to find a running club nearby.",
    ],
    "job": [
        "I work as {x} at {y}, so my schedule is all over the place.",
        "I just started a new job as {x} at {y}.",
        "For context, I'm {x} at {y}.",
        "My job ({x}, at {y}) has me exhausted by Friday.",
        "I switched careers and now I'm {x} at {y}.",
    ],
    "pet": [
        "My {y} {x} keeps waking me up at 5am.",
        "We adopted a {y} and named it {x}.",
        "{x}, my {y}, chewed through the charger again.",
        "I have a {y} called {x} who hates the vet.",
    ],
    "partner": [
        "My partner {x} wants to plan a trip for our anniversary.",
        "{x} (my boyfriend) thinks I'm overthinking this.",
        "My wife {x} is the one who usually cooks.",
        "I'm asking for {x}, my girlfriend, she's too shy to ask.",
    ],
    "allergy": [
        "Keep in mind I'm allergic to {x}.",
        "I can't have {x}, I'm allergic.",
        "Note that I have a {x} allergy, so skip anything with that.",
    ],
    "instrument": [
        "I've been learning the {x} for about a year.",
        "I play the {x} in a community orchestra on Thursdays.",
        "Practising {x} every evening is the only thing that calms me down.",
    ],
    "sport": [
        "I got really into {x} this year.",
        "I do {x} three times a week.",
        "After {x} on Saturday my shoulders are wrecked.",
    ],
    "car": [
        "I drive {x}, it's not exactly fast.",
        "My car is {x} and the check-engine light is on again.",
        "We only have {x}, so space for luggage is limited.",
    ],
    "lang": [
        "At work our whole backend is in {x}.",
        "I'm writing my side project in {x}.",
        "I mostly code in {x} these days.",
    ],
}
ASK: dict[str, list[str]] = {
    "city": ["Where do I live?", "Which city am I based in now?", "What city do I live in?"],
    "job": ["What do I do for a living?", "What is my current job?", "Where do I work now?"],
    "pet": ["What is my pet's name?", "What's my {y} called?", "What animal do I have at home?"],
    "partner": ["What is my partner's name?", "Who am I in a relationship with?"],
    "allergy": ["What am I allergic to?", "Do I have any food or drug allergies?"],
    "instrument": ["Which instrument am I learning?", "What instrument do I play?"],
    "sport": ["What sport do I do?", "What do I do to stay fit?"],
    "car": ["What car do I drive?", "What kind of car do I have?"],
    "lang": ["Which programming language do I use?", "What language do I code in?"],
}
CHANGING = ("city", "job")  # said two or three times with new values over the history

# The requests a fact is said inside of, and what follows them.
REQUESTS = [
    "Can you suggest a weekly meal plan that's cheap?",
    "How do I write a polite email asking for a deadline extension?",
    "Any tips for sleeping better?",
    "What should I pack for a long weekend trip?",
    "Can you help me plan a birthday dinner for six people?",
    "How do I make my apartment less cold in winter without a huge bill?",
    "What are some good podcasts for a long drive?",
    "How should I prepare for a performance review?",
    "Can you recommend some books like The Martian?",
    "Help me make a budget spreadsheet.",
]
TRIVIAL_USER = [
    "thanks!", "ok", "cool", "perfect, thank you", "lol", "great", "ok thanks", "nice",
    "hmm", "got it", "thx", "makes sense", "yes", "no", "sure", "can you make it shorter?",
    "try again", "continue", "more", "👍",
]  # fmt: skip
EMPTY_REPLY = [
    "You're welcome! Let me know if there's anything else I can help with.",
    "Happy to help!",
    "Sure! Let me know if you have any other questions.",
    "Glad that helped. Anything else?",
    "Of course! Feel free to ask if anything else comes up.",
    "No problem at all.",
    "Got it.",
    "Great! Good luck with everything.",
]
GENERIC_REPLY = [
    "Here are a few ideas:\n\n1. Start small and build a routine you can keep.\n2. Write down "
    "what works and what doesn't.\n3. Review it after a week and adjust.\n\nWould you like me "
    "to go into more detail on any of these?",
    "That's a great question. There are a few things to consider: your budget, how much time "
    "you have, and what you enjoy. If you tell me a bit more, I can tailor the suggestions.",
    "Sure, here's a draft:\n\nSubject: Quick request\n\nHi,\n\nI hope you're doing well. I "
    "wanted to ask whether it would be possible to move the deadline by a few days. Thank you "
    "for considering it.\n\nBest regards",
    "Absolutely. A simple approach is to split it into three parts: preparation, the main "
    "step, and a short review at the end. Most people find the preparation step the hardest.",
    "Good thinking. I'd recommend checking the reviews first, then comparing two or three "
    "options side by side before deciding.",
]
CODE_TASKS = [
    (
        "Why does this throw a KeyError?", "python",
        "counts = {}\nfor w in words:\n    counts[w] += 1",
    ),
    (
        "How do I reverse a linked list?",
        "python",
        "def reverse(head):\n    prev = None\n    while head:\n"
        "        head.next, prev, head = prev, head, head.next\n    return prev",
    ),
    ("My Go program deadlocks here, why?", "go", "ch := make(chan int)\nch <- 1\n<-ch"),
    (
        "How do I debounce a function in TypeScript?",
        "ts",
        "function debounce(fn: () => void, ms: number) {\n  let t: number | undefined;\n"
        "  return () => { clearTimeout(t); t = setTimeout(fn, ms); };\n}",
    ),
    (
        "Can you write a SQL query for the top 5 customers by revenue?",
        "sql",
        "SELECT customer_id, SUM(amount) AS revenue\nFROM orders GROUP BY customer_id\n"
        "ORDER BY revenue DESC LIMIT 5;",
    ),
    (
        "What's wrong with my Rust borrow here?",
        "rust",
        'let mut v = vec![1, 2, 3];\nlet first = &v[0];\nv.push(4);\nprintln!("{}", first);',
    ),
    (
        "How do I parse a date string in JavaScript?",
        "js",
        "const d = new Date('2024-03-01T10:00:00Z');\nconsole.log(d.toISOString());",
    ),
]  # fmt: skip
DISTRACTORS = [
    "My friend is moving to {city} next month, what should she know about it?",
    "What's the weather usually like in {city} in October?",
    "Write a short story about a {animal} who becomes a detective.",
    "What does {job} typically earn?",
    "Is it hard to learn the {instrument} as an adult? Asking for my cousin.",
    "My neighbour's {animal} barks all night, how do I bring it up nicely?",
    "Plan a 3-day itinerary for {city}.",
    "What are common interview questions for {job}?",
]
DISTRACTOR_REPLY = [
    "Here's an overview for {city}: the old town is walkable, trams are cheap, and most "
    "neighbourhoods have a weekly market. Book accommodation early in summer.",
    "People who work as {job} often mention long shifts but meaningful work; pay varies a lot "
    "by region and experience.",
    "Once upon a time, a clever {animal} noticed that the cookies kept disappearing...",
    "Learning the {instrument} as an adult is very doable: short daily practice beats long "
    "weekly sessions.",
]

KINDS = ("changed", "static", "two-facts")


@dataclass
class Message:
    mid: str
    role: str
    text: str
    created: datetime
    conversation: str
    conversation_id: str


@dataclass
class Probe:
    text: str
    kind: str  # one of KINDS
    evidence: tuple[str, ...]
    older: tuple[str, ...] = ()  # earlier statements of a changed fact


@dataclass
class History:
    persona: str
    messages: list[Message] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)


class Writer:
    """Builds one persona's conversations in time order."""

    def __init__(self, persona: str, rng: random.Random, start: datetime) -> None:
        self.history = History(persona)
        self.rng = rng
        self.now = start
        self.count = 0
        self.title = ""
        self.conv_id = ""

    def conversation(self, title: str) -> None:
        self.now += timedelta(days=self.rng.uniform(0.5, 4.0), hours=self.rng.uniform(0, 6))
        self.title = title
        self.conv_id = str(uuid.UUID(int=self.rng.getrandbits(128)))

    def say(self, role: str, text: str) -> str:
        self.count += 1
        self.now += timedelta(seconds=self.rng.uniform(15, 240))
        mid = f"{self.history.persona}:m{self.count}"
        self.history.messages.append(Message(mid, role, text, self.now, self.title, self.conv_id))
        return mid

    def exchange(self, user: str, reply: str) -> str:
        mid = self.say("user", user)
        self.say("assistant", reply)
        return mid

    def chatter(self, turns: int) -> None:
        """Trivial turns and content-free replies, or a generic follow-up."""
        for _ in range(turns):
            if self.rng.random() < 0.6:
                self.exchange(self.rng.choice(TRIVIAL_USER), self.rng.choice(EMPTY_REPLY))
            else:
                self.exchange(self.rng.choice(REQUESTS), self.rng.choice(GENERIC_REPLY))


def fill(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def make_history(persona: str, rng: random.Random, conversations: int) -> History:
    w = Writer(persona, rng, datetime(2024, 1, 3, 9, 0, tzinfo=UTC))
    cities = rng.sample(CITIES, 3)
    jobs = rng.sample(JOBS, 3)
    pets = rng.sample(PETS, 2)
    while pets[0][0] == pets[1][0]:  # two different animals, so each can be asked about
        pets = rng.sample(PETS, 2)
    static = {
        "partner": (rng.choice(PARTNERS), ""),
        "allergy": (rng.choice(ALLERGIES), ""),
        "instrument": (rng.choice(INSTRUMENTS), ""),
        "sport": (rng.choice(SPORTS), ""),
        "car": (rng.choice(CARS), ""),
        "lang": (rng.choice(LANGS), ""),
    }
    changes = {"city": rng.choice([2, 3]), "job": rng.choice([2, 3])}
    # what to say when: every fact once (changing ones 2-3 times, in order), spread over time
    plan: list[tuple[str, int]] = [(kind, 0) for kind in static]
    plan += [("pet", 0), ("pet", 1)]
    plan += [(kind, i) for kind in CHANGING for i in range(changes[kind])]
    slots = sorted(rng.sample(range(2, conversations), len(plan)))
    order = sorted(plan, key=lambda item: (item[1], rng.random()))  # changes come in order
    at = dict(zip(slots, order, strict=True))
    said: dict[str, list[str]] = defaultdict(list)
    pet_turns: list[str] = []
    for number in range(conversations):
        fact = at.get(number)
        kind = rng.random()
        if kind < 0.3:  # coding help, with code blocks
            ask, lang, code = rng.choice(CODE_TASKS)
            w.conversation(ask[:40])
            w.exchange(
                f"{ask}\n\n```{lang}\n{code}\n```",
                f"The problem is in the second line. Here's a fixed version:\n\n```{lang}\n"
                f"{code}\n```\n\nThis works because the value is initialised before use.",
            )
        elif kind < 0.5:  # a distractor about other people, places, jobs
            values = {
                "city": rng.choice(CITIES),
                "job": rng.choice(JOBS)[0],
                "animal": rng.choice(PETS)[0],
                "instrument": rng.choice(INSTRUMENTS),
            }
            w.conversation("Question")
            w.exchange(
                fill(rng.choice(DISTRACTORS), values), fill(rng.choice(DISTRACTOR_REPLY), values)
            )
        else:
            w.conversation(rng.choice(REQUESTS)[:40])
            w.exchange(rng.choice(REQUESTS), rng.choice(GENERIC_REPLY))
        w.chatter(rng.randint(0, 3))
        if fact is not None:
            name, index = fact
            if name == "city":
                values = {"x": cities[index]}
            elif name == "job":
                values = {"x": jobs[index][0], "y": jobs[index][1]}
            elif name == "pet":
                values = {"x": pets[index][1], "y": pets[index][0]}
            else:
                values = {"x": static[name][0]}
            statement = fill(rng.choice(SAY[name]), values)
            request = rng.choice(REQUESTS)
            text = f"{statement} {request}" if rng.random() < 0.5 else f"{request} {statement}"
            mid = w.exchange(text, rng.choice(GENERIC_REPLY))
            (pet_turns if name == "pet" else said[name]).append(mid)
            w.chatter(rng.randint(1, 3))
            if rng.random() < 0.4:  # a topic switch inside the conversation
                ask, lang, code = rng.choice(CODE_TASKS)
                w.exchange(f"Unrelated, but: {ask}\n```{lang}\n{code}\n```", "Sure, here's how.")
    for name in CHANGING:
        turns = said[name]
        for question in rng.sample(ASK[name], 2):
            w.history.probes.append(Probe(question, "changed", (turns[-1],), tuple(turns[:-1])))
    for name in static:
        w.history.probes.append(Probe(rng.choice(ASK[name]), "static", tuple(said[name])))
    for index, (animal, _) in enumerate(pets):
        w.history.probes.append(
            Probe(fill("What's my {y} called?", {"y": animal}), "static", (pet_turns[index],))
        )
    w.history.probes.append(Probe("What pets do I have?", "two-facts", tuple(pet_turns)))
    w.history.probes.append(
        Probe("Which cities have I lived in?", "two-facts", tuple(said["city"]))
    )
    w.history.probes.append(
        Probe("What jobs have I had over time?", "two-facts", tuple(said["job"]))
    )
    return w.history


def generate(seed: int, personas: int, conversations: int) -> list[History]:
    rng = random.Random(seed)
    return [make_history(f"p{i + 1}", rng, conversations) for i in range(personas)]


def chatgpt_export(history: History) -> list[dict[str, Any]]:
    """The persona's history as a ChatGPT ``conversations.json`` (linear threads)."""
    out: list[dict[str, Any]] = []
    by_conv: dict[str, list[Message]] = defaultdict(list)
    for message in history.messages:
        by_conv[message.conversation_id].append(message)
    for conv_id, messages in by_conv.items():
        mapping: dict[str, Any] = {"root": {"id": "root", "message": None, "parent": None}}
        parent = "root"
        for m in messages:
            node = m.mid
            mapping[node] = {
                "id": node,
                "parent": parent,
                "children": [],
                "message": {
                    "id": node,
                    "author": {"role": m.role},
                    "create_time": m.created.timestamp(),
                    "content": {"content_type": "text", "parts": [m.text]},
                },
            }
            mapping[parent].setdefault("children", []).append(node)
            parent = node
        out.append(
            {
                "id": conv_id,
                "title": messages[0].conversation,
                "create_time": messages[0].created.timestamp(),
                "current_node": parent,
                "mapping": mapping,
            }
        )
    return out


# -- the run ---------------------------------------------------------------------------------


def memories_of(history: History) -> list[dict[str, Any]]:
    return [
        {
            "content": m.text,
            "role": m.role,
            "created_at": m.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "metadata": {
                "source": "chatgpt",
                "conversation": m.conversation,
                "conversation_id": m.conversation_id,
                "dia_id": m.mid,
            },
        }
        for m in history.messages
    ]


def run(
    url: str, histories: Sequence[History], k: int, *, trust_env: bool, stats: RunStats
) -> list[list[list[str]]]:
    run_id = secrets.token_hex(4)
    namespaces = [f"history-{run_id}-{h.persona}" for h in histories]
    out: list[list[list[str]]] = []
    with httpx.Client(base_url=url, timeout=600.0, trust_env=trust_env) as client:
        try:
            for namespace, history in zip(namespaces, histories, strict=True):
                memories = memories_of(history)
                log(f"loading {history.persona}: {len(memories)} messages")
                for start in range(0, len(memories), 1000):
                    chunk = memories[start : start + 1000]
                    check(
                        client.post(
                            "/v1/memory/memories",
                            params={"namespace": namespace},
                            json={"memories": chunk},
                        )
                    )
                    stats.loaded += len(chunk)
            for namespace, history in zip(namespaces, histories, strict=True):
                out.append([search(client, namespace, p.text, k, stats) for p in history.probes])
        finally:
            erase(client, namespaces)
    return out


@dataclass
class Figures:
    recall: dict[str, dict[int, float]]
    counts: dict[str, int]
    newer_first: float
    changed: int


def newer_first(hits: Sequence[str], latest: str, older: Sequence[str]) -> bool:
    """Whether the latest statement of a changed fact is in the top 10 above every older one."""
    top = list(hits[:10])
    return latest in top and all(o not in top or top.index(o) > top.index(latest) for o in older)


def figures(histories: Sequence[History], results: list[list[list[str]]]) -> Figures:
    rows: dict[str, list[dict[int, float]]] = defaultdict(list)
    newer_ok = changed = 0
    for history, found in zip(histories, results, strict=True):
        known = {m.mid for m in history.messages}
        for probe, hits in zip(history.probes, found, strict=True):
            row = {k: recall_at(probe.evidence, hits, k, known) for k in (5, 10)}
            rows[probe.kind].append(row)
            rows["overall"].append(row)
            if probe.kind == "changed":
                changed += 1
                newer_ok += newer_first(hits, probe.evidence[0], probe.older)
    recall = {
        kind: {k: sum(r[k] for r in rs) / len(rs) for k in (5, 10)} for kind, rs in rows.items()
    }
    counts = {kind: len(rs) for kind, rs in rows.items()}
    return Figures(recall, counts, newer_ok / changed if changed else float("nan"), changed)


def report(
    histories: Sequence[History], results: list[list[list[str]]], result: Figures, stats: RunStats
) -> str:
    lines = [
        f"## Chat-history check ({len(histories)} personas, "
        f"{sum(len(h.messages) for h in histories)} messages, "
        f"{sum(len(h.probes) for h in histories)} questions)",
        "",
        "| Questions | Count | R@5 | R@10 |",
        "|---|---:|---:|---:|",
    ]
    for kind in (*KINDS, "overall"):
        if kind in result.recall:
            r = result.recall[kind]
            lines.append(
                f"| {kind} | {result.counts[kind]} | {r[5] * 100:.1f} | {r[10] * 100:.1f} |"
            )
    lines.append("")
    lines.append(
        f"Newer fact ranks first (latest statement in the top 10, above the older ones): "
        f"{result.newer_first * 100:.1f}% of {result.changed} questions about a changed fact"
    )
    lat = stats.latencies_ms
    lines.append(
        f"Search: {len(lat)} calls, p50 {percentile(lat, 50):.1f} ms, "
        f"p99 {percentile(lat, 99):.1f} ms"
    )
    return "\n".join(lines)


def misses(histories: Sequence[History], results: list[list[list[str]]]) -> str:
    lines = ["## Misses (evidence outside the top 10, or an older statement above the newest)"]
    for history, found in zip(histories, results, strict=True):
        text = {m.mid: f"[{m.role} {m.created:%Y-%m-%d}] {m.text}" for m in history.messages}
        for probe, hits in zip(history.probes, found, strict=True):
            top = hits[:10]
            late = [o for o in probe.older if o in top and probe.evidence[0] in top]
            bad = [e for e in probe.evidence if e not in top]
            if probe.kind == "changed":
                bad += [o for o in late if top.index(o) < top.index(probe.evidence[0])]
            if not bad:
                continue
            lines.append(f"\n### {history.persona}: {probe.text}")
            for e in (*probe.evidence, *probe.older):
                where = hits.index(e) + 1 if e in hits else "-"
                lines.append(f"- rank {where}: {text[e][:150]!r}")
            lines.append("  top 5:")
            lines.extend(f"  {i}. {text.get(d, d)[:120]!r}" for i, d in enumerate(top[:5], 1))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--personas", type=int, default=6)
    parser.add_argument("--conversations", type=int, default=90, help="a persona's, default 90")
    parser.add_argument("--url", default=None, help="a running gateway (default: start one)")
    parser.add_argument("--write-export", type=Path, default=None, metavar="DIR")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT")
    parser.add_argument("--misses", action="store_true", help="print the misses")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    add_recall_settings(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.personas, args.conversations = 2, 30
    env = recall_env(args.set)
    histories = generate(args.seed, args.personas, args.conversations)
    if args.write_export is not None:
        for history in histories:
            folder = args.write_export / history.persona
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "conversations.json").write_text(
                json.dumps(chatgpt_export(history), indent=1), encoding="utf-8"
            )
        log(f"ChatGPT-shaped exports written under {args.write_export}")
    stats = RunStats()
    began = time.perf_counter()
    try:
        if args.url:
            wait_ready(args.url, READY_TIMEOUT)
            results = run(args.url.rstrip("/"), histories, 50, trust_env=True, stats=stats)
        else:
            with local_gateway(False, env=env) as (url, _):
                results = run(url, histories, 50, trust_env=False, stats=stats)
    except (ApiError, RuntimeError, httpx.HTTPError) as exc:
        log(f"error: {exc}")
        return 1
    result = figures(histories, results)
    print(report(histories, results, result, stats))
    log(f"done in {time.perf_counter() - began:.1f} s")
    if args.misses:
        print(misses(histories, results))
    if args.json is not None:
        data = {
            "seed": args.seed,
            "recall": {
                kind: {str(k): v for k, v in r.items()} for kind, r in result.recall.items()
            },
            "counts": result.counts,
            "newer_first": result.newer_first,
            "search_p50_ms": percentile(stats.latencies_ms, 50),
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
