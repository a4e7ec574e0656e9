"""Usage accounting: the tokens the upstreams report (their ``usage``), by key, namespace,
model and day, in the metrics and in a small SQLite ledger (``data_dir/usage.sqlite3``) that
the admin usage endpoint reads.

Recording is a dict update under a lock (the request path never touches the disk); the sums
are written every few seconds, and at shutdown, in one transaction. A ledger that cannot be
written (a full disk) keeps its sums in memory and tries again. With ``{hostname}`` in
``store.data_dir`` (one folder a replica on a shared volume), the endpoint adds up the ledgers
of every sibling folder: the fleet's usage, replaced replicas included.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import glob
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from memory.datadir import HOSTNAME

log = logging.getLogger("memgate.usage")

FILE = "usage.sqlite3"
GROUPS = ("day", "key", "namespace", "model")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL, key TEXT NOT NULL, namespace TEXT NOT NULL, model TEXT NOT NULL,
    requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    PRIMARY KEY (day, key, namespace, model)
)
"""


def tokens_of(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens of an OpenAI ``usage`` object (chat and embeddings:
    prompt_/completion_tokens; Responses API: input_/output_tokens); None if it is not one."""
    if not isinstance(usage, Mapping):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(prompt, int) or not isinstance(completion, int | None):
        return None
    return max(prompt, 0), max(completion or 0, 0)


def usage_in(event: Any) -> Any:
    """The ``usage`` an answer or a stream event carries: at its top (chat, embeddings) or in
    its ``response`` (the Responses API's ``response.completed`` event)."""
    if not isinstance(event, dict):
        return None
    if event.get("usage") is not None:
        return event["usage"]
    response = event.get("response")
    return response.get("usage") if isinstance(response, dict) else None


class _Answer(msgspec.Struct):
    usage: Any = None
    response: Any = None


_decode_answer = msgspec.json.Decoder(_Answer).decode


def usage_of_body(data: bytes) -> Any:
    """The ``usage`` of a whole JSON answer (only that field is built), or None."""
    if b'"usage"' not in data:
        return None
    try:
        answer = _decode_answer(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    return usage_in({"usage": answer.usage, "response": answer.response})


class UsageRow(msgspec.Struct, omit_defaults=True):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    day: str | None = None
    key: str | None = None
    namespace: str | None = None
    model: str | None = None


Key = tuple[str, str, str, str]  # day, key, namespace, model


class Account(msgspec.Struct, frozen=True):
    """Whose tokens an answer's usage is: a key, a namespace ("" without memory), a model."""

    ledger: UsageLedger
    key: str
    namespace: str
    model: str

    def add(self, usage: Any) -> None:
        if usage is not None and not self.ledger.record(
            self.key, self.namespace, self.model, usage
        ):
            log.debug("an answer's usage was not understood: %r", usage)


class UsageLedger:
    """Token sums by day, key, namespace and model, kept in ``folder/usage.sqlite3``."""

    def __init__(
        self,
        folder: Path,
        *,
        template: str = "",
        on_tokens: Callable[[str, str, str, int], None] | None = None,
        flush_seconds: float = 5.0,
    ) -> None:
        self.path = folder / FILE
        self.template = template
        self.on_tokens = on_tokens
        self.flush_seconds = flush_seconds
        self._pending: dict[Key, list[int]] = {}
        self._lock = threading.Lock()  # guards _pending only
        self._write = threading.Lock()  # one flush at a time
        self._task: asyncio.Task[None] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(_SCHEMA)

    def _connect(self, path: Path | None = None, readonly: bool = False) -> sqlite3.Connection:
        target = path or self.path
        if readonly:
            return sqlite3.connect(f"file:{target}?mode=ro", uri=True, timeout=5)
        db = sqlite3.connect(target, timeout=5)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def record(self, key: str, namespace: str, model: str, usage: Any) -> bool:
        """Count one answer's ``usage`` (False when it is not a usage object)."""
        tokens = tokens_of(usage)
        if tokens is None:
            return False
        prompt, completion = tokens
        if self.on_tokens:
            self.on_tokens(key, model, "prompt", prompt)
            self.on_tokens(key, model, "completion", completion)
        day = dt.datetime.now(dt.UTC).date().isoformat()
        with self._lock:
            sums = self._pending.setdefault((day, key, namespace, model), [0, 0, 0])
            sums[0] += 1
            sums[1] += prompt
            sums[2] += completion
        return True

    def flush(self) -> None:
        """Write the pending sums (kept for the next flush if the disk refuses them)."""
        with self._write:
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending:
                return
            try:
                with self._connect() as db:
                    db.executemany(
                        "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                        " requests = requests + excluded.requests,"
                        " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                        " completion_tokens = completion_tokens + excluded.completion_tokens",
                        [(*k, *v) for k, v in pending.items()],
                    )
            except sqlite3.Error as exc:
                log.warning("usage not written yet (kept in memory): %s", exc)
                with self._lock:
                    for k, v in pending.items():
                        sums = self._pending.setdefault(k, [0, 0, 0])
                        for i in range(3):
                            sums[i] += v[i]

    def ledgers(self) -> Iterator[Path]:
        """This gateway's ledger and, with ``{hostname}`` in the data dir, its siblings'."""
        yield self.path
        if HOSTNAME in self.template:
            pattern = glob.escape(self.template).replace(glob.escape(HOSTNAME), "*")
            for folder in sorted(Path(p) for p in glob.glob(pattern)):
                other = folder / FILE
                if other.exists() and other.resolve() != self.path.resolve():
                    yield other

    def query(
        self,
        *,
        since: str,
        until: str,
        group_by: tuple[str, ...],
        where: Mapping[str, str],
    ) -> list[UsageRow]:
        """Sums between two days (inclusive), grouped by ``group_by`` columns, rows matching
        ``where`` (column -> value); biggest first."""
        self.flush()
        columns = [g for g in GROUPS if g in group_by]
        conditions = ["day >= ?", "day <= ?"] + [f"{c} = ?" for c in where]
        sql = (
            f"SELECT {', '.join([*columns, ''])}SUM(requests), SUM(prompt_tokens), "  # noqa: S608
            f"SUM(completion_tokens) FROM usage WHERE {' AND '.join(conditions)}"
            + (f" GROUP BY {', '.join(columns)}" if columns else "")
        )
        params = [since, until, *where.values()]
        totals: dict[tuple[str, ...], list[int]] = {}
        for path in self.ledgers():
            try:
                with self._connect(path, readonly=path != self.path) as db:
                    rows = db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                log.warning("usage ledger %s not read: %s", path, exc)
                continue
            for row in rows:
                if row[len(columns)] is None:
                    continue  # no rows at all: SUM over nothing
                sums = totals.setdefault(tuple(row[: len(columns)]), [0, 0, 0])
                for i in range(3):
                    sums[i] += int(row[len(columns) + i])
        out = [
            UsageRow(
                requests=v[0],
                prompt_tokens=v[1],
                completion_tokens=v[2],
                total_tokens=v[1] + v[2],
                **dict(zip(columns, k, strict=True)),
            )
            for k, v in totals.items()
        ]
        out.sort(key=lambda r: (-r.total_tokens, r.day or "", r.key or "", r.model or ""))
        return out

    async def _keep_flushing(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await asyncio.to_thread(self.flush)

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_flushing(), name="memgate-usage")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await asyncio.to_thread(self.flush)
