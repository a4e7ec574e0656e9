#!/usr/bin/env python3
"""Load benchmark for memgate: added latency, throughput, the write path, the embedder and
recall scaling, in one bounded run on loopback.

Usage::

    python bench/load.py [--quick] [--json OUT] [--seed N] [--gateway-env KEY=VALUE ...]
    python bench/load.py --proxy [--peer litellm] [--also NAME=DIR[@LEVEL] ...] [--quick]

``--proxy`` runs only the pass-through comparison: the fake upstream alone (direct), memgate's
``POST /v1/chat/completions``, any other memgate source trees (``--also``, e.g. a worktree of
an older commit, or the same tree at another log level) and LiteLLM's proxy (``--peer
litellm``, from a throwaway venv: never this project's), in interleaved rounds: c=1 latency
from this process, c=32 throughput from wrk, and each server's CPU per request.

What one run does (everything on 127.0.0.1, bounded in count and time, cleaned up at the end,
also on Ctrl-C or SIGTERM):

1. starts a minimal fast OpenAI-compatible upstream in its own process (this file run as
   ``--serve-upstream PORT``: a raw ASGI app under uvicorn with uvloop and httptools that
   answers a fixed small completion or a fixed short SSE stream and keeps no state);
2. starts ``python -m gateway.cli serve`` in its own process with a temporary data folder;
3. preloads one namespace with generated memories through ``POST /v1/memory/memories``;
4. with an async httpx client, measures direct-to-upstream vs pass-through vs memory chat at
   concurrency 1 and 32 (interleaved rounds, rotated order; the write queue is drained after
   every memory-chat round so that its backlog never lands on another path's round), the
   streaming time to first byte, a timed memory-chat run at concurrency 32 with the write
   queue sampled from ``/readyz``, and the drain rate once requests stop; the CPU time of
   client, gateway and upstream is read from ``/proc`` for every phase, to tell which process
   (or the whole machine) is the bottleneck;
5. stops gateway and upstream, then times the embedding model itself (batches of 64) and
   recall in the library (``memory.chroma.ChromaStore``) at 10k vs 100k total memories;
6. prints a Markdown report with the targets beside the figures (met / not met).

The machine's cores are shared by client, gateway and upstream: the report gives each
process's share of CPU in every phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from procs import free_port, stop_process, tail, wait_ready
from stats import percentile

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "bench-load-10k"
MODEL = "fake-model"
READY_TIMEOUT = 180.0
STOP_TIMEOUT = 20.0
ADD_BATCH = 1000  # the memory API's most memories per call

# -- targets -----------------------------------------------------------------------------------

MEMORY_ADDED_P50_MS = 20.0
MEMORY_ADDED_P99_MS = 60.0
PASSTHROUGH_ADDED_P50_MS = 2.0
EMBED_LIMIT_SHARE = 0.8
RECALL_RATIO_MAX = 1.3
TEXTS_PER_EXCHANGE = 3  # 1 recall query + the user turn and the reply, embedded by the writer

# -- generated text ----------------------------------------------------------------------------

FIRST_NAMES = (
    "Ana", "Bruno", "Chen", "Dara", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kemal",
    "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tariq", "Uma",
    "Viktor", "Wen", "Yara", "Zoe",
)  # fmt: skip
CITIES = (
    "Lisbon", "Porto", "Madrid", "Lyon", "Berlin", "Leipzig", "Krakow", "Oslo", "Dublin",
    "Toronto", "Osaka", "Seoul", "Nairobi", "Lima", "Quito", "Austin", "Denver", "Perth",
    "Hanoi", "Tbilisi",
)  # fmt: skip
JOBS = (
    "nurse", "carpenter", "data engineer", "teacher", "pilot", "baker", "lawyer", "architect",
    "vet", "translator", "chef", "physicist",
)  # fmt: skip
FOODS = (
    "peanuts", "shellfish", "gluten", "lactose", "sesame", "eggs", "kiwi", "mushrooms",
    "coriander", "soy",
)  # fmt: skip
PETS = ("dog", "cat", "parrot", "rabbit", "tortoise", "hamster")
PET_NAMES = ("Biscuit", "Pixel", "Mango", "Luna", "Otis", "Pepper", "Nacho", "Miso", "Juniper")
HOBBIES = (
    "bouldering", "the cello", "Portuguese", "pottery", "chess", "salsa", "watercolour",
    "sailing", "Go programming", "birdwatching",
)  # fmt: skip
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
RELATIONS = (
    "sister", "brother", "cousin", "neighbour", "manager", "friend", "aunt", "colleague",
    "landlord", "dentist",
)  # fmt: skip
PROJECTS = ("billing", "migration", "onboarding", "search", "mobile", "reporting", "pricing")
ITEMS = ("phone", "umbrella", "passport", "laptop", "gym", "newspaper", "music", "cloud storage")
DRINKS = ("green tea", "espresso", "oat latte", "mate", "hot chocolate", "black coffee")

MEMORY_TEMPLATES = (
    "My {rel} {name} moved to {city} in {month} and now works as a {job}.",
    "I am allergic to {food}, so never suggest dishes that contain it.",
    "Our {pet} {pet_name} turned {n} in {month} and still chews everything.",
    "I started learning {hobby} on {day}s with a teacher called {name}.",
    "The {project} project review with {name} is every {day} at {hour}:00.",
    "I drink {drink} every morning, except when I travel to {city}.",
    "Last {month} I went to {city} with my {rel} and forgot my {item} there.",
    "My {rel} {name} is a {job} and tells me to avoid {food}.",
    "I pay {n}0 euros a month for the {item} subscription and want to cancel it.",
    "{name} from the {project} team prefers meetings before {hour}:00 on {day}s.",
    "I want to visit {city} next {month} to practise {hobby} with {name}.",
    "The password hint for my {item} account is the name of my {pet}, {pet_name}.",
)
QUESTION_TEMPLATES = (
    "Where does my {rel} {name} live these days?",
    "Can you suggest a dinner recipe without {food} for {day}?",
    "How old is {pet_name} now, and what should I get my {pet} for its birthday?",
    "When is my next {hobby} lesson?",
    "What time is the {project} review with {name}?",
    "What do I usually drink in the morning when I am in {city}?",
    "What did I forget in {city} last {month}?",
    "What does {name} do for a living?",
    "Which subscriptions was I going to cancel, the {item} one?",
    "When does {name} like to have meetings about {project}?",
    "Where should I travel next {month}, maybe {city}?",
    "Remind me what I told you about my {pet} {pet_name}.",
)

REPLIES = tuple(
    f"{opening} {middle}"
    for opening in (
        "Sure.",
        "From what you told me earlier,",
        "Good question:",
        "Here is what I remember:",
    )
    for middle in (
        "you mentioned this a while ago and it still seems to apply.",
        "I would double-check the date before you plan around it.",
        "the details are in our earlier conversation about it.",
        "let me know if anything changed since then.",
    )
)


def fill(template: str, rng: random.Random) -> str:
    slots = {
        "name": rng.choice(FIRST_NAMES),
        "city": rng.choice(CITIES),
        "job": rng.choice(JOBS),
        "food": rng.choice(FOODS),
        "pet": rng.choice(PETS),
        "pet_name": rng.choice(PET_NAMES),
        "hobby": rng.choice(HOBBIES),
        "day": rng.choice(DAYS),
        "month": rng.choice(MONTHS),
        "rel": rng.choice(RELATIONS),
        "project": rng.choice(PROJECTS),
        "item": rng.choice(ITEMS),
        "drink": rng.choice(DRINKS),
        "n": rng.randint(2, 15),
        "hour": rng.randint(8, 18),
    }
    return template.format_map(slots)


def memory_texts(count: int, rng: random.Random) -> list[str]:
    return [fill(rng.choice(MEMORY_TEMPLATES), rng) for _ in range(count)]


def question_texts(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct questions (so that no cache keyed by text flatters a run)."""
    seen: dict[str, None] = {}
    while len(seen) < count:
        text = fill(rng.choice(QUESTION_TEMPLATES), rng)
        if text in seen:
            text = f"{text[:-1]}, {rng.choice(('please', 'again', 'today', 'exactly'))}?"
        if text in seen:
            text = f"{text[:-1]} (note {len(seen)})?"
        seen[text] = None
    return list(seen)


def chat_bodies(questions: Sequence[str], *, stream: bool) -> list[bytes]:
    out = []
    for question in questions:
        body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": question}]}
        if stream:
            body["stream"] = True
        out.append(json.dumps(body).encode())
    return out


# -- the fake upstream (run as ``--serve-upstream PORT``) ---------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_STREAM_FLAG = re.compile(rb'"stream"\s*:\s*true')


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


REF = "@REF@"  # replaced per request by a checksum of the request body


def completion_body(text: str) -> bytes:
    return _compact(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 24, "completion_tokens": 12, "total_tokens": 36},
        }
    )


def stream_events(text: str, pieces: int = 4) -> list[bytes]:
    """A short SSE answer: a role chunk, ``pieces`` content chunks, a finish chunk, [DONE]."""
    words = text.split(" ")
    step = max(1, math.ceil(len(words) / pieces))
    parts = [" ".join(words[i : i + step]) for i in range(0, len(words), step)]
    parts = [p if i == 0 else " " + p for i, p in enumerate(parts)]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        event = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + _compact(event) + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": p}) for p in parts]
    events.append(chunk({}, "stop"))
    events.append(b"data: [DONE]\n\n")
    return events


class BenchUpstream:
    """A stateless OpenAI-compatible upstream: a fixed small completion (one of a few canned
    replies, picked by the request body's length) or the same reply as a short SSE stream.
    Each reply ends with a reference derived from the request body, so that replies differ
    like real ones do and no cache keyed by text can flatter the gateway."""

    def __init__(self) -> None:
        self.json = [completion_body(f"{text} (ref {REF})") for text in REPLIES]
        self.streams = [stream_events(f"{text} (ref {REF})") for text in REPLIES]
        self.models = _compact(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        more = True
        while more:
            message = await receive()
            raw += message.get("body", b"")
            more = bool(message.get("more_body", False))
        path: str = scope["path"]
        if scope["method"] == "POST" and path.endswith("/chat/completions"):
            pick = len(raw) % len(REPLIES)
            ref = b"%08x" % zlib.crc32(raw)
            if _STREAM_FLAG.search(raw):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"text/event-stream"),
                            (b"cache-control", b"no-cache"),
                        ],
                    }
                )
                for event in self.streams[pick]:
                    event = event.replace(b"@REF@", ref)  # noqa: PLW2901
                    await send({"type": "http.response.body", "body": event, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await self._send(send, 200, self.json[pick].replace(b"@REF@", ref))
        elif path.endswith("/models"):
            await self._send(send, 200, self.models)
        else:
            await self._send(send, 404, b'{"error":{"message":"no such path","type":"bench"}}')

    @staticmethod
    async def _send(send: Send, status: int, payload: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(
        BenchUpstream(),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=2048,
    )


# -- processes ---------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the benchmark dies without cleaning up (Linux only)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    logfile: Path

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.proc.returncode}; its log:\n"
                f"{tail(self.logfile)}"
            )


def start_child(
    name: str, command: list[str], logfile: Path, env: dict[str, str], cwd: Path = REPO
) -> Child:
    log(f"starting {name}: {' '.join(command)}" + (f" (in {cwd})" if cwd != REPO else ""))
    with logfile.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only us; we stop it after cleaning up
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads run in this process yet
        )
    return Child(name, proc, logfile)


def stop_child(child: Child) -> None:
    stop_process(child.name, child.proc, child.logfile, timeout=STOP_TIMEOUT, log=log)


def wait_http(url: str, child: Child, timeout: float, *, want_ready: bool) -> float:
    """Poll ``url`` until it answers 200 while ``child`` lives; seconds waited."""
    return wait_ready(
        url,
        timeout,
        alive=child.check_alive,
        logfile=child.logfile,
        what="ready" if want_ready else "up",
    )


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process (all its threads) and of its live child
    processes (the gateway's store process); ``None``: this process."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return own + sum(cpu_seconds(child) for child in child_pids(pid))


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    for tasks in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            out += [int(c) for c in tasks.read_text().split()]
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used (``/proc/stat``), summed over cores."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, *rest = values
    steal = rest[0] if rest else 0
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass
class CpuMeter:
    """CPU seconds of client, gateway and upstream, and of everything else on the machine
    (``other``: the machine is shared, and its noise is reported, not hidden)."""

    pids: dict[str, int | None]

    def snapshot(self) -> dict[str, float]:
        out = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        out["machine"] = machine_busy_seconds()
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        out = {name: after[name] - before[name] for name in before if name != "machine"}
        machine = after["machine"] - before["machine"]
        if math.isnan(machine):
            return out
        # All figures count 1/CLK_TCK ticks: over a short phase, ours may sum to a bit more
        # than the machine's; ``other`` is clamped at 0 then.
        out["other"] = max(0.0, machine - sum(out.values()))
        out["machine"] = machine
        return out


# -- statistics --------------------------------------------------------------------------------


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x; 0 for fewer than 2 points."""
    if len(points) < 2:
        return 0.0
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    den = sum((x - mx) ** 2 for x, _ in points)
    if den == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / den


@dataclass
class Phase:
    """Accumulated figures of one (path, concurrency) over its interleaved rounds."""

    path: str
    concurrency: int
    values_ms: list[float] = field(default_factory=list)  # latency, or TTFB for streams
    totals_ms: list[float] = field(default_factory=list)  # whole stream, for streams
    errors: int = 0
    first_error: str = ""
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    recalled: list[int] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return len(self.values_ms)

    @property
    def rps(self) -> float:
        return self.ok / self.wall if self.wall > 0 else math.nan

    def p(self, q: float) -> float:
        return percentile(self.values_ms, q)

    def cpu_share(self) -> dict[str, float]:
        """CPU used per process, in % of one core, over this phase's wall time."""
        if self.wall <= 0:
            return {}
        return {name: 100.0 * sec / self.wall for name, sec in self.cpu.items()}

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "concurrency": self.concurrency,
            "ok": self.ok,
            "errors": self.errors,
            "first_error": self.first_error,
            "p50_ms": self.p(50),
            "p90_ms": self.p(90),
            "p99_ms": self.p(99),
            "max_ms": max(self.values_ms, default=math.nan),
            "total_p50_ms": percentile(self.totals_ms, 50),
            "wall_s": self.wall,
            "rps": self.rps,
            "cpu_seconds": self.cpu,
            "cpu_share_pct": self.cpu_share(),
            "mean_recalled": (sum(self.recalled) / len(self.recalled)) if self.recalled else None,
        }


# -- the load runner ---------------------------------------------------------------------------


class BadStatus(Exception):
    pass


# A request function: sends request ``i`` and returns (latency or TTFB ms, total ms, recalled).
Request = Callable[[int], Awaitable[tuple[float, float, int | None]]]


@dataclass
class Target:
    name: str
    client: httpx.AsyncClient
    url: str
    params: dict[str, str]
    bodies: list[bytes]
    stream: bool

    async def send(self, i: int) -> tuple[float, float, int | None]:
        body = self.bodies[i % len(self.bodies)]
        headers = {"content-type": "application/json"}
        start = time.perf_counter()
        if not self.stream:
            response = await self.client.post(
                self.url, params=self.params, content=body, headers=headers
            )
            elapsed = (time.perf_counter() - start) * 1000.0
            if response.status_code != 200:
                raise BadStatus(f"HTTP {response.status_code}: {response.text[:300]}")
            return elapsed, elapsed, _recalled(response)
        first: float | None = None
        async with self.client.stream(
            "POST", self.url, params=self.params, content=body, headers=headers
        ) as response:
            if response.status_code != 200:
                await response.aread()
                raise BadStatus(f"HTTP {response.status_code}: {response.text[:300]}")
            async for chunk in response.aiter_raw():
                if first is None and chunk:
                    first = time.perf_counter()
        end = time.perf_counter()
        if first is None:
            raise BadStatus("empty stream")
        return (first - start) * 1000.0, (end - start) * 1000.0, _recalled(response)


def _recalled(response: httpx.Response) -> int | None:
    value = response.headers.get("x-memory-recalled")
    return int(value) if value is not None and value.isdigit() else None


async def run_load(
    target: Target, phase: Phase, *, concurrency: int, count: int, max_seconds: float, first: int
) -> None:
    """``count`` requests (at most ``max_seconds``) from ``concurrency`` workers, closed loop."""
    issued = 0
    stop_at = time.perf_counter() + max_seconds

    async def worker() -> None:
        nonlocal issued
        while issued < count and time.perf_counter() < stop_at:
            i = first + issued
            issued += 1
            try:
                value, total, recalled = await target.send(i)
            except (httpx.HTTPError, BadStatus) as exc:
                phase.errors += 1
                if not phase.first_error:
                    phase.first_error = f"{type(exc).__name__}: {exc}"[:300]
                continue
            phase.values_ms.append(value)
            phase.totals_ms.append(total)
            if recalled is not None:
                phase.recalled.append(recalled)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.wall += time.perf_counter() - start


async def queue_depth(monitor: httpx.AsyncClient) -> int:
    response = await monitor.get("/readyz")
    return int(response.json()["queue_depth"])


async def wait_drained(monitor: httpx.AsyncClient, limit_s: float) -> tuple[float, int]:
    """Poll the write queue until it is empty (at most ``limit_s``): seconds and last depth."""
    start = time.perf_counter()
    depth = await queue_depth(monitor)
    while depth > 0 and time.perf_counter() - start < limit_s:
        await asyncio.sleep(0.2)
        depth = await queue_depth(monitor)
    return time.perf_counter() - start, depth


# -- configuration -----------------------------------------------------------------------------


@dataclass
class Config:
    quick: bool
    seed: int
    preload: int
    warmup_c1: int
    warmup_c32: int
    count_c1: int
    count_c32: int
    rounds: int
    chunk_max_s: float
    stream_count: int
    write_seconds: float
    drain_limit_s: float
    embed_batches: int
    embed_singles: int
    recall_per_ns: int
    recall_other_ns: int
    recall_queries: int
    high_concurrency: int = 32

    @classmethod
    def make(cls, quick: bool, seed: int) -> Config:
        if quick:
            return cls(
                quick=True,
                seed=seed,
                preload=1000,
                warmup_c1=10,
                warmup_c32=64,
                count_c1=40,
                count_c32=200,
                rounds=2,
                chunk_max_s=20.0,
                stream_count=30,
                write_seconds=6.0,
                drain_limit_s=60.0,
                embed_batches=3,
                embed_singles=10,
                recall_per_ns=1000,
                recall_other_ns=4,
                recall_queries=100,
            )
        return cls(
            quick=False,
            seed=seed,
            preload=10_000,
            warmup_c1=30,
            warmup_c32=256,
            count_c1=300,
            count_c32=2000,
            rounds=5,
            chunk_max_s=25.0,
            stream_count=200,
            write_seconds=60.0,
            drain_limit_s=240.0,
            embed_batches=20,
            embed_singles=50,
            recall_per_ns=10_000,
            recall_other_ns=9,
            recall_queries=200,
        )


# -- the HTTP phases ---------------------------------------------------------------------------


@dataclass
class HttpResults:
    preload: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, Phase] = field(default_factory=dict)
    streams: dict[str, Phase] = field(default_factory=dict)
    write: dict[str, Any] = field(default_factory=dict)
    namespace_size: int = 0
    drain_between_rounds_s: float = 0.0


def _client(base_url: str, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(120.0, connect=10.0),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        trust_env=False,
    )


async def preload(client: httpx.AsyncClient, texts: Sequence[str]) -> dict[str, Any]:
    """Add the memories in batches of 1000, one call at a time; the load rate."""
    calls: list[float] = []
    start = time.perf_counter()
    for offset in range(0, len(texts), ADD_BATCH):
        batch = [{"content": t, "role": "user"} for t in texts[offset : offset + ADD_BATCH]]
        t0 = time.perf_counter()
        response = await client.post(
            "/v1/memory/memories", params={"namespace": NAMESPACE}, json={"memories": batch}
        )
        if response.status_code != 200:
            raise RuntimeError(f"preload failed: HTTP {response.status_code}: {response.text}")
        calls.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    log(f"preloaded {len(texts)} memories in {wall:.1f} s ({len(texts) / wall:.0f}/s)")
    return {
        "memories": len(texts),
        "calls": len(calls),
        "seconds": wall,
        "memories_per_second": len(texts) / wall,
        "call_seconds_p50": percentile(calls, 50),
    }


async def http_phases(
    cfg: Config, upstream_url: str, gateway_url: str, meter: CpuMeter, children: list[Child]
) -> HttpResults:
    rng = random.Random(cfg.seed)
    out = HttpResults()
    conns = cfg.high_concurrency * 2
    questions = question_texts(4000, rng)
    plain = chat_bodies(questions, stream=False)
    streamed = chat_bodies(questions, stream=True)
    direct_c = _client(upstream_url, conns)
    gateway_c = _client(gateway_url, conns)
    monitor = _client(gateway_url, 2)
    mem_params = {"namespace": NAMESPACE}
    targets = {
        "direct": Target("direct", direct_c, "/v1/chat/completions", {}, plain, False),
        "passthrough": Target("passthrough", gateway_c, "/v1/chat/completions", {}, plain, False),
        "memory": Target(
            "memory", gateway_c, "/v1/memory/chat/completions", mem_params, plain, False
        ),
    }
    stream_targets = {
        "direct": Target("direct", direct_c, "/v1/chat/completions", {}, streamed, True),
        "passthrough": Target("passthrough", gateway_c, "/v1/chat/completions", {}, streamed, True),
        "memory": Target(
            "memory", gateway_c, "/v1/memory/chat/completions", mem_params, streamed, True
        ),
    }
    exchanges = 0
    counter = 0

    def alive() -> None:
        for child in children:
            child.check_alive()

    async def chunk(target: Target, phase: Phase | None, concurrency: int, count: int) -> None:
        nonlocal exchanges, counter
        alive()
        sink = phase or Phase(target.name, concurrency)
        before = meter.snapshot()
        ok_before = sink.ok
        await run_load(
            target,
            sink,
            concurrency=concurrency,
            count=count,
            max_seconds=cfg.chunk_max_s,
            first=counter,
        )
        counter += count
        if phase is not None:
            for name, sec in CpuMeter.delta(before, meter.snapshot()).items():
                phase.cpu[name] = phase.cpu.get(name, 0.0) + sec
        if target.url.startswith("/v1/memory/"):
            exchanges += sink.ok - ok_before
            # The writer's backlog must not land on the next path's round.
            waited, depth = await wait_drained(monitor, cfg.drain_limit_s)
            out.drain_between_rounds_s += waited
            if depth:
                log(f"warning: write queue still {depth} deep after {waited:.0f} s")
        if phase is None and sink.errors:
            raise RuntimeError(f"warm-up of {target.name} failed: {sink.first_error}")

    try:
        out.preload = await preload(gateway_c, memory_texts(cfg.preload, rng))
        probe = await gateway_c.post(
            "/v1/memory/search", params=mem_params, json={"query": questions[0], "k": 30}
        )
        out.preload["probe_search_hits"] = len(probe.json().get("data", []))

        log("warming up")
        for target in targets.values():
            await chunk(target, None, 1, cfg.warmup_c1)
            await chunk(target, None, cfg.high_concurrency, cfg.warmup_c32)
        for target in stream_targets.values():
            await chunk(target, None, 1, cfg.warmup_c1)

        order = list(targets)
        for concurrency, total in ((1, cfg.count_c1), (cfg.high_concurrency, cfg.count_c32)):
            per_round = math.ceil(total / cfg.rounds)
            for name in order:
                out.phases[f"{name}@{concurrency}"] = Phase(name, concurrency)
            for r in range(cfg.rounds):
                rotated = order[r % len(order) :] + order[: r % len(order)]
                log(f"c={concurrency} round {r + 1}/{cfg.rounds}: {', '.join(rotated)}")
                for name in rotated:
                    phase = out.phases[f"{name}@{concurrency}"]
                    await chunk(targets[name], phase, concurrency, per_round)

        per_round = math.ceil(cfg.stream_count / cfg.rounds)
        for name in order:
            out.streams[name] = Phase(name, 1)
        for r in range(cfg.rounds):
            rotated = order[r % len(order) :] + order[: r % len(order)]
            log(f"streaming round {r + 1}/{cfg.rounds}: {', '.join(rotated)}")
            for name in rotated:
                await chunk(stream_targets[name], out.streams[name], 1, per_round)

        log(f"write path: memory chat at c={cfg.high_concurrency} for {cfg.write_seconds:.0f} s")
        out.write = await write_run(cfg, targets["memory"], monitor, meter)
        exchanges += int(out.write["exchanges"])
        out.namespace_size = cfg.preload + 2 * exchanges
    finally:
        for client in (direct_c, gateway_c, monitor):
            await client.aclose()
    return out


async def write_run(
    cfg: Config, target: Target, monitor: httpx.AsyncClient, meter: CpuMeter
) -> dict[str, Any]:
    """Memory chat at high concurrency for ``write_seconds`` while the write queue is sampled
    every 0.5 s; then the drain once requests stop."""
    phase = Phase("memory-write-run", cfg.high_concurrency)
    samples: list[tuple[float, int, float]] = []  # (t, depth, readyz ms)
    stop = asyncio.Event()
    t0 = time.perf_counter()

    async def sample() -> None:
        next_at = time.perf_counter()
        while not stop.is_set():
            s0 = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                depth = await queue_depth(monitor)
                samples.append((s0 - t0, depth, (time.perf_counter() - s0) * 1000.0))
            next_at += 0.5
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.perf_counter()))

    depth_start = await queue_depth(monitor)
    before = meter.snapshot()
    sampler = asyncio.create_task(sample())
    try:
        await run_load(
            target,
            phase,
            concurrency=cfg.high_concurrency,
            count=1_000_000,
            max_seconds=cfg.write_seconds,
            first=7_000_000,
        )
    finally:
        stop.set()
        await sampler
    load_wall = phase.wall
    phase.cpu = CpuMeter.delta(before, meter.snapshot())
    depth_stop = await queue_depth(monitor)
    drain_t0 = time.perf_counter()
    drain_samples: list[tuple[float, int]] = [(0.0, depth_stop)]
    depth = depth_stop
    while depth > 0 and time.perf_counter() - drain_t0 < cfg.drain_limit_s:
        await asyncio.sleep(0.1)
        depth = await queue_depth(monitor)
        drain_samples.append((time.perf_counter() - drain_t0, depth))
    drain_s = time.perf_counter() - drain_t0
    if depth:
        log(f"warning: write queue still {depth} deep after a {drain_s:.0f} s drain")

    n = phase.ok
    enqueued = 2 * n  # each exchange is stored as the user turn and the reply
    drained_during = enqueued - (depth_stop - depth_start)
    depths = [d for _, d, _ in samples]
    second_half = [(t, float(d)) for t, d, _ in samples if t >= load_wall / 2]
    growth = slope(second_half)
    enqueue_rate = enqueued / load_wall if load_wall > 0 else 0.0
    # Bounded: no sustained growth over the run's second half (a writer that keeps up leaves
    # the depth oscillating around its batch size).
    bounded = growth <= max(1.0, 0.05 * enqueue_rate)
    drained_after = depth_stop - depth
    return {
        "seconds": load_wall,
        "exchanges": n,
        "errors": phase.errors,
        "first_error": phase.first_error,
        "exchanges_per_second": n / load_wall if load_wall else math.nan,
        "p50_ms": phase.p(50),
        "p99_ms": phase.p(99),
        "mean_recalled": (sum(phase.recalled) / len(phase.recalled)) if phase.recalled else None,
        "memories_enqueued_per_second": enqueue_rate,
        "writer_memories_per_second_during_load": drained_during / load_wall,
        "writer_exchanges_per_second_during_load": drained_during / 2 / load_wall,
        "depth_start": depth_start,
        "depth_max": max(depths, default=0),
        "depth_at_stop": depth_stop,
        "depth_growth_second_half_per_s": growth,
        "bounded": bounded,
        "samples": len(samples),
        "readyz_p50_ms": percentile([ms for _, _, ms in samples], 50),
        "readyz_max_ms": max((ms for _, _, ms in samples), default=math.nan),
        "depth_series": [[round(t, 2), d] for t, d, _ in samples],
        "drain_seconds": drain_s,
        "drain_left": depth,
        "drain_memories_per_second": (drained_after / drain_s) if drained_after else math.nan,
        "drain_exchanges_per_second": (drained_after / 2 / drain_s) if drained_after else math.nan,
        "drain_series": [[round(t, 2), d] for t, d in drain_samples],
        # Everything the run asked for, writes included, over the time it took to finish it.
        "sustained_exchanges_per_second": n / (load_wall + (drain_s if drained_after else 0.0)),
        "cpu_seconds": phase.cpu,
        "cpu_share_pct": phase.cpu_share(),
    }


# -- the in-process phases: embedder and recall ------------------------------------------------


def gateway_embedder(extra_env: Sequence[str]) -> tuple[Any, str]:
    """The embedder the gateway builds from its settings (the same environment as the
    gateway's), and a label; ``SentenceTransformerEmbedder`` when that cannot be built here."""
    from memory.embedder import SentenceTransformerEmbedder

    try:
        from gateway.app import open_embedder
        from gateway.config import load_settings

        settings = load_settings(None, gateway_env(extra_env))
        embedder = open_embedder(settings)
        conf = settings.embedder
        threads = f"{conf.threads} thread{'s' * (conf.threads != 1)}" if conf.threads else ""
        label = f"{getattr(conf, 'backend', 'torch')}, {threads or 'default threads'}"
    except (ImportError, AttributeError, TypeError) as exc:
        log(f"the gateway's embedder cannot be built here ({exc}); using the torch one")
        embedder = SentenceTransformerEmbedder(threads=embedder_threads(extra_env))
        label = "torch"
    return embedder, label


def embedder_phase(cfg: Config, extra_env: Sequence[str]) -> dict[str, Any]:
    """Texts/s on batches of 64 short texts of the embedder the gateway uses, interleaved
    batch by batch with a comparison: the torch ``SentenceTransformerEmbedder`` with torch's
    default threads (or, when the gateway uses that one, with 1 thread)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    from memory.embedder import SentenceTransformerEmbedder

    default_threads = torch.get_num_threads()
    t0 = time.perf_counter()
    configured, label = gateway_embedder(extra_env)
    load_s = time.perf_counter() - t0
    torch_threads = torch.get_num_threads()  # as the gateway's settings left it
    torch.set_num_threads(default_threads)
    # (label, embedder, torch threads to set before each call or None)
    candidates: list[tuple[str, Any, int | None]]
    if isinstance(configured, SentenceTransformerEmbedder):
        alt = 1 if torch_threads != 1 else default_threads
        candidates = [(f"torch, {torch_threads} thread(s)", configured, torch_threads)]
        if alt != torch_threads:
            candidates.append((f"torch, {alt} thread(s)", configured, alt))
    else:
        candidates = [
            (label, configured, None),
            (f"torch, {default_threads} thread(s)", SentenceTransformerEmbedder(), default_threads),
        ]
    rng = random.Random(cfg.seed + 1)
    count = cfg.embed_batches + 2
    pool = memory_texts(64 * count, rng) + question_texts(64 * count, rng)
    rng.shuffle(pool)
    batches = [pool[i * 64 : (i + 1) * 64] for i in range(count)]
    singles_texts = question_texts(cfg.embed_singles, rng)
    times: list[list[float]] = [[] for _ in candidates]
    singles: list[list[float]] = [[] for _ in candidates]

    def call(j: int, texts: list[str]) -> float:
        _, embedder, threads = candidates[j]
        if threads is not None:
            torch.set_num_threads(threads)
        s0 = time.perf_counter()
        embedder.embed(texts)
        return time.perf_counter() - s0

    meter = CpuMeter({"bench": None})
    before = meter.snapshot()
    w0 = time.perf_counter()
    order = list(range(len(candidates)))
    try:
        for j in order:  # warm-up
            call(j, batches[0])
            call(j, batches[1])
        for i, batch in enumerate(batches[2:]):
            for j in order[i % len(order) :] + order[: i % len(order)]:
                times[j].append(call(j, batch))
        for i, text in enumerate(singles_texts):
            for j in order[i % len(order) :] + order[: i % len(order)]:
                singles[j].append(call(j, [text]) * 1000.0)
    finally:
        torch.set_num_threads(default_threads)
    other = CpuMeter.delta(before, meter.snapshot()).get("other", math.nan)
    other /= time.perf_counter() - w0
    two_calls = two_calls_rate(configured, batches[2:])
    rows: list[dict[str, Any]] = [
        {
            "embedder": name + (" (the gateway's)" if j == 0 else ""),
            "texts_per_second": 64 * len(times[j]) / sum(times[j]),
            "batch_ms_p50": percentile([t * 1000 for t in times[j]], 50),
            "single_text_ms_p50": percentile(singles[j], 50),
            "single_text_ms_p99": percentile(singles[j], 99),
        }
        for j, (name, _, _) in enumerate(candidates)
    ]
    texts_per_s = rows[0]["texts_per_second"]
    log(f"embedder ({label}): {texts_per_s:.0f} texts/s in batches of 64")
    return {
        "gateway_embedder": label,
        "torch_default_threads": default_threads,
        "load_seconds": load_s,
        "batch": 64,
        "batches": cfg.embed_batches,
        "rows": rows,
        "texts_per_second": texts_per_s,
        "limit_exchanges_per_second": texts_per_s / TEXTS_PER_EXCHANGE,
        # The gateway runs up to two model calls at once (queries, and texts being stored):
        # what two calls at once get through on this machine, for comparison.
        "two_calls_texts_per_second": two_calls,
        "two_calls_limit_exchanges_per_second": two_calls / TEXTS_PER_EXCHANGE,
        "other_cpu_pct": 100.0 * other,
    }


def two_calls_rate(embedder: Any, batches: Sequence[list[str]]) -> float:
    """Texts/s of ``embedder`` with two threads calling it at once, each on its own batches."""
    work = list(batches) * 2
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not work:
                    return
                batch = work.pop()
            embedder.embed(batch)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 64 * 2 * len(batches) / (time.perf_counter() - start)


def recall_phase(cfg: Config, root: Path) -> dict[str, Any]:
    """Recall latency in the library at 10k vs 100k total memories.

    As specified: one store, a namespace of ``recall_per_ns`` memories, ``recall_queries``
    searches (k=30); then ``recall_other_ns`` more namespaces of the same size, and the same
    searches again. Since the machine is noisy and time passes between the two measurements,
    a control is measured too: a second store holding only the same namespace (same vectors),
    searched alternately with the grown store, query by query."""
    import numpy as np

    from memory.chroma import ChromaStore
    from memory.records import Memory

    dim = 384
    rng = np.random.default_rng(cfg.seed)
    text_rng = random.Random(cfg.seed + 2)

    def unit(n: int) -> Any:
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors

    grown = ChromaStore(path=root / "recall-grown")
    control = ChromaStore(path=root / "recall-control")
    insert_seconds = 0.0
    inserted = 0

    def fill_namespace(namespace: str, stores: Sequence[ChromaStore]) -> None:
        nonlocal insert_seconds, inserted
        texts = memory_texts(cfg.recall_per_ns, text_rng)
        for offset in range(0, len(texts), ADD_BATCH):
            part = texts[offset : offset + ADD_BATCH]
            memories = [
                Memory(
                    id=f"{namespace}-{offset + i}",
                    namespace=namespace,
                    content=text,
                    role="user",
                    created_at=1_700_000_000.0 + offset + i,
                )
                for i, text in enumerate(part)
            ]
            vectors = unit(len(part))
            for store in stores:
                t0 = time.perf_counter()
                store.add(memories, vectors)
                if store is grown:
                    insert_seconds += time.perf_counter() - t0
                    inserted += len(part)

    queries = unit(cfg.recall_queries)

    def timed(store: ChromaStore, vector: Any) -> float:
        t0 = time.perf_counter()
        hits = store.search("recall-0", vector, 30)
        elapsed = (time.perf_counter() - t0) * 1000.0
        assert len(hits) == 30
        return elapsed

    def measure(stores: Sequence[ChromaStore]) -> list[list[float]]:
        """The searches on each store, alternating store order query by query."""
        for store in stores:
            for vector in queries[:20]:  # warm-up: the index is loaded on first use
                store.search("recall-0", vector, 30)
        out: list[list[float]] = [[] for _ in stores]
        for i, vector in enumerate(queries):
            order = list(range(len(stores)))
            if i % 2:
                order.reverse()
            for j in order:
                out[j].append(timed(stores[j], vector))
        return out

    meter = CpuMeter({"bench": None})
    before = meter.snapshot()
    w0 = time.perf_counter()
    try:
        fill_namespace("recall-0", [grown, control])
        (small,) = measure([grown])
        small_total = inserted
        log(f"recall: p50 {percentile(small, 50):.2f} ms at {small_total} memories; growing")
        for i in range(1, cfg.recall_other_ns + 1):
            fill_namespace(f"recall-{i}", [grown])
        large_total = inserted
        (large,) = measure([grown])
        control_ms, grown_ms = measure([control, grown])
    finally:
        grown.close()
        control.close()
    other = CpuMeter.delta(before, meter.snapshot()).get("other", math.nan)
    ratio = percentile(large, 50) / percentile(small, 50)
    ratio_control = percentile(grown_ms, 50) / percentile(control_ms, 50)
    log(
        f"recall: p50 {percentile(large, 50):.2f} ms at {large_total} memories (x{ratio:.2f}); "
        f"interleaved with a {small_total} store: x{ratio_control:.2f}"
    )
    return {
        "dim": dim,
        "k": 30,
        "searches": len(queries),
        "namespace_size": cfg.recall_per_ns,
        "small_total": small_total,
        "large_total": large_total,
        "small_p50_ms": percentile(small, 50),
        "small_p99_ms": percentile(small, 99),
        "large_p50_ms": percentile(large, 50),
        "large_p99_ms": percentile(large, 99),
        "ratio_p50_sequential": ratio,
        "control_p50_ms": percentile(control_ms, 50),
        "control_p99_ms": percentile(control_ms, 99),
        "grown_interleaved_p50_ms": percentile(grown_ms, 50),
        "grown_interleaved_p99_ms": percentile(grown_ms, 99),
        "ratio_p50": ratio_control,
        "insert_memories_per_second": inserted / insert_seconds if insert_seconds else math.nan,
        "other_cpu_pct": 100.0 * other / (time.perf_counter() - w0),
    }


# -- the report --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
    }


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "n/a"
    return "met" if ok else "**not met**"


def targets_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    phases: dict[str, Any] = results["http"]["phases"]
    write = results["http"]["write"]
    embed = results.get("embedder") or {}
    recall = results.get("recall") or {}

    def added(path: str, c: int, q: str) -> float:
        return float(phases[f"{path}@{c}"][q] - phases[f"direct@{c}"][q])

    rows: list[dict[str, Any]] = []
    m50, m99 = added("memory", 1, "p50_ms"), added("memory", 1, "p99_ms")
    rows.append(
        {
            "target": "memory chat added latency p50, c=1, 10k namespace",
            "figure": f"{m50:.1f} ms",
            "limit": f"<= {MEMORY_ADDED_P50_MS:.0f} ms",
            "met": m50 <= MEMORY_ADDED_P50_MS,
        }
    )
    rows.append(
        {
            "target": "memory chat added latency p99, c=1, 10k namespace",
            "figure": f"{m99:.1f} ms",
            "limit": f"<= {MEMORY_ADDED_P99_MS:.0f} ms",
            "met": m99 <= MEMORY_ADDED_P99_MS,
        }
    )
    p50 = added("passthrough", 1, "p50_ms")
    rows.append(
        {
            "target": "pass-through added latency p50, c=1",
            "figure": f"{p50:.2f} ms",
            "limit": f"<= {PASSTHROUGH_ADDED_P50_MS:.0f} ms",
            "met": p50 <= PASSTHROUGH_ADDED_P50_MS,
        }
    )
    limit = embed.get("limit_exchanges_per_second")
    sustained = write["sustained_exchanges_per_second"]
    if limit:
        share = sustained / limit
        rows.append(
            {
                "target": "memory chat throughput, c=32 (sustained, writes included) "
                "vs embedding-bound limit",
                "figure": f"{sustained:.1f}/s = {share:.2f} x {limit:.1f}/s (one model call; "
                f"{sustained / embed['two_calls_limit_exchanges_per_second']:.2f} x the "
                f"{embed['two_calls_limit_exchanges_per_second']:.1f}/s of two at once)",
                "limit": f">= {EMBED_LIMIT_SHARE} x",
                "met": share >= EMBED_LIMIT_SHARE,
            }
        )
    if recall:
        ratio = recall["ratio_p50"]
        rows.append(
            {
                "target": f"recall p50 {recall['large_total'] // 1000}k / "
                f"{recall['small_total'] // 1000}k total memories (interleaved)",
                "figure": f"{ratio:.2f}",
                "limit": f"<= {RECALL_RATIO_MAX}",
                "met": ratio <= RECALL_RATIO_MAX,
            }
        )
    rows.append(
        {
            "target": f"writer keeps up (queue bounded over {write['seconds']:.0f} s at c=32)",
            "figure": f"max depth {write['depth_max']}, "
            f"{write['depth_growth_second_half_per_s']:+.1f}/s in 2nd half",
            "limit": "no sustained growth",
            "met": bool(write["bounded"]),
        }
    )
    return rows


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    cfg = results["config"]
    http = results["http"]
    phases: dict[str, Any] = http["phases"]
    streams: dict[str, Any] = http["streams"]
    write = http["write"]
    embed = results.get("embedder") or {}
    recall = results.get("recall") or {}
    lines: list[str] = []
    add = lines.append
    loadavg = ", ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
    env = ", env " + " ".join(cfg["gateway_env"]) if cfg["gateway_env"] else ""
    source = f"source {cfg['gateway_src']}" if cfg["gateway_src"] else f"repo at {results['git']}"
    quick = " (--quick: a smoke test, figures not meaningful)" if cfg["quick"] else ""
    add(f"# memgate load benchmark{quick}")
    add("")
    add(
        f"- machine: nproc {m['nproc']}, CPU {m['cpu_model']}, Python {m['python']}, "
        f"{m['platform']}; load average at start {loadavg}"
    )
    add(
        f"- run: {results['started']}, seed {cfg['seed']}, wall {results['wall_seconds']:.0f} s; "
        f"gateway `memgate serve` ({source}, default settings{env}), "
        f"upstream `bench/load.py --serve-upstream` (uvicorn, uvloop, httptools, fixed answers), "
        f"client: one asyncio process, httpx"
    )
    pre = http["preload"]
    add(
        f"- namespace `{NAMESPACE}`: {pre['memories']:,} memories preloaded in "
        f"{pre['seconds']:.1f} s "
        f"({pre['memories_per_second']:,.0f}/s, batches of {ADD_BATCH}); "
        f"~{http['namespace_size']:,} at the end (each memory-chat exchange adds 2)"
    )
    add(
        "- client, gateway and upstream share the machine's cores; CPU columns are % of one "
        f"core over the phase (the machine has {100 * (m['nproc'] or 1)}%), from /proc in "
        "10 ms ticks (coarse for short phases); `other` is every other process on the "
        "machine (noise). "
        f"Other processes used {fmt(results['other_cpu_pct'], 0)}% on average during the "
        "HTTP phases."
    )
    add("")
    add("## Targets")
    add("")
    add("| target | figure | limit | verdict |")
    add("|---|---|---|---|")
    for row in results["targets"]:
        add(f"| {row['target']} | {row['figure']} | {row['limit']} | {verdict(row['met'])} |")
    add("")
    add(
        f"## Non-streaming chat, interleaved ({cfg['rounds']} rounds, rotated order; "
        "write queue drained after each memory round)"
    )
    add("")
    add(
        "| path | c | ok | err | p50 ms | p99 ms | added p50 | added p99 | req/s "
        "| CPU client | CPU gateway | CPU upstream | CPU other | CPU machine |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, ph in phases.items():
        direct = phases[f"direct@{ph['concurrency']}"]
        is_direct = key.startswith("direct")
        a50 = "" if is_direct else fmt(ph["p50_ms"] - direct["p50_ms"], 2)
        a99 = "" if is_direct else fmt(ph["p99_ms"] - direct["p99_ms"], 2)
        cpu = ph["cpu_share_pct"]
        add(
            f"| {ph['path']} | {ph['concurrency']} | {ph['ok']} | {ph['errors']} "
            f"| {fmt(ph['p50_ms'], 2)} | {fmt(ph['p99_ms'], 2)} | {a50} | {a99} "
            f"| {fmt(ph['rps'], 0)} | {fmt(cpu.get('client'), 0)}% | {fmt(cpu.get('gateway'), 0)}% "
            f"| {fmt(cpu.get('upstream'), 0)}% | {fmt(cpu.get('other'), 0)}% "
            f"| {fmt(cpu.get('machine'), 0)}% |"
        )
    recalled = phases["memory@1"]["mean_recalled"]
    add("")
    add(
        f"Memory chat injected {fmt(recalled, 1)} memories per request on average (c=1). "
        f"Draining the write queue between rounds took {http['drain_between_rounds_s']:.1f} s "
        "in all (not counted in any req/s)."
    )
    add("")
    add("## Streaming time to first byte (c=1, interleaved)")
    add("")
    add(
        "| path | ok | err | TTFB p50 ms | TTFB p99 ms | added p50 | added p99 "
        "| whole stream p50 ms |"
    )
    add("|---|---|---|---|---|---|---|---|")
    for key, ph in streams.items():
        direct = streams["direct"]
        is_direct = key == "direct"
        a50 = "" if is_direct else fmt(ph["p50_ms"] - direct["p50_ms"], 2)
        a99 = "" if is_direct else fmt(ph["p99_ms"] - direct["p99_ms"], 2)
        add(
            f"| {ph['path']} | {ph['ok']} | {ph['errors']} | {fmt(ph['p50_ms'], 2)} "
            f"| {fmt(ph['p99_ms'], 2)} | {a50} | {a99} | {fmt(ph['total_p50_ms'], 2)} |"
        )
    add("")
    add(
        f"## Write path: memory chat at c=32 for {write['seconds']:.0f} s, "
        "queue sampled every 0.5 s"
    )
    add("")
    cpu = write["cpu_share_pct"]
    add("| figure | value |")
    add("|---|---|")
    add(
        f"| exchanges answered | {write['exchanges']:,} ({write['exchanges_per_second']:.1f}/s), "
        f"{write['errors']} errors, p50 {fmt(write['p50_ms'])} ms, p99 {fmt(write['p99_ms'])} ms |"
    )
    add(f"| memories enqueued | {write['memories_enqueued_per_second']:.1f}/s |")
    add(
        f"| writer drain during load | {write['writer_memories_per_second_during_load']:.1f} "
        f"memories/s = {write['writer_exchanges_per_second_during_load']:.1f} exchanges/s |"
    )
    add(
        f"| queue depth | start {write['depth_start']}, max {write['depth_max']}, at stop "
        f"{write['depth_at_stop']}, trend in 2nd half "
        f"{write['depth_growth_second_half_per_s']:+.1f}/s "
        f"({write['samples']} samples; /readyz p50 {fmt(write['readyz_p50_ms'])} ms, "
        f"max {fmt(write['readyz_max_ms'])} ms) |"
    )
    add(f"| bounded | {'yes' if write['bounded'] else 'no'} |")
    left = f", {write['drain_left']} still queued" if write["drain_left"] else ""
    add(
        f"| drain after stop | {write['depth_at_stop']} memories in "
        f"{write['drain_seconds']:.1f} s: "
        f"{fmt(write['drain_memories_per_second'])} memories/s = "
        f"{fmt(write['drain_exchanges_per_second'])} exchanges/s{left} |"
    )
    add(
        f"| sustained memory-chat rate (answers + their writes) | "
        f"{write['sustained_exchanges_per_second']:.1f} exchanges/s |"
    )
    add(
        f"| CPU during load (% of one core) | client {fmt(cpu.get('client'), 0)}%, gateway "
        f"{fmt(cpu.get('gateway'), 0)}%, upstream {fmt(cpu.get('upstream'), 0)}%, "
        f"other processes {fmt(cpu.get('other'), 0)}% |"
    )
    add("")
    if embed:
        add(
            "## Embedder (in the benchmark process after the gateway stopped; "
            f"other processes used {embed['other_cpu_pct']:.0f}% meanwhile)"
        )
        add("")
        add("| embedder | batches of 64: texts/s | batch p50 ms | one text p50 ms | p99 ms |")
        add("|---|---|---|---|---|")
        for row in embed["rows"]:
            add(
                f"| {row['embedder']} | {row['texts_per_second']:,.0f} "
                f"| {row['batch_ms_p50']:.0f} | {row['single_text_ms_p50']:.1f} "
                f"| {row['single_text_ms_p99']:.1f} |"
            )
        add("")
        add(
            f"Embedding-bound limit for memory chat: {embed['texts_per_second']:,.0f} texts/s "
            f"/ {TEXTS_PER_EXCHANGE} (1 query + 2 stored texts per exchange) = "
            f"{embed['limit_exchanges_per_second']:.1f} exchanges/s. The gateway runs up to two "
            "model calls at once (queries; texts on their way to the store, at a lower CPU "
            f"priority): two calls at once get {embed['two_calls_texts_per_second']:,.0f} texts/s "
            f"here = {embed['two_calls_limit_exchanges_per_second']:.1f} exchanges/s, a limit "
            "that leaves no CPU for anything else."
        )
        add("")
    if recall:
        add(
            f"## Recall in the library (ChromaStore, random unit vectors, dim {recall['dim']}, "
            f"k={recall['k']}, {recall['searches']} searches in one {recall['namespace_size']:,} "
            f"namespace; other processes used {fmt(recall['other_cpu_pct'], 0)}% meanwhile)"
        )
        add("")
        add("| measurement | total memories in the store | p50 ms | p99 ms |")
        add("|---|---|---|---|")
        add(
            f"| before growth | {recall['small_total']:,} | {recall['small_p50_ms']:.2f} "
            f"| {recall['small_p99_ms']:.2f} |"
        )
        add(
            f"| after growth | {recall['large_total']:,} | {recall['large_p50_ms']:.2f} "
            f"| {recall['large_p99_ms']:.2f} |"
        )
        add(
            f"| control store, interleaved | {recall['small_total']:,} "
            f"| {recall['control_p50_ms']:.2f} | {recall['control_p99_ms']:.2f} |"
        )
        add(
            f"| grown store, interleaved | {recall['large_total']:,} "
            f"| {recall['grown_interleaved_p50_ms']:.2f} "
            f"| {recall['grown_interleaved_p99_ms']:.2f} |"
        )
        add("")
        add(
            f"Ratio of p50s: {recall['ratio_p50_sequential']:.2f} before/after growth; "
            f"{recall['ratio_p50']:.2f} interleaved (same queries alternating between a store "
            "holding only this namespace and the grown one, free of drift: the target uses it). "
            f"Insert rate {recall['insert_memories_per_second']:,.0f} memories/s (vectors given)."
        )
    return "\n".join(lines)


def no_nan(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [no_nan(v) for v in value]
    return value


# -- the proxy comparison (``--proxy``): pass-through CPU and throughput side by side ----------

LITELLM = Path("/tmp/litellm-venv/bin/litellm")  # noqa: S108 - a throwaway venv
PEER_READY_TIMEOUT = 180.0


@dataclass
class ProxyTarget:
    """One server answering ``/v1/chat/completions`` for the comparison: the fake upstream
    itself (``direct``), a memgate, or a peer proxy; ``pid`` is the process whose CPU counts."""

    name: str
    url: str
    pid: int
    c1_ms: list[float] = field(default_factory=list)
    c1_errors: int = 0
    c1_cpu: float = 0.0
    c32_requests: int = 0
    c32_errors: int = 0
    c32_seconds: float = 0.0
    c32_cpu: float = 0.0
    c32_latency_p50: list[float] = field(default_factory=list)
    c32_latency_p99: list[float] = field(default_factory=list)


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
bodies = {}
%s
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, bodies[(counter %% #bodies) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%.1f %%.1f\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_script(bodies: Sequence[bytes], folder: Path) -> Path:
    lines = "\n".join(f"bodies[{i + 1}] = {json.dumps(b.decode())}" for i, b in enumerate(bodies))
    path = folder / "bench.lua"
    path.write_text(WRK_SCRIPT % lines)
    return path


def run_wrk(
    url: str, script: Path, concurrency: int, seconds: float
) -> tuple[int, int, float, float, float]:
    """(requests, errors, seconds, p50 ms, p99 ms) of one wrk run, one thread."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"{url}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    match = re.search(r"RESULT (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    n, err, us, p50, p99 = match.groups()
    return int(n), int(err), int(us) / 1e6, float(p50) / 1000.0, float(p99) / 1000.0


async def c1_round(
    target: ProxyTarget, client: httpx.AsyncClient, bodies: Sequence[bytes], count: int, first: int
) -> None:
    headers = {"content-type": "application/json"}
    for i in range(first, first + count):
        start = time.perf_counter()
        try:
            response = await client.post(
                f"{target.url}/v1/chat/completions",
                content=bodies[i % len(bodies)],
                headers=headers,
            )
        except httpx.HTTPError:
            target.c1_errors += 1
            continue
        elapsed = (time.perf_counter() - start) * 1000.0
        if response.status_code == 200:
            target.c1_ms.append(elapsed)
        else:
            target.c1_errors += 1


def start_litellm(
    executable: Path, up_port: int, port: int, root: Path, env: dict[str, str]
) -> Child:
    config = root / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{up_port}/v1\n"
        "      api_key: x\n"
    )
    peer_env = {
        **env,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download at start
        "LITELLM_TELEMETRY": "False",
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",  # loopback, no key
    }
    return start_child(
        "litellm",
        [
            str(executable),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        root / "litellm.log",
        peer_env,
    )


def proxy_run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Direct vs memgate pass-through (vs other memgate trees, vs a peer proxy), interleaved
    rounds: c=1 latency from this process, c=32 throughput from wrk, CPU of each server."""
    if shutil.which("wrk") is None:
        raise RuntimeError("--proxy needs wrk (apt-get install wrk)")
    rng = random.Random(args.seed)
    bodies = chat_bodies(question_texts(200, rng), stream=False)
    script = wrk_script(bodies, root)
    env = gateway_env(args.gateway_env)
    children: list[Child] = []
    results: dict[str, Any] = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git": git_state(),
        "config": {
            "rounds": args.rounds,
            "c1_per_round": args.c1_count,
            "c32_seconds": args.c32_seconds,
            "log_level": args.log_level,
            "gateway_env": list(args.gateway_env),
        },
    }
    try:
        up_port = free_port()
        upstream = start_child(
            "upstream",
            [sys.executable, str(Path(__file__).resolve()), "--serve-upstream", str(up_port)],
            root / "upstream.log",
            env,
        )
        children.append(upstream)
        wait_http(f"http://127.0.0.1:{up_port}/v1/models", upstream, 30.0, want_ready=False)
        targets = [ProxyTarget("direct", f"http://127.0.0.1:{up_port}", upstream.proc.pid)]
        trees = [("memgate", REPO, args.log_level)]
        for spec in args.also:
            name, _, rest = spec.partition("=")
            folder, _, level = rest.partition("@")
            trees.append((name, Path(folder).resolve(), level or args.log_level))
        for name, tree, level in trees:
            port = free_port()
            gw = start_child(
                name,
                [
                    sys.executable,
                    "-m",
                    "gateway.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(root / f"{name}-data"),
                    "--upstream-url",
                    f"http://127.0.0.1:{up_port}/v1",
                    "--upstream-api-key",
                    "x",
                    "--log-level",
                    level,
                ],
                root / f"{name}.log",
                {**env, "PYTHONPATH": str(tree)},
                cwd=tree,
            )
            children.append(gw)
            wait_http(f"http://127.0.0.1:{port}/readyz", gw, READY_TIMEOUT, want_ready=True)
            targets.append(ProxyTarget(name, f"http://127.0.0.1:{port}", gw.proc.pid))
        if args.peer == "litellm":
            if not args.litellm.exists():
                raise RuntimeError(
                    f"no LiteLLM at {args.litellm}: python -m venv VENV && "
                    "VENV/bin/pip install 'litellm[proxy]', then --litellm VENV/bin/litellm"
                )
            port = free_port()
            peer = start_litellm(args.litellm, up_port, port, root, env)
            children.append(peer)
            wait_http(
                f"http://127.0.0.1:{port}/health/liveliness",
                peer,
                PEER_READY_TIMEOUT,
                want_ready=False,
            )
            version = subprocess.run(
                [
                    str(args.litellm.parent / "python"),
                    "-c",
                    "import importlib.metadata as m; print(m.version('litellm'))",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            ).stdout.strip()
            results["peer_version"] = f"LiteLLM {version}"
            targets.append(ProxyTarget("litellm", f"http://127.0.0.1:{port}", peer.proc.pid))
        asyncio.run(proxy_phases(args, targets, bodies, script, children))
    finally:
        for child in reversed(children):
            stop_child(child)
    results["targets"] = {t.name: proxy_figures(t) for t in targets}
    return results


async def proxy_phases(
    args: argparse.Namespace,
    targets: list[ProxyTarget],
    bodies: Sequence[bytes],
    script: Path,
    children: list[Child],
) -> None:
    async with httpx.AsyncClient(timeout=30.0, trust_env=False) as client:
        log("warming up")
        for t in targets:
            await c1_round(t, client, bodies, 50, 0)
            t.c1_ms.clear()
            t.c1_errors = 0
            await asyncio.to_thread(run_wrk, t.url, script, 32, 3)
        counter = 0
        for r in range(args.rounds):
            order = targets[r % len(targets) :] + targets[: r % len(targets)]
            log(f"round {r + 1}/{args.rounds}: {', '.join(t.name for t in order)}")
            for t in order:
                for child in children:
                    child.check_alive()
                cpu0 = cpu_seconds(t.pid)
                await c1_round(t, client, bodies, args.c1_count, counter)
                t.c1_cpu += cpu_seconds(t.pid) - cpu0
                counter += args.c1_count
                cpu0 = cpu_seconds(t.pid)
                n, err, sec, p50, p99 = await asyncio.to_thread(
                    run_wrk, t.url, script, 32, args.c32_seconds
                )
                t.c32_cpu += cpu_seconds(t.pid) - cpu0
                t.c32_requests += n
                t.c32_errors += err
                t.c32_seconds += sec
                t.c32_latency_p50.append(p50)
                t.c32_latency_p99.append(p99)


def proxy_figures(t: ProxyTarget) -> dict[str, Any]:
    ok32 = t.c32_requests - t.c32_errors
    return {
        "c1_ok": len(t.c1_ms),
        "c1_errors": t.c1_errors,
        "c1_p50_ms": percentile(t.c1_ms, 50),
        "c1_p99_ms": percentile(t.c1_ms, 99),
        "c1_cpu_ms_per_request": 1000.0 * t.c1_cpu / max(1, len(t.c1_ms)),
        "c32_requests": t.c32_requests,
        "c32_errors": t.c32_errors,
        "c32_rps": ok32 / t.c32_seconds if t.c32_seconds else math.nan,
        "c32_cpu_ms_per_request": 1000.0 * t.c32_cpu / max(1, ok32),
        "c32_cpu_share_pct": 100.0 * t.c32_cpu / t.c32_seconds if t.c32_seconds else math.nan,
        "c32_p50_ms_median_of_rounds": percentile(t.c32_latency_p50, 50),
        "c32_p99_ms_median_of_rounds": percentile(t.c32_latency_p99, 50),
    }


def proxy_report(results: dict[str, Any]) -> str:
    m = results["machine"]
    cfg = results["config"]
    figures: dict[str, Any] = results["targets"]
    direct = figures["direct"]
    lines = [
        "# memgate pass-through vs direct" + (" vs a peer" if "litellm" in figures else ""),
        "",
        f"- machine: nproc {m['nproc']}, CPU {m['cpu_model']}, Python {m['python']}; load average "
        f"at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}",
        f"- run: {results['started']}, repo at {results['git']}, {cfg['rounds']} interleaved "
        f"rounds (rotated order) of {cfg['c1_per_round']} sequential requests (c=1, this "
        f"process, httpx) "
        f"and {cfg['c32_seconds']:g} s of wrk at c=32 (1 thread), per server; gateways at log "
        f"level {cfg['log_level']} unless named otherwise"
        + (f"; peer {results['peer_version']}" if results.get("peer_version") else ""),
        "- CPU: the server process's user+system time (memgate's store process included) over "
        "its phases, divided by the requests answered; `direct` is the fake upstream's own",
        "",
        "| server | c=1 p50 ms | c=1 p99 ms | added p50 | added p99 | c=32 req/s | x direct "
        "| CPU ms/request c=32 | CPU ms/request c=1 | c=32 p50 / p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in figures.items():
        is_direct = name == "direct"
        a50 = "" if is_direct else fmt(f["c1_p50_ms"] - direct["c1_p50_ms"], 2)
        a99 = "" if is_direct else fmt(f["c1_p99_ms"] - direct["c1_p99_ms"], 2)
        lines.append(
            f"| {name} | {fmt(f['c1_p50_ms'], 2)} | {fmt(f['c1_p99_ms'], 2)} | {a50} | {a99} "
            f"| {fmt(f['c32_rps'], 0)} | {fmt(f['c32_rps'] / direct['c32_rps'], 3)} "
            f"| {fmt(f['c32_cpu_ms_per_request'], 3)} | {fmt(f['c1_cpu_ms_per_request'], 3)} "
            f"| {fmt(f['c32_p50_ms_median_of_rounds'], 1)} "
            f"/ {fmt(f['c32_p99_ms_median_of_rounds'], 1)} "
            f"| {f['c1_errors'] + f['c32_errors']} |"
        )
    if "litellm" in figures:
        peer = figures["litellm"]
        lines.append("")
        for name, f in figures.items():
            if name in ("direct", "litellm"):
                continue
            lines.append(
                f"- {name} / LiteLLM, same run: c=32 throughput "
                f"{f['c32_rps'] / peer['c32_rps']:.1f}x, CPU per request "
                f"{peer['c32_cpu_ms_per_request'] / f['c32_cpu_ms_per_request']:.1f}x less, "
                f"added p50 at c=1 {fmt(f['c1_p50_ms'] - direct['c1_p50_ms'], 2)} vs "
                f"{fmt(peer['c1_p50_ms'] - direct['c1_p50_ms'], 2)} ms"
            )
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def gateway_env(extra: Sequence[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMGATE_")}
    env["MEMGATE_SERVER_SHUTDOWN_FLUSH_SECONDS"] = "5"  # a quick stop when interrupted
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("MEMGATE_"):
            raise SystemExit(f"--gateway-env wants MEMGATE_KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def git_state() -> str:
    """The commit of this repository, and how many files of gateway/ and memory/ differ."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "gateway", "memory"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (f" + {len(dirty)} changed files in gateway/ memory/" if dirty else "")


def embedder_threads(extra_env: Sequence[str]) -> int:
    """The gateway's ``embedder.threads`` as set by ``--gateway-env`` (0: torch's default)."""
    for item in extra_env:
        key, _, value = item.partition("=")
        if key == "MEMGATE_EMBEDDER_THREADS" and value.strip().isdigit():
            return int(value)
    return 0


def run(
    cfg: Config, extra_env: Sequence[str], root: Path, gateway_src: Path | None
) -> dict[str, Any]:
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "config": {
            **cfg.__dict__,
            "gateway_env": list(extra_env),
            "gateway_src": str(gateway_src) if gateway_src else None,
        },
        "git": git_state(),
    }
    children: list[Child] = []
    try:
        up_port, gw_port = free_port(), free_port()
        while gw_port == up_port:
            gw_port = free_port()
        env = gateway_env(extra_env)
        gw_env = dict(env)
        if gateway_src is not None:
            gw_env["PYTHONPATH"] = str(gateway_src)
        upstream = start_child(
            "upstream",
            [sys.executable, str(Path(__file__).resolve()), "--serve-upstream", str(up_port)],
            root / "upstream.log",
            env,
        )
        children.append(upstream)
        gateway = start_child(
            "gateway",
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(gw_port),
                "--data-dir",
                str(root / "gateway-data"),
                "--upstream-url",
                f"http://127.0.0.1:{up_port}/v1",
                "--upstream-api-key",
                "x",
                "--log-level",
                "warning",
            ],
            root / "gateway.log",
            gw_env,
            cwd=gateway_src or REPO,
        )
        children.append(gateway)
        upstream_url = f"http://127.0.0.1:{up_port}"
        gateway_url = f"http://127.0.0.1:{gw_port}"
        wait_http(f"{upstream_url}/v1/models", upstream, 30.0, want_ready=False)
        ready_s = wait_http(f"{gateway_url}/readyz", gateway, READY_TIMEOUT, want_ready=True)
        log(f"gateway ready after {ready_s:.1f} s")
        results["gateway_ready_seconds"] = ready_s
        meter = CpuMeter(
            {"client": None, "gateway": gateway.proc.pid, "upstream": upstream.proc.pid}
        )
        before = meter.snapshot()
        t0 = time.perf_counter()
        http = asyncio.run(http_phases(cfg, upstream_url, gateway_url, meter, children))
        whole = CpuMeter.delta(before, meter.snapshot())
        results["other_cpu_pct"] = 100.0 * whole.get("other", math.nan) / (time.perf_counter() - t0)
    finally:
        for child in reversed(children):
            stop_child(child)
    results["http"] = {
        "preload": http.preload,
        "phases": {k: v.as_json() for k, v in http.phases.items()},
        "streams": {k: v.as_json() for k, v in http.streams.items()},
        "write": http.write,
        "namespace_size": http.namespace_size,
        "drain_between_rounds_s": http.drain_between_rounds_s,
    }
    log("embedder throughput")
    results["embedder"] = embedder_phase(cfg, extra_env)
    log("recall in the library")
    results["recall"] = recall_phase(cfg, root)
    results["wall_seconds"] = time.perf_counter() - started
    results["targets"] = targets_table(results)
    return results


def _on_sigterm(signum: int, frame: object) -> None:
    del frame
    log("terminated: cleaning up")
    sys.exit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Load benchmark for memgate (added latency, throughput, write path, "
        "embedder, recall scaling); prints a Markdown report."
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write figures")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the generated texts")
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="MEMGATE_KEY=VALUE",
        help="a setting for the gateway, e.g. MEMGATE_EMBEDDER_THREADS=1 (repeatable)",
    )
    parser.add_argument(
        "--gateway-src",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the gateway from this source tree (a folder holding gateway/ and memory/), "
        "e.g. a patched copy; default: this repository",
    )
    proxy = parser.add_argument_group(
        "pass-through comparison (--proxy): direct vs memgate vs other trees vs a peer proxy"
    )
    proxy.add_argument(
        "--proxy", action="store_true", help="only the pass-through comparison (needs wrk)"
    )
    proxy.add_argument(
        "--peer", choices=("litellm",), default=None, help="add a peer proxy to the comparison"
    )
    proxy.add_argument(
        "--litellm",
        type=Path,
        default=LITELLM,
        metavar="EXE",
        help=f"the LiteLLM executable, from a throwaway venv (default {LITELLM})",
    )
    proxy.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=DIR[@LEVEL]",
        help="another memgate from the source tree DIR (e.g. a git worktree of an older "
        "commit), optionally at another log level (repeatable)",
    )
    proxy.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    proxy.add_argument(
        "--c1-count", type=int, default=200, help="c=1 requests a round and server (200)"
    )
    proxy.add_argument(
        "--c32-seconds", type=float, default=10.0, help="wrk seconds a round and server (10)"
    )
    proxy.add_argument(
        "--log-level", default="info", help="the gateways' log level (default info: access log on)"
    )
    parser.add_argument("--serve-upstream", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream is not None:
        serve_upstream(args.serve_upstream)
        return 0
    if args.proxy:
        if args.quick:
            args.rounds, args.c1_count, args.c32_seconds = 2, 50, 3.0
        signal.signal(signal.SIGTERM, _on_sigterm)
        root = Path(tempfile.mkdtemp(prefix="memgate-proxy-"))
        try:
            figures = proxy_run(args, root)
        except KeyboardInterrupt:
            log("interrupted")
            return 130
        except (RuntimeError, httpx.HTTPError, subprocess.SubprocessError) as exc:
            log(f"error: {exc}")
            return 1
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(proxy_report(figures))
        if args.json is not None:
            args.json.write_text(json.dumps(no_nan(figures), indent=2) + "\n")
        return 0

    # A SIGTERM unwinds like Ctrl-C, so that the processes and temp folders are cleaned up.
    signal.signal(signal.SIGTERM, _on_sigterm)
    cfg = Config.make(args.quick, args.seed)
    root = Path(tempfile.mkdtemp(prefix="memgate-load-"))
    try:
        results = run(cfg, args.gateway_env, root, args.gateway_src)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except (RuntimeError, httpx.HTTPError) as exc:
        log(f"error: {exc}")
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(report(results))
    if args.json is not None:
        args.json.write_text(json.dumps(no_nan(results), indent=2) + "\n")
        log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
