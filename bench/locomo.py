#!/usr/bin/env python3
"""LoCoMo turn-level evidence recall@k for memgate, next to a BM25 baseline computed here.

Usage::

    python bench/locomo.py PATH_TO_LOCOMO_JSON [--url http://host:port] [--k 5,10,25,50]
                           [--keep] [--json OUT]

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

The data set is CC BY-NC 4.0 (Maharana et al., ACL 2024): read it from where it lies, never
copy it into the repository.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import secrets
import shutil
import signal
import socket
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
from procs import stop_process, tail
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_command(port: int, data_dir: Path) -> list[str]:
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
        "http://127.0.0.1:9/v1",
        "--log-level",
        "warning",
    ]


def wait_ready(
    url: str,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    logfile: Path | None = None,
) -> float:
    """Poll ``/readyz`` until it answers 200; seconds waited."""
    start = time.perf_counter()
    last = "no answer"
    with httpx.Client(base_url=url, timeout=10.0, trust_env=proc is None) as client:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"memgate serve exited with code {proc.returncode} before it was ready; "
                    f"its log:\n{tail(logfile, 40) if logfile else ''}"
                )
            try:
                response = client.get("/readyz")
                if response.status_code == 200:
                    return time.perf_counter() - start
                last = f"HTTP {response.status_code}: {response.text[:500]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            if time.perf_counter() - start > timeout:
                extra = f"\nits log:\n{tail(logfile, 40)}" if logfile else ""
                raise RuntimeError(f"{url}/readyz not ready after {timeout:.0f} s ({last}){extra}")
            time.sleep(0.5)


@contextmanager
def local_gateway(keep: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """Start ``memgate serve`` on a free loopback port with a temporary data folder; yield
    its URL and startup facts; stop it (SIGTERM, then SIGKILL after 30 s) at the end."""
    root = Path(tempfile.mkdtemp(prefix="memgate-locomo-"))
    logfile = root / "gateway.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = serve_command(port, root / "data")
    log(f"starting: {' '.join(command)}")
    info: dict[str, Any] = {"command": command}
    proc: subprocess.Popen[bytes] | None = None
    try:
        with logfile.open("wb") as out:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop it after cleaning up
            )
        info["ready_seconds"] = wait_ready(url, READY_TIMEOUT, proc, logfile)
        log(f"memgate ready on {url} after {info['ready_seconds']:.1f} s")
        yield url, info
    finally:
        if proc is not None:
            stop_process("memgate", proc, logfile, timeout=STOP_TIMEOUT, log=log, lines=40)
        if keep:
            log(f"--keep: the gateway's data folder is kept at {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


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


def run(
    url: str,
    conversations: Sequence[Conversation],
    ks: list[int],
    *,
    keep: bool,
    batch: int,
    trust_env: bool,
) -> tuple[Scores, Scores, RunStats, list[dict[str, Any]]]:
    k_max = max(ks)
    run_id = secrets.token_hex(4)
    namespaces = namespaces_for(run_id, conversations)
    memgate, bm25 = Scores(ks), Scores(ks)
    stats = RunStats()
    per_conv: list[dict[str, Any]] = []
    created: list[str] = []
    timeout = httpx.Timeout(600.0, connect=10.0)
    with httpx.Client(base_url=url, timeout=timeout, trust_env=trust_env) as client:
        try:
            began = time.perf_counter()
            for namespace, conv in zip(namespaces, conversations, strict=True):
                created.append(namespace)
                log(f"loading {conv.sample_id}: {len(conv.turns)} turns into {namespace}")
                load_conversation(client, namespace, conv, batch, stats)
            stats.load_wall = time.perf_counter() - began

            began = time.perf_counter()
            for namespace, conv in zip(namespaces, conversations, strict=True):
                log(f"searching {conv.sample_id}: {len(conv.questions)} questions")
                known = conv.dia_ids
                index = BM25([t.content for t in conv.turns])
                conv_mg, conv_bm = Scores(ks), Scores(ks)
                for question in conv.questions:
                    if question.text.strip():
                        found = search(client, namespace, question.text, k_max, stats)
                        baseline = [
                            conv.turns[i].dia_id for i in index.search(question.text, k_max)
                        ]
                    else:  # nothing to ask: nothing retrieved
                        found, baseline = [], []
                    for scores, retrieved in ((memgate, found), (conv_mg, found)):
                        scores.add(question, retrieved, known)
                    for scores, retrieved in ((bm25, baseline), (conv_bm, baseline)):
                        scores.add(question, retrieved, known)
                per_conv.append(
                    {
                        "sample_id": conv.sample_id,
                        "namespace": namespace,
                        "turns": len(conv.turns),
                        "sessions": len({t.session for t in conv.turns}),
                        "questions": len(conv.questions),
                        "sessions_without_date": conv.bad_dates,
                        "memgate": {str(k): v for k, v in conv_mg.overall().items()},
                        "bm25": {str(k): v for k, v in conv_bm.overall().items()},
                    }
                )
            stats.search_wall = time.perf_counter() - began
        finally:
            if keep:
                log(f"--keep: namespaces kept: {', '.join(created)}")
            else:
                erase(client, created)
    return memgate, bm25, stats, per_conv


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
) -> str:
    lines: list[str] = []
    n_overall = memgate.overall_count()
    lines.append(
        f"## LoCoMo turn-level evidence recall@k (overall, categories 1-5, {n_overall} questions)"
    )
    lines.append("")
    lines.append("| Retriever | " + " | ".join(f"R@{k}" for k in ks) + " |")
    lines.append("|---|" + "---:|" * len(ks))
    for name, scores in (("memgate (this run)", memgate), ("BM25 (computed here)", bm25)):
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
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= MAX_BATCH:
        parser.error(f"--batch-size must be 1..{MAX_BATCH}")

    # A SIGTERM unwinds like Ctrl-C, so that the namespaces and the gateway are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    started = time.perf_counter()
    conversations = load_conversations(args.data)
    ks: list[int] = args.k
    log(
        f"{args.data}: {len(conversations)} conversations, "
        f"{sum(len(c.turns) for c in conversations)} turns, "
        f"{sum(len(c.questions) for c in conversations)} questions"
    )
    gateway_info: dict[str, Any] = {}

    def go(url: str, trust_env: bool) -> tuple[Scores, Scores, RunStats, list[dict[str, Any]]]:
        return run(
            url, conversations, ks, keep=args.keep, batch=args.batch_size, trust_env=trust_env
        )

    try:
        if args.url:
            url = args.url.rstrip("/")
            gateway_info["url"] = url
            gateway_info["ready_seconds"] = wait_ready(url, READY_TIMEOUT)
            memgate, bm25, stats, per_conv = go(url, True)
        else:
            with local_gateway(args.keep) as (url, info):
                gateway_info.update(info, url=f"{url} (started here)")
                memgate, bm25, stats, per_conv = go(url, False)
    except (ApiError, RuntimeError, httpx.HTTPError) as exc:
        log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    total = time.perf_counter() - started

    extra = {
        "gateway start": gateway_info.get("ready_seconds", 0.0),
        "load": stats.load_wall,
        "search + BM25": stats.search_wall,
        "total": total,
    }
    print(report(memgate, bm25, stats, conversations, ks=ks, extra=extra))

    if args.json is not None:
        lat = stats.latencies_ms
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
                "k": max(ks),
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
