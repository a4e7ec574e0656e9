"""The durable write queue: an SQLite outbox in WAL mode on local disk (its writer, which
drains it into the store, is ``memory.service.Writer``).

A chat exchange is committed here before the client's response completes; the ``Writer``
embeds queued memories in batches, upserts them into the store (ids are fixed at enqueue time,
so a replay after a crash cannot duplicate), and only then deletes them from the outbox.
Whatever is queued when the process starts is replayed. While the store is down, items stay
queued and the writer retries with backoff.

Locks, outermost first: ``Writer.lock`` (asyncio: one store write, delete or erasure at a
time, see ``memory.service``) -> ``Outbox._lock`` (the SQLite connection: every statement and
transaction) -> ``Outbox._queued_lock`` (the in-memory copy of what is queued, by namespace).
``_queued_lock`` is never held while taking ``_lock``, and no SQLite call runs under it alone.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import msgspec

from memory.records import Memory

_DECODE_KEYS = msgspec.json.Decoder(list[tuple[str, str]]).decode
log = logging.getLogger("memgate.outbox")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    payload BLOB NOT NULL,
    enqueued_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_namespace ON outbox(namespace);
CREATE TABLE IF NOT EXISTS probe (pad BLOB NOT NULL);
"""


class QueueFailing(Exception):
    """The queue could not commit a write (the disk is full, or the file cannot be written):
    what was being queued is not durable."""


def describe(exc: BaseException) -> str:
    """A short reason for an operator, without the file's path or SQL."""
    text = str(exc).lower()
    if "full" in text:
        return "the disk is full"
    if "readonly" in text or "read-only" in text or "permission" in text:
        return "the queue file cannot be written"
    return "the queue file cannot be written (" + type(exc).__name__ + ")"


class Queued(NamedTuple):
    """A memory in the queue: its place, the memory, and when it was queued."""

    seq: int
    memory: Memory
    enqueued_at: float


class Outbox:
    """A FIFO of memories waiting to be written to the store; safe across threads."""

    def __init__(self, path: str | Path, *, recent: int = 1000) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives the process being killed (not a power cut).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(Memory)
        # The queued memories of each namespace (at most ``recent`` of them, the newest), in
        # memory: recall reads them on the event loop, with no disk and no thread.
        self.recent = recent
        self._queued: dict[str, OrderedDict[str, Memory]] = {}
        self._queued_lock = threading.Lock()
        self.failing: str | None = None  # why the last write failed, until one succeeds
        for (payload,) in self._db.execute("SELECT payload FROM outbox ORDER BY seq"):
            self._remember([self._decoder.decode(payload)])

    def put(self, memories: Sequence[Memory], enqueued_at: Sequence[float] = ()) -> None:
        """Commit memories to the queue (one transaction), queued now or at ``enqueued_at``."""
        if not memories:
            return
        at = list(enqueued_at) or [time.time()] * len(memories)
        rows = [
            (m.id, m.namespace, self._encoder.encode(m), t)
            for m, t in zip(memories, at, strict=True)
        ]
        with self._lock:
            self._write(
                lambda: self._db.executemany(
                    "INSERT OR IGNORE INTO outbox(id, namespace, payload, enqueued_at) "
                    "VALUES (?, ?, ?, ?)",
                    rows,
                )
            )
            self._remember(memories)  # under the lock: no ``ack`` of these can come first

    def _write(self, work: Callable[[], object]) -> None:
        """``work`` in one committed transaction (the caller holds ``_lock``). A failure is
        ``QueueFailing`` from the original error (a ROLLBACK that fails too, as on a full
        disk, does not hide it), and the queue is ``failing`` until a write succeeds."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                work()
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self.failing = describe(exc)
            log.error("the write queue failed: %s (%s)", self.failing, exc)
            raise QueueFailing(self.failing) from exc
        self.failing = None

    def probe(self) -> str | None:
        """When the queue is failing, try a small write again (the disk may have room now);
        None when the queue works, else why not."""
        if self.failing is None:
            return None
        with self._lock, contextlib.suppress(QueueFailing):
            # as much as a few exchanges: a write that needs room, not one that fits a page
            self._write(lambda: self._db.execute("INSERT INTO probe(pad) VALUES (zeroblob(65536))"))
            self._write(lambda: self._db.execute("DELETE FROM probe"))
        return self.failing

    def _remember(self, memories: Sequence[Memory]) -> None:
        with self._queued_lock:
            for memory in memories:
                queued = self._queued.setdefault(memory.namespace, OrderedDict())
                if memory.id in queued:
                    continue
                queued[memory.id] = memory
                if len(queued) > self.recent:
                    queued.popitem(last=False)

    def _forget(self, rows: Sequence[tuple[str, str]]) -> None:
        with self._queued_lock:
            for namespace, memory_id in rows:
                queued = self._queued.get(namespace)
                if queued is not None:
                    queued.pop(memory_id, None)
                    if not queued:
                        del self._queued[namespace]

    def take(self, limit: int) -> list[Queued]:
        """The oldest ``limit`` queued memories (left queued until ``ack``), and the rest of
        the last one's ``put`` (up to ``limit`` more): an exchange's user turn and reply are
        written together, so no listing shows the one without the other."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, payload, enqueued_at, namespace FROM outbox ORDER BY seq LIMIT ?",
                (2 * limit,),
            ).fetchall()
        cut = min(limit, len(rows))
        while 0 < cut < len(rows) and rows[cut][2:] == rows[cut - 1][2:]:
            cut += 1  # same namespace, same enqueue time: the same put
        return [
            Queued(seq, self._decoder.decode(payload), at) for seq, payload, at, _ in rows[:cut]
        ]

    def ack(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        chosen = self._encoder.encode(list(seqs))
        with self._lock:
            # two statements of one step each, not a step a row (RETURNING): each step gives
            # the GIL up, and under load waits to take it back, with the queue's lock held
            (found,) = self._db.execute(
                "SELECT json_group_array(json_array(namespace, id)) FROM outbox "
                "WHERE seq IN (SELECT value FROM json_each(?))",
                (chosen,),
            ).fetchone()
            self._db.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?))", (chosen,)
            )
            self._forget(_DECODE_KEYS(found))

    def pending(self, namespace: str) -> list[Memory]:
        """The newest (at most ``recent``) queued memories of a namespace, oldest first
        (read-your-writes for recall). From memory: cheap enough for the event loop."""
        with self._queued_lock:
            queued = self._queued.get(namespace)
            return list(queued.values()) if queued else []

    def remove(self, namespace: str, memory_id: str) -> bool:
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM outbox WHERE namespace = ? AND id = ?", (namespace, memory_id)
            )
            self._forget([(namespace, memory_id)])
        return cur.rowcount > 0

    def remove_where(self, namespace: str, chosen: Callable[[Memory], bool]) -> int:
        """Drop the namespace's queued memories for which ``chosen`` is true; how many. Costs
        the namespace's queued rows (the queue is short: the writer drains it)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, payload FROM outbox WHERE namespace = ?", (namespace,)
            ).fetchall()
            gone = [mid for mid, payload in rows if chosen(self._decoder.decode(payload))]
            if gone:
                self._db.execute(
                    "DELETE FROM outbox WHERE namespace = ? AND id IN "
                    "(SELECT value FROM json_each(?))",
                    (namespace, self._encoder.encode(gone)),
                )
                self._forget([(namespace, mid) for mid in gone])
        return len(gone)

    def purge_namespace(self, namespace: str, before: float | None = None) -> int:
        """Drop the namespace's queued memories (those queued at or before ``before``)."""
        with self._lock:
            if before is None:
                cur = self._db.execute("DELETE FROM outbox WHERE namespace = ?", (namespace,))
                with self._queued_lock:
                    self._queued.pop(namespace, None)
                return cur.rowcount
            gone = self._db.execute(
                "DELETE FROM outbox WHERE namespace = ? AND enqueued_at <= ? "
                "RETURNING namespace, id",
                (namespace, before),
            ).fetchall()
            self._forget(gone)
        return len(gone)

    def adopt(self, queue: Path) -> int:
        """Move what another gateway's queue file holds into this queue (ids and queue times
        kept: a memory already written, or moved twice, is not duplicated), then delete the
        file. Returns how many memories moved."""
        other = Outbox(queue)
        moved = 0
        try:
            while items := other.take(1000):
                self.put([i.memory for i in items], [i.enqueued_at for i in items])
                other.ack([i.seq for i in items])
                moved += len(items)
        finally:
            other.close()
        for suffix in ("", "-wal", "-shm"):
            queue.with_name(queue.name + suffix).unlink(missing_ok=True)
        return moved

    def depth(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._db.close()
