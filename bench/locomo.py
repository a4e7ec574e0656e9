#!/usr/bin/env python3
"""LoCoMo turn-level evidence recall@k for memgate, next to a BM25 baseline computed here.

Usage::

    python bench/locomo.py PATH_TO_LOCOMO_JSON [--url http://host:port] [--k 5,10,25,50]
                           [--keep] [--json OUT] [--grid KEY=V1,V2 ...] [--misses CATEGORY]

Every conversation goes into its own namespace (``locomo-<run-id>-<sample_id>``), one memory
per turn: ``{speaker} said, "{text}"`` plus `` and shared {blip_caption}`` where the turn has a
caption, metadata ``{"dia_id", "session"}``, ``created_at`` from the session's date (plus the
turn's index in seconds, so that order within a session is kept). Each question is asked as-is
through ``POST /v1/memory/search`` with k = the largest k; recall@k of a question is the share
of its evidence turn ids found in the top k (an id naming no turn is a miss; a question without
evidence counts 1). The means are reported overall (categories 1-5) and per category.

Without ``--url`` the script starts ``memgate serve`` itself on a free loopback port with a
temporary data folder, and stops it at the end. Its namespaces are erased at the end, even on
error, unless ``--keep`` is given (with a gateway it started, ``--keep`` also keeps the data
folder and prints its path).

**Cross-validation.** With two or more conversations the script also prints the
leave-one-conversation-out figure: each conversation in turn is held out, the choice (of the
``--grid`` configurations) that scores the best R@10 on the other conversations' questions is
made, and the held-out conversation is scored with it; the figure is the mean of the held-out
folds (per category: pooled over the held-out questions). ``--grid KEY=V1,V2`` (repeatable,
keys of ``[recall]``) runs the gateway once per combination, with ``MEMGATE_RECALL_<KEY>``
overrides, the first value of each key first: that first combination is the "plain" figure.
Keys that change what is indexed (``INDEX_KEYS``) get a fresh data folder and a reload; the
others reuse the loaded one. Without ``--grid`` there is one configuration (the defaults) and
the cross-validated figure is the plain one averaged by conversation: nothing was chosen.

``--misses CATEGORY`` (a name such as ``multi-hop``, or its number) prints, for the plain
configuration, every question of that category with evidence missing from the top
``--misses-k`` (default 10): the question, each evidence turn with its rank, and the best
retrieved turns.

The data set is CC BY-NC 4.0 (Maharana et al., ACL 2024): read it from where it lies, never
copy it into the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from loadbench.processes import free_port, stop_process, tail, wait_ready
from stats import percentile

CATEGORIES: dict[int, str] = {
    1: "multi-hop",
    2: "temporal",
    3: "open-domain",
    4: "single-hop",
    5: "adversarial",
}
# LoCoMo paper (Maharana et al., ACL 2024), Table 3: DRAGON over dialog turns, all 10
# conversations, overall recall@k in percent.
DRAGON_PUBLISHED: dict[int, float] = {5: 56.7, 10: 66.2, 25: 76.7, 50: 82.7}

MAX_BATCH = 1000  # the API's limit of memories per add call
MAX_SEARCH_K = 100  # the API's limit of k per search
READY_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0
NAMESPACE_CHARS = re.compile(r"[^A-Za-z0-9._:@-]")
SESSION_KEY = re.compile(r"session_(\d+)")
DATE_TIME = re.compile(
    r"^\s*(\d{1,2}):(\d{2})\s*([ap])\.?\s*m\.?\s+on\s+(\d{1,2})\s+([A-Za-z]+)\.?,?\s+(\d{4})\s*$",
    re.IGNORECASE,
)
MONTHS = {
    name: i + 1
    for i, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the report."""
    print(message, file=sys.stderr, flush=True)


# -- the data set ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    dia_id: str
    session: int
    content: str
    created_at: str | None


@dataclass(frozen=True)
class Question:
    text: str
    category: int
    evidence: tuple[str, ...]


@dataclass
class Conversation:
    sample_id: str
    turns: list[Turn]
    questions: list[Question]
    bad_dates: int = 0

    @property
    def dia_ids(self) -> set[str]:
        return {t.dia_id for t in self.turns}


def parse_session_date(text: str) -> datetime | None:
    """``"1:56 pm on 8 May, 2023"`` as an aware UTC datetime; None if it does not parse."""
    match = DATE_TIME.match(text or "")
    if match is None:
        return None
    hour, minute, half, day, month_name, year = match.groups()
    month = MONTHS.get(month_name[:3].lower())
    if month is None:
        return None
    hour_24 = int(hour) % 12 + (12 if half.lower() == "p" else 0)
    try:
        return datetime(int(year), month, int(day), hour_24, int(minute), tzinfo=UTC)
    except ValueError:
        return None


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def turn_content(turn: dict[str, Any]) -> str:
    content = f'{turn.get("speaker", "")} said, "{turn.get("text", "")}"'
    caption = turn.get("blip_caption")
    if isinstance(caption, str) and caption.strip():
        content += f" and shared {caption}"
    return content


def split_evidence(raw: Any) -> tuple[str, ...]:
    """Evidence ids of a qa item; malformed entries such as ``"D8:6; D9:17"`` are split on
    ``;``. Ids that name no turn are kept: they count as misses."""
    items = raw if isinstance(raw, list) else ([raw] if raw else [])
    out: list[str] = []
    for item in items:
        out.extend(part.strip() for part in str(item).split(";") if part.strip())
    return tuple(out)


def load_conversations(path: Path) -> list[Conversation]:
    with path.open(encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of conversation objects")
    conversations: list[Conversation] = []
    for index, sample in enumerate(data):
        sample_id = str(sample.get("sample_id") or f"conv{index}")
        conv = sample["conversation"]
        sessions = sorted(
            (int(m.group(1)), key)
            for key in conv
            if (m := SESSION_KEY.fullmatch(key)) and isinstance(conv[key], list)
        )
        turns: list[Turn] = []
        bad_dates = 0
        for number, key in sessions:
            start = parse_session_date(str(conv.get(f"{key}_date_time", "")))
            if start is None:
                bad_dates += 1
            for offset, turn in enumerate(conv[key]):
                stamp = rfc3339(start + timedelta(seconds=offset)) if start else None
                turns.append(Turn(str(turn["dia_id"]), number, turn_content(turn), stamp))
        questions = [
            Question(
                text=str(qa.get("question", "")),
                category=int(qa.get("category", 0)),
                evidence=split_evidence(qa.get("evidence")),
            )
            for qa in sample.get("qa", [])
        ]
        conversations.append(Conversation(sample_id, turns, questions, bad_dates))
    return conversations


def quick(conversation: Conversation, questions: int) -> Conversation:
    """``conversation`` with its first ``questions`` questions only (``--quick``)."""
    return dataclasses.replace(conversation, questions=conversation.questions[:questions])


def namespaces_for(run_id: str, conversations: Sequence[Conversation]) -> list[str]:
    """``locomo-<run-id>-<sample_id>``, made legal (1-128 of [A-Za-z0-9._:@-]) and unique."""
    out: list[str] = []
    seen: set[str] = set()
    for index, conv in enumerate(conversations):
        name = f"locomo-{run_id}-{NAMESPACE_CHARS.sub('-', conv.sample_id)}"[:128]
        if name in seen:
            name = f"{name[:110]}-{index}"
        seen.add(name)
        out.append(name)
    return out


# -- the metric ------------------------------------------------------------------------------


def recall_at(evidence: Sequence[str], retrieved: Sequence[str], k: int, known: set[str]) -> float:
    """Share of ``evidence`` among the first ``k`` retrieved turn ids; 1 without evidence."""
    if not evidence:
        return 1.0
    top = set(retrieved[:k])
    return sum(1 for e in evidence if e in known and e in top) / len(evidence)


@dataclass
class Scores:
    """recall@k per question, grouped by category."""

    ks: list[int]
    by_category: dict[int, list[dict[int, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def add(self, question: Question, retrieved: Sequence[str], known: set[str]) -> None:
        self.by_category[question.category].append(
            {k: recall_at(question.evidence, retrieved, k, known) for k in self.ks}
        )

    def _mean(self, rows: list[dict[int, float]]) -> dict[int, float]:
        return {k: (sum(r[k] for r in rows) / len(rows) if rows else math.nan) for k in self.ks}

    def overall(self) -> dict[int, float]:
        return self._mean([r for c in CATEGORIES for r in self.by_category.get(c, [])])

    def overall_count(self) -> int:
        return sum(len(self.by_category.get(c, [])) for c in CATEGORIES)

    def per_category(self) -> dict[int, tuple[int, dict[int, float]]]:
        return {c: (len(rows), self._mean(rows)) for c, rows in sorted(self.by_category.items())}

    def as_json(self) -> dict[str, Any]:
        return {
            "overall": {
                "questions": self.overall_count(),
                "recall": {str(k): v for k, v in self.overall().items()},
            },
            "per_category": {
                str(c): {
                    "name": CATEGORIES.get(c, "unknown"),
                    "questions": n,
                    "recall": {str(k): v for k, v in means.items()},
                }
                for c, (n, means) in self.per_category().items()
            },
        }


# -- BM25 ------------------------------------------------------------------------------------

_STOPWORD_TEXT = """
a about an and are as at be been but by can could did do does for from had has have he her hers
him his how i if in into is it its me my of on or our she so than that the their them then there
these they this those to too was we were what when where which who whom why will with would you
your
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
TOKEN = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    return [t for t in TOKEN.findall(text.lower()) if t not in STOPWORDS]


class BM25:
    """Okapi BM25 (k1=1.2, b=0.75, idf = ln(1 + (N - df + 0.5) / (df + 0.5)))."""

    def __init__(self, docs: Sequence[str], *, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        tokenized = [tokenize(d) for d in docs]
        self.n_docs = len(tokenized)
        self.lengths = [len(t) for t in tokenized]
        self.avgdl = (sum(self.lengths) / self.n_docs) if self.n_docs else 0.0
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for index, tokens in enumerate(tokenized):
            for term, tf in Counter(tokens).items():
                self.postings[term].append((index, tf))
        self.idf = {
            term: math.log(1.0 + (self.n_docs - len(p) + 0.5) / (len(p) + 0.5))
            for term, p in self.postings.items()
        }

    def search(self, query: str, k: int) -> list[int]:
        """Indices of the best ``k`` documents with a positive score, best first (ties: the
        earlier document first)."""
        scores: dict[int, float] = defaultdict(float)
        for term in tokenize(query):
            postings = self.postings.get(term)
            if not postings:
                continue
            idf = self.idf[term]
            for index, tf in postings:
                norm = self.k1 * (1.0 - self.b + self.b * self.lengths[index] / self.avgdl)
                scores[index] += idf * tf * (self.k1 + 1.0) / (tf + norm)
        ranked = sorted((i for i, s in scores.items() if s > 0), key=lambda i: (-scores[i], i))
        return ranked[:k]


# -- the gateway -----------------------------------------------------------------------------


class ApiError(RuntimeError):
    pass


def check(response: httpx.Response) -> Any:
    if response.status_code != 200:
        raise ApiError(
            f"{response.request.method} {response.request.url} -> HTTP {response.status_code}: "
            f"{response.text[:2000]}"
        )
    return response.json()


def serve_command(port: int, data_dir: Path, upstream: str = "http://127.0.0.1:9/v1") -> list[str]:
    script = Path(sys.executable).with_name("memgate")
    base = [str(script)] if script.is_file() else [sys.executable, "-m", "gateway.cli"]
    return [
        *base,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--upstream-url",
        upstream,
        "--log-level",
        "warning",
    ]


def gateway_ready(
    url: str,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    logfile: Path | None = None,
) -> float:
    """Poll ``/readyz`` until it answers 200; seconds waited."""

    def alive() -> None:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"memgate serve exited with code {proc.returncode} before it was ready; "
                f"its log:\n{tail(logfile, 40) if logfile else ''}"
            )

    return wait_ready(
        url + "/readyz", timeout, alive=alive, logfile=logfile, trust_env=proc is None
    )


@contextmanager
def local_gateway(
    keep: bool,
    *,
    data_dir: Path | None = None,
    env: dict[str, str] | None = None,
    upstream: str = "http://127.0.0.1:9/v1",
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Start ``memgate serve`` on a free loopback port, with ``env`` added to its environment,
    on ``data_dir`` (default: a temporary folder of its own, removed at the end unless
    ``keep``); yield its URL and startup facts; stop it (SIGTERM, then SIGKILL after 30 s)."""
    root = Path(tempfile.mkdtemp(prefix="memgate-locomo-"))
    logfile = root / "gateway.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = serve_command(port, data_dir or root / "data", upstream)
    log(f"starting: {' '.join(command)} {' '.join(f'{k}={v}' for k, v in (env or {}).items())}")
    info: dict[str, Any] = {"command": command, "env": dict(env or {})}
    proc: subprocess.Popen[bytes] | None = None
    try:
        with logfile.open("wb") as out:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop it after cleaning up
                env={**os.environ, **(env or {})},
            )
        info["ready_seconds"] = gateway_ready(url, READY_TIMEOUT, proc, logfile)
        log(f"memgate ready on {url} after {info['ready_seconds']:.1f} s")
        yield url, info
    finally:
        if proc is not None:
            stop_process("memgate", proc, logfile, timeout=STOP_TIMEOUT, log=log, lines=40)
        if keep:
            log(f"--keep: the gateway's folder is kept at {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def add_recall_settings(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE``: a ``[recall]`` setting for the gateway a check starts."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [recall] setting for the gateway started here (MEMGATE_RECALL_KEY)",
    )


def recall_env(items: Sequence[str]) -> dict[str, str]:
    """The gateway's environment for ``--set`` items."""
    env = {}
    for item in items:
        key, _, value = item.partition("=")
        env[f"MEMGATE_RECALL_{key.strip().upper()}"] = value.strip()
    return env


# -- the run ---------------------------------------------------------------------------------


@dataclass
class RunStats:
    load_seconds: float = 0.0
    loaded: int = 0
    load_calls: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    short_results: int = 0  # searches that returned fewer hits than asked for
    unmapped_hits: int = 0  # hits without a dia_id in their metadata
    load_wall: float = 0.0
    search_wall: float = 0.0


def load_conversation(
    client: httpx.Client, namespace: str, conv: Conversation, batch: int, stats: RunStats
) -> None:
    for start in range(0, len(conv.turns), batch):
        chunk = conv.turns[start : start + batch]
        memories: list[dict[str, Any]] = []
        for turn in chunk:
            memory: dict[str, Any] = {
                "content": turn.content,
                "metadata": {"dia_id": turn.dia_id, "session": turn.session},
            }
            if turn.created_at is not None:
                memory["created_at"] = turn.created_at
            memories.append(memory)
        began = time.perf_counter()
        response = client.post(
            "/v1/memory/memories", params={"namespace": namespace}, json={"memories": memories}
        )
        elapsed = time.perf_counter() - began
        body = check(response)
        ids = body.get("ids")
        if not isinstance(ids, list) or len(ids) != len(chunk):
            raise ApiError(f"add returned {len(ids or [])} ids for {len(chunk)} memories")
        stats.load_seconds += elapsed
        stats.loaded += len(chunk)
        stats.load_calls += 1


def search(client: httpx.Client, namespace: str, query: str, k: int, stats: RunStats) -> list[str]:
    """The dia_ids of the top ``k`` memories for ``query``, best first."""
    began = time.perf_counter()
    response = client.post(
        "/v1/memory/search", params={"namespace": namespace}, json={"query": query, "k": k}
    )
    stats.latencies_ms.append((time.perf_counter() - began) * 1000.0)
    hits = check(response).get("data", [])
    if len(hits) < k:
        stats.short_results += 1
    out: list[str] = []
    for hit in hits:
        dia_id = (hit.get("metadata") or {}).get("dia_id")
        if isinstance(dia_id, str):
            out.append(dia_id)
        else:
            stats.unmapped_hits += 1
    return out


def erase(client: httpx.Client, namespaces: Sequence[str]) -> None:
    for namespace in namespaces:
        try:
            check(client.delete(f"/v1/memory/namespaces/{namespace}"))
        except (ApiError, httpx.HTTPError) as exc:
            log(f"warning: could not erase namespace {namespace}: {exc}")


Retrieved = list[list[list[str]]]  # [conversation][question] -> dia_ids, best first


def run(
    url: str,
    conversations: Sequence[Conversation],
    namespaces: Sequence[str],
    k_max: int,
    *,
    load: bool,
    erase_after: bool,
    batch: int,
    trust_env: bool,
    stats: RunStats,
) -> Retrieved:
    """Load the conversations (``load``) and ask every question; what each one retrieved."""
    retrieved: Retrieved = []
    created: list[str] = []
    timeout = httpx.Timeout(600.0, connect=10.0)
    with httpx.Client(base_url=url, timeout=timeout, trust_env=trust_env) as client:
        try:
            if load:
                began = time.perf_counter()
                for namespace, conv in zip(namespaces, conversations, strict=True):
                    created.append(namespace)
                    log(f"loading {conv.sample_id}: {len(conv.turns)} turns into {namespace}")
                    load_conversation(client, namespace, conv, batch, stats)
                stats.load_wall += time.perf_counter() - began
            began = time.perf_counter()
            for namespace, conv in zip(namespaces, conversations, strict=True):
                log(f"searching {conv.sample_id}: {len(conv.questions)} questions")
                retrieved.append(
                    [
                        search(client, namespace, q.text, k_max, stats) if q.text.strip() else []
                        for q in conv.questions
                    ]
                )
            stats.search_wall += time.perf_counter() - began
        finally:
            if erase_after:
                erase(client, namespaces)
            elif created:
                log(f"namespaces kept: {', '.join(created)}")
    return retrieved


def bm25_retrieved(conversations: Sequence[Conversation], k_max: int) -> Retrieved:
    out: Retrieved = []
    for conv in conversations:
        index = BM25([t.content for t in conv.turns])
        out.append(
            [[conv.turns[i].dia_id for i in index.search(q.text, k_max)] for q in conv.questions]
        )
    return out


def score(
    conversations: Sequence[Conversation], retrieved: Retrieved, ks: list[int], only: int | None
) -> Scores:
    """The scores of every conversation (or of conversation number ``only``)."""
    scores = Scores(ks)
    for index, (conv, found) in enumerate(zip(conversations, retrieved, strict=True)):
        if only is None or index == only:
            known = conv.dia_ids
            for question, hits in zip(conv.questions, found, strict=True):
                scores.add(question, hits, known)
    return scores


# -- the grid and cross-validation -----------------------------------------------------------

# ``[recall]`` keys that change what is stored or indexed: a configuration that changes one
# is loaded into a data folder of its own.
INDEX_KEYS = frozenset({"pair_gap_seconds", "segment_weight"})


@dataclass(frozen=True)
class Config:
    values: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values) or "defaults"

    @property
    def env(self) -> dict[str, str]:
        return {f"MEMGATE_RECALL_{k.upper()}": v for k, v in self.values}

    @property
    def index_values(self) -> tuple[tuple[str, str], ...]:
        return tuple((k, v) for k, v in self.values if k in INDEX_KEYS)


def parse_grid(specs: Sequence[str]) -> list[Config]:
    """``["fusion_k=5,60", "lexical=true,false"]`` -> every combination, first values first."""
    axes: list[list[tuple[str, str]]] = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[a-z_]+", key) or not values.strip():
            raise argparse.ArgumentTypeError(f"--grid wants KEY=V1,V2: {spec!r}")
        axes.append([(key, v.strip()) for v in values.split(",") if v.strip()])
    return [Config(tuple(combo)) for combo in itertools.product(*axes)]


@dataclass
class Fold:
    held_out: str
    chosen: str
    tuned: float  # the chosen configuration's R@10 on the other conversations
    held: Scores


def cross_validate(
    conversations: Sequence[Conversation],
    configs: Sequence[Config],
    results: Sequence[Retrieved],
    ks: list[int],
    tune_k: int = 10,
) -> tuple[list[Fold], Scores]:
    """Leave one conversation out: for each conversation, the configuration with the best
    R@``tune_k`` (over the other conversations' questions; ties: the earlier one) scores it.
    The folds, and every held-out question's scores pooled."""
    folds: list[Fold] = []
    pooled = Scores(ks)
    for held in range(len(conversations)):
        best, best_value = 0, -1.0
        for index, retrieved in enumerate(results):
            train = Scores([tune_k])
            for other in range(len(conversations)):
                if other != held:
                    train.by_category.update(
                        {
                            c: train.by_category[c] + rows
                            for c, rows in score(
                                conversations, retrieved, [tune_k], other
                            ).by_category.items()
                        }
                    )
            value = train.overall()[tune_k]
            if value > best_value + 1e-12:
                best, best_value = index, value
        held_scores = score(conversations, results[best], ks, held)
        for c, rows in held_scores.by_category.items():
            pooled.by_category[c].extend(rows)
        folds.append(
            Fold(conversations[held].sample_id, configs[best].label, best_value, held_scores)
        )
    return folds, pooled


# -- misses ----------------------------------------------------------------------------------


def category_number(text: str) -> int:
    for number, name in CATEGORIES.items():
        if text.strip().lower() in {name, str(number)}:
            return number
    raise argparse.ArgumentTypeError(
        f"--misses wants one of {', '.join(CATEGORIES.values())} (or 1-5): {text!r}"
    )


def misses(
    conversations: Sequence[Conversation],
    retrieved: Retrieved,
    category: int,
    k: int,
    shown: int = 5,
) -> str:
    """Every question of ``category`` with evidence outside the top ``k``."""
    lines = [f"## Misses: {CATEGORIES[category]} (evidence outside the top {k})", ""]
    count = 0
    for conv, found in zip(conversations, retrieved, strict=True):
        text = {t.dia_id: t.content for t in conv.turns}
        for question, hits in zip(conv.questions, found, strict=True):
            if question.category != category:
                continue
            if recall_at(question.evidence, hits, k, conv.dia_ids) >= 1.0:
                continue
            count += 1
            lines.append(f"### {conv.sample_id}: {question.text}")
            for dia_id in question.evidence:
                where = hits.index(dia_id) + 1 if dia_id in hits else None
                mark = "ok" if where is not None and where <= k else "MISS"
                place = f"rank {where}" if where else f"not in the top {len(hits)}"
                lines.append(f"- {mark} {dia_id} ({place}): {text.get(dia_id, '(no such turn)')}")
            lines.append("  retrieved:")
            lines.extend(f"  {i}. {d}: {text.get(d, '?')}" for i, d in enumerate(hits[:shown], 1))
            lines.append("")
    lines.append(f"{count} question(s) with a miss.")
    return "\n".join(lines)


# -- the report ------------------------------------------------------------------------------


def pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:.1f}"


def report(
    memgate: Scores,
    bm25: Scores,
    stats: RunStats,
    conversations: Sequence[Conversation],
    *,
    ks: list[int],
    extra: dict[str, Any],
    label: str = "defaults",
) -> str:
    lines: list[str] = []
    n_overall = memgate.overall_count()
    lines.append(
        f"## LoCoMo turn-level evidence recall@k (overall, categories 1-5, {n_overall} questions)"
    )
    lines.append("")
    lines.append("| Retriever | " + " | ".join(f"R@{k}" for k in ks) + " |")
    lines.append("|---|" + "---:|" * len(ks))
    for name, scores in ((f"memgate ({label})", memgate), ("BM25 (computed here)", bm25)):
        overall = scores.overall()
        lines.append(f"| {name} | " + " | ".join(pct(overall[k]) for k in ks) + " |")
    dragon = " | ".join(f"{DRAGON_PUBLISHED[k]:.1f}" if k in DRAGON_PUBLISHED else "-" for k in ks)
    lines.append(f"| DRAGON (published) | {dragon} |")
    lines.append("")
    lines.append(
        "DRAGON: LoCoMo paper, Table 3, all 10 conversations; memgate and BM25: this file's "
        f"{len(conversations)} conversation(s)."
    )
    lines.append("")

    cat_ks = ks[:2]
    lines.append("## Per category")
    lines.append("")
    header = ["Category", "Questions"]
    header += [f"memgate R@{k}" for k in cat_ks] + [f"BM25 R@{k}" for k in cat_ks]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---|" + "---:|" * (len(header) - 1))
    mg_cats, bm_cats = memgate.per_category(), bm25.per_category()
    for cat, (count, means) in mg_cats.items():
        bm_means = bm_cats[cat][1]
        name = f"{cat} {CATEGORIES.get(cat, 'unknown (not in overall)')}"
        cells = [name, str(count)]
        cells += [pct(means[k]) for k in cat_ks] + [pct(bm_means[k]) for k in cat_ks]
        lines.append("| " + " | ".join(cells) + " |")
    mg_all, bm_all = memgate.overall(), bm25.overall()
    cells = ["overall (1-5)", str(n_overall)]
    cells += [pct(mg_all[k]) for k in cat_ks] + [pct(bm_all[k]) for k in cat_ks]
    lines.append("| " + " | ".join(cells) + " |")
    lines.append("")

    n_turns = sum(len(c.turns) for c in conversations)
    n_questions = sum(len(c.questions) for c in conversations)
    rate = stats.loaded / stats.load_seconds if stats.load_seconds > 0 else math.nan
    lat = stats.latencies_ms
    lines.append("## Run")
    lines.append("")
    lines.append(
        f"- load: {stats.loaded} memories in {stats.load_calls} call(s), "
        f"{stats.load_seconds:.1f} s -> {rate:.1f} memories/s"
    )
    lines.append(
        f"- search: {len(lat)} calls (k={max(ks)}, sequential), "
        f"p50 {percentile(lat, 50):.1f} ms, p99 {percentile(lat, 99):.1f} ms, "
        f"mean {(sum(lat) / len(lat) if lat else math.nan):.1f} ms; "
        f"{stats.short_results} returned fewer than {max(ks)} hits"
    )
    if stats.unmapped_hits:
        lines.append(f"- hits without a dia_id in metadata: {stats.unmapped_hits}")
    lines.append(
        f"- data: {len(conversations)} conversations, {n_turns} turns, {n_questions} questions"
    )
    bad_dates = sum(c.bad_dates for c in conversations)
    if bad_dates:
        lines.append(
            f"- sessions whose date did not parse (stored without created_at): {bad_dates}"
        )
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in extra.items())
    lines.append(f"- wall time: {timing}")
    return "\n".join(lines)


def no_nan(value: Any) -> Any:
    """``value`` with every NaN float replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [no_nan(v) for v in value]
    return value


def cv_report(
    conversations: Sequence[Conversation],
    configs: Sequence[Config],
    results: Sequence[Retrieved],
    folds: Sequence[Fold],
    pooled: Scores,
    *,
    ks: list[int],
) -> str:
    cv_ks = [k for k in ks if k in (5, 10)] or ks[:2]
    lines = ["## Configurations (each scored on every conversation)", ""]
    lines.append("| Configuration | " + " | ".join(f"R@{k}" for k in cv_ks) + " |")
    lines.append("|---|" + "---:|" * len(cv_ks))
    for config, retrieved in zip(configs, results, strict=True):
        overall = score(conversations, retrieved, cv_ks, None).overall()
        lines.append(f"| {config.label} | " + " | ".join(pct(overall[k]) for k in cv_ks) + " |")
    lines.append("")
    lines.append("## Cross-validated (leave one conversation out; tuned on R@10 of the others)")
    lines.append("")
    header = "| Held out | Chosen | Tuned R@10 | " + " | ".join(f"R@{k}" for k in cv_ks)
    lines.append(header + " | " + " | ".join(f"plain R@{k}" for k in cv_ks) + " |")
    lines.append("|---|---|---:|" + "---:|" * (2 * len(cv_ks)))
    plain_folds = [score(conversations, results[0], cv_ks, i).overall() for i in range(len(folds))]
    for fold, plain in zip(folds, plain_folds, strict=True):
        held = fold.held.overall()
        cells = [fold.held_out, fold.chosen, pct(fold.tuned)]
        cells += [pct(held[k]) for k in cv_ks] + [pct(plain[k]) for k in cv_ks]
        lines.append("| " + " | ".join(cells) + " |")
    means = {k: sum(f.held.overall()[k] for f in folds) / len(folds) for k in cv_ks}
    plain_means = {k: sum(p[k] for p in plain_folds) / len(plain_folds) for k in cv_ks}
    cells = ["**mean of the folds**", "", ""]
    cells += [f"**{pct(means[k])}**" for k in cv_ks] + [pct(plain_means[k]) for k in cv_ks]
    lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    k10 = 10 if 10 in ks else cv_ks[-1]
    lines.append(f"Per category, R@{k10}, held-out questions pooled:")
    lines.append("")
    lines.append(f"| Category | Questions | cross-validated R@{k10} | plain R@{k10} |")
    lines.append("|---|---:|---:|---:|")
    plain_cats = score(conversations, results[0], ks, None).per_category()
    for cat, (count, cat_means) in pooled.per_category().items():
        name = f"{cat} {CATEGORIES.get(cat, 'unknown')}"
        lines.append(
            f"| {name} | {count} | {pct(cat_means[k10])} | {pct(plain_cats[cat][1][k10])} |"
        )
    overall = pooled.overall()
    plain_all = score(conversations, results[0], ks, None).overall()
    lines.append(
        f"| overall, pooled | {pooled.overall_count()} | {pct(overall[k10])} | "
        f"{pct(plain_all[k10])} |"
    )
    return "\n".join(lines)


def cv_json(folds: Sequence[Fold], pooled: Scores, ks: list[int]) -> dict[str, Any]:
    return {
        "folds": [
            {
                "held_out": f.held_out,
                "chosen": f.chosen,
                "tuned_recall_10": f.tuned,
                "recall": {str(k): v for k, v in f.held.overall().items()},
            }
            for f in folds
        ],
        "mean_of_folds": {str(k): sum(f.held.overall()[k] for f in folds) / len(folds) for k in ks},
        "pooled": pooled.as_json(),
    }


def parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--k wants integers like 5,10,25,50: {text!r}") from exc
    if not ks or ks[0] < 1 or ks[-1] > MAX_SEARCH_K:
        raise argparse.ArgumentTypeError(f"--k values must be 1..{MAX_SEARCH_K}: {text!r}")
    return ks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="LoCoMo turn-level evidence recall@k for memgate, with a BM25 baseline."
    )
    parser.add_argument("data", type=Path, help="a LoCoMo JSON file (locomo10.json layout)")
    parser.add_argument(
        "--url",
        default=None,
        help="a running gateway, e.g. http://127.0.0.1:11435 (default: start memgate serve here)",
    )
    parser.add_argument("--k", type=parse_ks, default=[5, 10, 25, 50], help="default 5,10,25,50")
    parser.add_argument("--keep", action="store_true", help="do not erase the namespaces")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write figures")
    parser.add_argument(
        "--batch-size", type=int, default=MAX_BATCH, help=f"memories per add call (<= {MAX_BATCH})"
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a [recall] setting and the values to try (repeatable; needs no --url)",
    )
    parser.add_argument(
        "--misses",
        type=category_number,
        default=None,
        metavar="CATEGORY",
        help="print the plain configuration's misses of a category (multi-hop, 1, ...)",
    )
    parser.add_argument("--misses-k", type=int, default=10, help="a miss is outside this top k")
    parser.add_argument(
        "--quick", action="store_true", help="one conversation, 40 questions: a smoke run"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= MAX_BATCH:
        parser.error(f"--batch-size must be 1..{MAX_BATCH}")
    try:
        configs = parse_grid(args.grid) or [Config(())]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.url and len(configs) > 1:
        parser.error("--grid starts its own gateways: leave out --url")

    # A SIGTERM unwinds like Ctrl-C, so that the namespaces and the gateway are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    started = time.perf_counter()
    conversations = load_conversations(args.data)
    if args.quick:
        conversations = [quick(conversations[0], 40)]
    ks: list[int] = args.k
    k_max = max(ks)
    log(
        f"{args.data}: {len(conversations)} conversations, "
        f"{sum(len(c.turns) for c in conversations)} turns, "
        f"{sum(len(c.questions) for c in conversations)} questions"
    )
    gateway_info: dict[str, Any] = {}
    namespaces = namespaces_for(secrets.token_hex(4), conversations)
    all_stats = [RunStats() for _ in configs]
    results: list[Retrieved] = [[] for _ in configs]
    try:
        if args.url:
            url = args.url.rstrip("/")
            gateway_info["url"] = url
            gateway_info["ready_seconds"] = gateway_ready(url, READY_TIMEOUT)
            results[0] = run(
                url,
                conversations,
                namespaces,
                k_max,
                load=True,
                erase_after=not args.keep,
                batch=args.batch_size,
                trust_env=True,
                stats=all_stats[0],
            )
        else:
            groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
            for index, config in enumerate(configs):
                groups.setdefault(config.index_values, []).append(index)
            for members in groups.values():
                folder = Path(tempfile.mkdtemp(prefix="memgate-locomo-data-"))
                try:
                    for position, index in enumerate(members):
                        config = configs[index]
                        log(f"configuration {index + 1}/{len(configs)}: {config.label}")
                        with local_gateway(False, data_dir=folder, env=config.env) as (url, info):
                            if index == 0:
                                gateway_info.update(info, url=f"{url} (started here)")
                            results[index] = run(
                                url,
                                conversations,
                                namespaces,
                                k_max,
                                load=position == 0,
                                erase_after=False,
                                batch=args.batch_size,
                                trust_env=False,
                                stats=all_stats[index],
                            )
                finally:
                    if args.keep:
                        log(f"--keep: data folder kept at {folder}")
                    else:
                        shutil.rmtree(folder, ignore_errors=True)
    except (ApiError, RuntimeError, httpx.HTTPError) as exc:
        log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    began = time.perf_counter()
    baseline = bm25_retrieved(conversations, k_max)
    bm25_seconds = time.perf_counter() - began
    total = time.perf_counter() - started

    stats = all_stats[0]
    memgate = score(conversations, results[0], ks, None)
    bm25 = score(conversations, baseline, ks, None)
    extra = {
        "gateway start": gateway_info.get("ready_seconds", 0.0),
        "load": stats.load_wall,
        "search": stats.search_wall,
        "BM25": bm25_seconds,
        "total": total,
    }
    print(report(memgate, bm25, stats, conversations, ks=ks, extra=extra, label=configs[0].label))
    cross: dict[str, Any] | None = None
    if len(conversations) > 1:
        folds, pooled = cross_validate(conversations, configs, results, ks)
        print()
        print(cv_report(conversations, configs, results, folds, pooled, ks=ks))
        cross = cv_json(folds, pooled, ks)
    if args.misses is not None:
        print()
        print(misses(conversations, results[0], args.misses, args.misses_k))

    if args.json is not None:
        lat = stats.latencies_ms
        per_conv = [
            {
                "sample_id": conv.sample_id,
                "turns": len(conv.turns),
                "sessions": len({t.session for t in conv.turns}),
                "questions": len(conv.questions),
                "sessions_without_date": conv.bad_dates,
                "memgate": {
                    str(k): v for k, v in score(conversations, results[0], ks, i).overall().items()
                },
                "bm25": {
                    str(k): v for k, v in score(conversations, baseline, ks, i).overall().items()
                },
            }
            for i, conv in enumerate(conversations)
        ]
        figures = {
            "dataset": str(args.data),
            "gateway": gateway_info,
            "ks": ks,
            "counts": {
                "conversations": len(conversations),
                "turns": sum(len(c.turns) for c in conversations),
                "questions": sum(len(c.questions) for c in conversations),
            },
            "memgate": memgate.as_json(),
            "bm25": bm25.as_json(),
            "dragon_published": {"overall": {str(k): v / 100 for k, v in DRAGON_PUBLISHED.items()}},
            "configurations": [
                {
                    "label": config.label,
                    "scores": score(conversations, retrieved, ks, None).as_json(),
                    "search_p50_ms": percentile(s.latencies_ms, 50),
                }
                for config, retrieved, s in zip(configs, results, all_stats, strict=True)
            ],
            "cross_validation": cross,
            "load": {
                "memories": stats.loaded,
                "calls": stats.load_calls,
                "seconds": stats.load_seconds,
                "memories_per_second": (
                    stats.loaded / stats.load_seconds if stats.load_seconds else None
                ),
            },
            "search": {
                "calls": len(lat),
                "k": k_max,
                "p50_ms": percentile(lat, 50),
                "p99_ms": percentile(lat, 99),
                "mean_ms": sum(lat) / len(lat) if lat else None,
                "short_results": stats.short_results,
                "unmapped_hits": stats.unmapped_hits,
            },
            "conversations": per_conv,
            "wall_seconds": extra,
        }
        text = json.dumps(no_nan(figures), indent=2, allow_nan=False)
        args.json.write_text(text + "\n", encoding="utf-8")
        log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
