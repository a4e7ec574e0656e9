"""``MemoryService``: the one place that ties embedder, store, outbox and recall together.

Async, and never blocking the event loop: embedding goes through the ``BatchingEmbedder``
(worker thread, micro-batched) and every store or outbox call runs in a worker thread.

Concurrency (the rules a change must keep):

- The embedding cache (``_vectors``) and the in-flight map (``_inflight``: text -> the task
  of the model call embedding it, and its row) are touched on the event loop only, never in a
  thread, so they need no lock. A text is in ``_inflight`` exactly while its call's task
  runs; the task removes it when it ends, however it ends. A caller waits on a shielded task:
  its cancellation (a client gone) leaves the call to the others. A recall waits at most
  ``embed_timeout`` seconds for its query's vector (then it fails, and the chat answers
  without memories): a stalled model must not hold requests for ever.
- The segment-vector cache (``_segment_cache``: text -> encoded segment vectors of the
  model calls of ``_request``, which the writer stores) and the set of memories whose
  segment vectors are being filled in (``_filling``) are event-loop-only state too.
- A recall's dense search may run in the model's worker thread, as the follow-up of its
  query's call (``_dense_nearby``); like the searches run with ``to_thread``, it reads the
  store and pure functions only, never the event-loop state above.
- Deletes and erasures win every race with an update, on one gateway and across a fleet:
  an update either lands before the delete (which then removes it) or finds the memory gone
  (None: a 404), never after. On one gateway the writer's lock orders them; across gateways
  the update's store write is conditional (``MemoryStore.replace``: Chroma's ``update``
  skips ids the store no longer holds, and fails on an erased collection). The earlier
  version an update keeps is written before its conditional write, and a delete or erasure
  removes versions after the memories: whichever wins, no version of a deleted memory stays.
- Lock order, outermost first: ``Writer.lock`` (an asyncio lock: writes, deletes, updates
  and erasures of the store are serialized with the writer's batches) -> the store's own
  locks (``HybridStore``'s per-namespace stripes, then ``LocalCopy``'s writer lock; its
  readers are per thread and take none) -> the ``Outbox``'s lock (SQLite, one connection).
  No code takes an outer lock while holding an inner one; the outbox and the store never
  call back into the service.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from memory.current import WINDOW, current_first, subject_vectors
from memory.embedder import BatchingEmbedder, Embedder, Then
from memory.errors import EmbeddingTimeout, StillQueued
from memory.hybrid import HybridStore
from memory.outbox import Outbox, Queued
from memory.recall import RecallSettings, fused, rank_with
from memory.records import (
    Exchange,
    Filter,
    Hit,
    Memory,
    Vectors,
    created_in,
    cursor_at,
    id_micros,
    matches,
    micros,
)
from memory.segments import encoded_parts, has_segments, lift, rescore
from memory.store import MemoryStore, NamespaceCount, Version

log = logging.getLogger("memgate.service")


# Tuning constants, each measured where its use is described (docs/performance.md): the
# settings (gateway.config) cover the rest.
# Vectors (and segment vectors) cached by text: a recall's query and the writer's texts.
VECTOR_CACHE = 4096
# A write batch of at most this many memories waits for the gap after a search.
GAP_BATCH = 16
# Seconds a recall waits for its query's vector before it fails (the chat goes on).
EMBED_TIMEOUT = 30.0


class SearchTracker:
    """When the store was last searched, and a way for a writer to wait for the next moment
    the store has no search to serve.

    Under traffic, ``gap`` waits (at most ``max_wait``) for a running or the next search to
    finish, so a write starts just after one: at low concurrency the next search comes only
    after the next query is embedded, by when a short write is done. Without recent searches
    it returns at once."""

    def __init__(self, *, recent: float = 0.25, max_wait: float = 0.03) -> None:
        self.recent = recent
        self.max_wait = max_wait
        self.running = 0
        self.last_end = -math.inf
        self._ended: asyncio.Event | None = None

    @contextlib.contextmanager
    def searching(self) -> Iterator[None]:
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self.last_end = time.monotonic()
            if self._ended is not None:
                self._ended.set()
                self._ended = None

    async def gap(self) -> None:
        if not self.running and time.monotonic() - self.last_end > self.recent:
            return
        if self._ended is None:
            self._ended = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended.wait(), self.max_wait)


WriteBatch = Callable[[list[Queued]], Awaitable[None]]


class Writer:
    """Background task draining the outbox into the store through ``write`` (embed + add)."""

    def __init__(
        self,
        outbox: Outbox,
        write: WriteBatch,
        *,
        batch_size: int = 64,
        coalesce: float = 0.0,
        idle_poll: float = 1.0,
        max_backoff: float = 10.0,
    ) -> None:
        self.outbox = outbox
        self._write = write
        self.batch_size = batch_size
        self.coalesce = coalesce
        self.idle_poll = idle_poll
        self.max_backoff = max_backoff
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        # Held while a batch is taken, written and acknowledged; deletions hold it too, so an
        # erased namespace cannot be written back by a batch already in flight.
        self.lock = asyncio.Lock()
        self.last_error: str | None = None
        self.written = 0

    def notify(self) -> None:
        """Something was queued: wake the writer."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="memgate-writer")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def flush_once(self) -> int:
        """Write one batch; returns how many memories were written (0: queue empty)."""
        async with self.lock:
            items = await asyncio.to_thread(self.outbox.take, self.batch_size)
            if not items:
                return 0
            await self._write(items)
            await asyncio.to_thread(self.outbox.ack, [item.seq for item in items])
        self.written += len(items)
        return len(items)

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                n = await self.flush_once()
                self.last_error = None
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.last_error is None:
                    log.warning("memory writer: store write failed, will retry: %s", exc)
                self.last_error = str(exc) or type(exc).__name__
                if self._stopping:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if n == 0:
                if self._stopping:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.idle_poll)
            if n < self.batch_size and self.coalesce > 0 and not self._stopping:
                # A shallow queue: let a few more exchanges arrive and store them in one batch
                # (one model call, one store write). They are durable and recallable meanwhile.
                await asyncio.sleep(self.coalesce)

    async def stop(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Flush what is queued (up to ``timeout`` seconds), then stop. What could not be
        written stays in the outbox for the next start."""
        self._stopping = True
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            log.warning("memory writer: %d items left queued at shutdown", self.outbox.depth())
        except asyncio.CancelledError:
            self._task.cancel()
            raise
        self._task = None


class MemoryService:
    def __init__(
        self,
        store: MemoryStore,
        embedder: Embedder,
        outbox: Outbox,
        *,
        recall: RecallSettings | None = None,
        writer_batch: int = 64,
        writer_coalesce: float = 0.1,
        embed_batch: int = 64,
        embed_concurrency: int = 1,
        vector_cache: int = VECTOR_CACHE,
        gap_batch: int = GAP_BATCH,
        shared: bool = False,
        embed_timeout: float = EMBED_TIMEOUT,
    ) -> None:
        """``shared``: other gateways write to ``store`` too (a Chroma server), and may erase
        namespaces this one holds queued writes of."""
        self.store = store
        self.embedder = BatchingEmbedder(
            embedder, max_batch=embed_batch, concurrency=embed_concurrency
        )
        self.outbox = outbox
        self.shared = shared
        self.embed_timeout = embed_timeout
        self.settings = recall or RecallSettings()
        self.writer = Writer(
            outbox, self._write_batch, batch_size=writer_batch, coalesce=writer_coalesce
        )
        # Vectors by text (the model is deterministic), and texts being embedded right now:
        # concurrent recalls and the writer share one model call per text.
        self._vectors: OrderedDict[str, Vectors] = OrderedDict()
        self._inflight: dict[str, tuple[asyncio.Future[Vectors], int]] = {}
        self._vector_cache = vector_cache
        self._background: set[asyncio.Future[Vectors]] = set()
        self._searches = SearchTracker()
        self._gap_batch = gap_batch
        # Segment vectors (memory.segments) live in the store's local copy: only a
        # HybridStore has one. Memories met in a recall without theirs are filled in the
        # background, one task at a time per memory.
        self._segments = (
            store if isinstance(store, HybridStore) and self.settings.segment_weight > 0 else None
        )
        # Alone on its store, a recall's dense search can run in the model's thread right
        # after its query's call (``_dense_nearby``), from the local copy's vectors.
        self._nearby = store if isinstance(store, HybridStore) and not store.shared else None
        self._filling: set[str] = set()
        # Encoded segment vectors by text, from the segmented model calls of ``_request``
        # (the writer takes them from here), on the event loop only, like ``_vectors``.
        self._segment_cache: OrderedDict[str, bytes] = OrderedDict()
        self._fills: set[asyncio.Future[None]] = set()

    # -- writing -----------------------------------------------------------------------------

    async def _write_batch(self, items: builtins.list[Queued]) -> None:
        items = await self._not_erased(items)
        if not items:
            return
        memories = [item.memory for item in items]
        vectors = await self._vectors_for(memories)
        kept = await self._segments_for(memories)
        if len(memories) <= self._gap_batch:
            # Light traffic: a store write stalls the store's searches while it runs (embedded
            # Chroma holds its process's GIL), so a short one waits for the gap after a
            # search. A bigger batch means a backlog: it is written at once.
            await self._searches.gap()
        await asyncio.to_thread(self.store.add, memories, vectors)
        await asyncio.to_thread(self._keep_segments, kept)
        # A namespace erased through another gateway while this batch was being written: the
        # erasure covers what was queued before it, which this write may have brought back.
        still = {item.seq for item in await self._not_erased(items)}
        for item in items:
            if item.seq not in still:
                await asyncio.to_thread(self.store.delete, item.memory.namespace, item.memory.id)

    async def _unerased(
        self, namespace: str, pending: builtins.list[Memory]
    ) -> builtins.list[Memory]:
        """The namespace's queued memories that no erasure through another gateway covers
        (the queue forgets the others)."""
        erased = await asyncio.to_thread(self.store.erasures, [namespace])
        if namespace not in erased:
            return pending
        await asyncio.to_thread(self.outbox.purge_namespace, namespace, erased[namespace])
        still = {m.id for m in self.outbox.pending(namespace)}
        return [m for m in pending if m.id in still]

    async def _not_erased(self, items: builtins.list[Queued]) -> builtins.list[Queued]:
        """The queued items that no erasure of their namespace (through any gateway) covers;
        the queue forgets the others. Alone on its store, a gateway makes every erasure
        itself (and empties its queue of it then): nothing to ask."""
        if not self.shared:
            return items
        erased = await asyncio.to_thread(
            self.store.erasures, {item.memory.namespace for item in items}
        )
        if not erased:
            return items
        for namespace, at in erased.items():
            await asyncio.to_thread(self.outbox.purge_namespace, namespace, at)
        return [
            item
            for item in items
            if item.enqueued_at > erased.get(item.memory.namespace, -math.inf)
        ]

    async def _vectors_for(self, memories: Sequence[Memory]) -> Vectors:
        return await self._embed_texts([m.content for m in memories], background=True)

    async def _embed_texts(self, texts: Sequence[str], *, background: bool = False) -> Vectors:
        """Vectors for ``texts``: cached, being embedded for another caller, or embedded now
        in one model call (see ``_request``)."""
        return await self._collect(texts, self._request(texts, background=background))

    def _request(
        self,
        texts: Sequence[str],
        *,
        background: bool = False,
        then: Then | None = None,
        after: asyncio.Future[Any] | None = None,
    ) -> dict[str, Vectors | tuple[asyncio.Future[Vectors], int]]:
        """Where each text's vector is: cached, or (future, row) of a model call, another
        caller's or one started here and now. Each call runs as its own task, so a caller
        that is cancelled (a client that went away) does not fail the others waiting.
        ``then`` and ``after``: the follow-up of a call started here (``BatchingEmbedder``);
        with no call started, ``after`` is None at once."""
        where: dict[str, Vectors | tuple[asyncio.Future[Vectors], int]] = {}
        todo: builtins.list[str] = []
        for text in dict.fromkeys(texts):
            cached = self._vectors.get(text)
            if cached is not None:
                where[text] = cached
            elif text in self._inflight:
                where[text] = self._inflight[text]
            else:
                todo.append(text)
        if todo:
            # With segment vectors on, every call is segmented: they cost no model call of
            # their own, the writer finds a text's segments cached whoever embedded it (a chat's
            # query is its user turn), and the lanes' batches stay of one kind.
            segmented = self._segments is not None
            call = self.embedder.submit(
                todo, background=background, segmented=segmented, then=then, after=after
            )
            task = asyncio.ensure_future(self._cache(todo, call, segmented=segmented))
            for i, text in enumerate(todo):
                self._inflight[text] = where[text] = (task, i)
        elif after is not None:
            after.set_result(None)
        return where

    async def _collect(
        self,
        texts: Sequence[str],
        where: dict[str, Vectors | tuple[asyncio.Future[Vectors], int]],
        wait_seconds: float | None = None,
    ) -> Vectors:
        """The vectors of ``texts`` once their calls are done (within ``wait_seconds``, else
        ``EmbeddingTimeout``; the calls themselves go on for their other waiters)."""
        if not texts:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32)
        found: dict[str, Vectors] = {}
        for text, place in where.items():
            if isinstance(place, tuple):
                future, i = place
                try:
                    vectors = await asyncio.wait_for(asyncio.shield(future), wait_seconds)
                except TimeoutError as exc:
                    raise EmbeddingTimeout(
                        f"the embedding model gave no vector within {wait_seconds} s"
                    ) from exc
                found[text] = vectors[i]
            else:
                found[text] = place
        return np.stack([found[t] for t in texts])

    async def _cache(
        self, texts: builtins.list[str], call: asyncio.Future[Vectors], *, segmented: bool = False
    ) -> Vectors:
        """The call's vectors, cached by text (a segmented call's segment rows too, after
        the texts' own, which are what its waiters read)."""
        try:
            vectors = await call
            for text, vector in zip(texts, vectors[: len(texts)], strict=True):
                self._vectors[text] = vector
                self._vectors.move_to_end(text)
            while len(self._vectors) > self._vector_cache:
                self._vectors.popitem(last=False)
            if segmented:
                for memory_text, blob in encoded_parts(texts, vectors):
                    self._segment_cache[memory_text] = blob
                    self._segment_cache.move_to_end(memory_text)
                while len(self._segment_cache) > self._vector_cache:
                    self._segment_cache.popitem(last=False)
            return vectors
        finally:
            for text in texts:
                self._inflight.pop(text, None)

    async def remember(self, exchange: Exchange) -> builtins.list[Memory]:
        """Queue an exchange durably (committed when this returns); the writer stores it."""
        memories = exchange.memories()
        await asyncio.to_thread(self.outbox.put, memories)
        self.writer.notify()
        # Embed the new texts now, in the background: the next recall of this namespace reads
        # them from the queue and finds their vectors ready, as will the writer.
        task = asyncio.ensure_future(
            self._embed_texts([m.content for m in memories], background=True)
        )
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return memories

    def _background_done(self, task: asyncio.Future[Vectors]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # a failure here is met again, and reported, by the writer

    async def add(self, memories: Sequence[Memory]) -> None:
        """Embed and store memories now (the direct memory API)."""
        vectors, kept = await self._embed_memories(memories)
        # Under the writer's lock, so that a concurrent erase is never interleaved with it.
        async with self.writer.lock:
            await asyncio.to_thread(self.store.add, memories, vectors)
            await asyncio.to_thread(self._keep_segments, kept)

    # -- segment vectors (memory.segments) ---------------------------------------------------

    def _multi(self, memories: Iterable[Memory]) -> builtins.list[Memory]:
        """The memories that get segment vectors (none when they are off)."""
        if self._segments is None:
            return []
        return [m for m in memories if has_segments(m.content)]

    async def _embed_memories(
        self, memories: Sequence[Memory]
    ) -> tuple[Vectors, builtins.list[tuple[Memory, bytes]]]:
        """The memories' vectors and their encoded segment vectors, in one bulk model call."""
        segmented = self._segments is not None
        rows = await self.embedder.embed_bulk([m.content for m in memories], segmented=segmented)
        return rows[: len(memories)], _with_parts(memories, rows) if segmented else []

    async def _segments_for(
        self, memories: Sequence[Memory]
    ) -> builtins.list[tuple[Memory, bytes]]:
        """The encoded segment vectors of the memories that get them: from the cache of
        ``_request``'s calls, else from one call now (in the background lane)."""
        multi = self._multi(memories)
        out = [(m, blob) for m in multi if (blob := self._segment_cache.get(m.content))]
        rest = [m for m in multi if m.content not in self._segment_cache]
        if rest:
            rows = await self.embedder.embed(
                [m.content for m in rest], background=True, segmented=True
            )
            out += _with_parts(rest, rows)
        return out

    def _keep_segments(self, kept: Sequence[tuple[Memory, bytes]]) -> None:
        """Keep encoded segment vectors beside their memories (in a worker thread)."""
        if self._segments is None or not kept:
            return
        by_ns: dict[str, builtins.list[tuple[str, str, bytes]]] = {}
        for memory, blob in kept:
            by_ns.setdefault(memory.namespace, []).append((memory.id, memory.content, blob))
        for namespace, items in by_ns.items():
            self._segments.keep_segments(namespace, items)

    def _dense(
        self, namespace: str, vector: Vectors, k: int, where: Filter | None
    ) -> tuple[builtins.list[Hit], builtins.list[Memory]]:
        """The dense ranking, rescored with the candidates' segment vectors (in a worker
        thread); and the candidates that should have segment vectors and have none yet."""
        if self._segments is None:
            return self.store.search(namespace, vector, k, where), []
        hits, found = self._segments.search_segmented(namespace, vector, k, where)
        return self._rescored(hits, found, vector)

    def _dense_nearby(
        self, namespace: str, k: int, rows: Vectors
    ) -> tuple[builtins.list[Hit], builtins.list[Memory]] | None:
        """``_dense`` with no filter for the query embedded in ``rows[0]``, from the local
        copy's vectors alone (``HybridStore.search_nearby``), else None: the follow-up of the
        query's model call, in the model's thread."""
        if self._nearby is None:
            return None
        vector = rows[0]
        segmented = self._segments is not None
        found = self._nearby.search_nearby(namespace, vector, k, segmented=segmented)
        if found is None:
            return None
        if not segmented:
            return found[0], []
        return self._rescored(*found, vector)

    def _rescored(
        self, hits: builtins.list[Hit], found: dict[str, bytes], vector: Vectors
    ) -> tuple[builtins.list[Hit], builtins.list[Memory]]:
        if not hits:
            return hits, []
        missing = self._multi(h.memory for h in hits if h.memory.id not in found)
        return rescore(hits, found, vector, self.settings.segment_weight), missing

    def _fill_segments(self, memories: Sequence[Memory]) -> None:
        """Embed and keep, in the background, the segment vectors of memories that have
        none (written through another gateway, or before they existed)."""
        todo = [m for m in memories if m.id not in self._filling]
        if not todo:
            return
        self._filling.update(m.id for m in todo)

        async def fill() -> None:
            try:
                await asyncio.to_thread(self._keep_segments, await self._segments_for(todo))
            finally:
                self._filling.difference_update(m.id for m in todo)

        task = asyncio.ensure_future(fill())
        self._fills.add(task)
        task.add_done_callback(self._fill_done)

    def _fill_done(self, task: asyncio.Future[None]) -> None:
        self._fills.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not fill segment vectors: %s", task.exception())

    # -- reading -----------------------------------------------------------------------------

    async def recall(
        self,
        namespace: str,
        query: str,
        *,
        k: int | None = None,
        carried: Iterable[str] = (),
        where: Filter | None = None,
        context: str = "",
    ) -> builtins.list[Hit]:
        """The memories of ``namespace`` (passing ``where``) relevant to ``query``, ranked, best
        first (before any token budget). Memories still queued for writing are included.
        ``context``: the turns a follow-up ``query`` leans on (``recall.conversation_query``):
        embedded in the same model call, its vector is added to the query's (weighted by
        ``follow_up_weight``) and its words to the lexical search."""
        k = k or self.settings.k
        if not query.strip():
            return []
        candidates = max(self.settings.candidates, k)
        texts = [query, context] if context.strip() else [query]
        # The lexical search needs no vector: it runs while the query is being embedded. The
        # namespace's queued memories come from memory; their texts were sent to the model
        # when they were queued, so their vectors are cached or on their way.
        # The model call starts now, first in line; with no filter, alone on the store, the
        # dense search follows it in the model's thread (``nearby``, None if it did not run).
        nearby: asyncio.Future[Any] | None = None
        then: Then | None = None
        if where is None and self._nearby is not None and len(texts) == 1:
            nearby = asyncio.get_running_loop().create_future()
            then = functools.partial(self._dense_nearby, namespace, candidates)
        query_at = self._request(texts, then=then, after=nearby)
        lexical = asyncio.ensure_future(
            asyncio.to_thread(
                self.store.search_text, namespace, "\n".join(texts), candidates, where
            )
        )
        embedding = asyncio.ensure_future(self._collect(texts, query_at, self.embed_timeout))
        queued: asyncio.Future[Vectors] | None = None
        erasure: asyncio.Future[builtins.list[Memory]] | None = None
        try:
            pending = [m for m in self.outbox.pending(namespace) if matches(m, where)]
            if pending:
                queued = asyncio.ensure_future(self._embed_texts([m.content for m in pending]))
                if self.shared:  # erased through another gateway since they were queued?
                    erasure = asyncio.ensure_future(self._unerased(namespace, pending))
            rows = await embedding
            query_vec = rows[0] if len(rows) == 1 else _mixed(rows, self.settings.follow_up_weight)
            with self._searches.searching():
                found: tuple[builtins.list[Hit], builtins.list[Memory]] | None = (
                    await nearby if nearby is not None else None
                )
                if found is None:
                    found = await asyncio.to_thread(
                        self._dense, namespace, query_vec, candidates, where
                    )
                dense, unsegmented = found
            if unsegmented:
                self._fill_segments(unsegmented)
            matched = await lexical if dense else []
            hits = fused(dense, matched, k=candidates, fusion_k=self.settings.fusion_k)
            if queued is not None:
                cosines = (await queued) @ query_vec
                if self._segments is not None:  # as they will be once stored
                    cached = [self._segment_cache.get(m.content) for m in pending]
                    cosines = lift(cosines, cached, query_vec, self.settings.segment_weight)
                if erasure is not None:
                    keep = {m.id for m in await erasure}
                    chosen = [i for i, m in enumerate(pending) if m.id in keep]
                    pending, cosines = [pending[i] for i in chosen], cosines[chosen]
                hits.extend(_pending_hits(hits, pending, cosines, candidates))
        finally:
            _discard(lexical, embedding, nearby, queued, erasure)
        current = self.settings.same_subject <= 1.0
        ranked = rank_with(
            self.settings, hits, carried=carried, limit=None if current else k, now=_now()
        )
        if current and len(ranked) > 1:
            # a newer statement is looked for among the first candidates only: those that
            # could come within the cut (the work follows k, not the candidates)
            ranked = await self._current_first(namespace, ranked[: WINDOW * k], query_vec)
        return ranked[:k]

    async def _current_first(
        self, namespace: str, ranked: builtins.list[Hit], query: Vectors
    ) -> builtins.list[Hit]:
        """``memory.current.current_first`` over the ranked candidates: their vectors and
        segment vectors from the caches (queued memories) and the store's local copy."""
        vectors: dict[str, Vectors] = {}
        segments: dict[str, bytes] = {}
        for hit in ranked:  # the caches: on the event loop
            text = hit.memory.content
            if (cached := self._vectors.get(text)) is not None:
                vectors[hit.memory.id] = cached
            if (blob := self._segment_cache.get(text)) is not None:
                segments[hit.memory.id] = blob
        rest = [h.memory.id for h in ranked if h.memory.id not in vectors]
        if rest:
            found, kept = await asyncio.to_thread(self._stored_vectors, namespace, rest)
            vectors.update(found)
            segments.update((mid, blob) for mid, blob in kept.items() if mid not in segments)
        chosen = subject_vectors(ranked, vectors, segments, query)
        return current_first(
            ranked,
            chosen,
            same_subject=self.settings.same_subject,
            margin=self.settings.subject_margin,
        )

    def _stored_vectors(
        self, namespace: str, memory_ids: Sequence[str]
    ) -> tuple[dict[str, Vectors], dict[str, bytes]]:
        """Vectors and encoded segment vectors of stored memories (in a worker thread)."""
        if isinstance(self.store, HybridStore):
            return self.store.subject_vectors(namespace, memory_ids)
        found = {mid: vector for mid, _, vector in self.store.vectors(namespace, memory_ids)}
        return found, {}

    async def list(
        self,
        namespace: str,
        *,
        limit: int,
        after: str | None = None,
        where: Filter | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
    ) -> tuple[builtins.list[Memory], bool]:
        """A page of the namespace's stored memories (passing ``where``), newest first, after
        the cursor ``after``; with ``created_after`` / ``created_before`` (seconds since the
        epoch), only those created at or after the one and strictly before the other."""
        if created_after is None and created_before is None:
            return await asyncio.to_thread(
                self.store.list, namespace, limit=limit, after=after, where=where
            )
        return await asyncio.to_thread(
            page_between,
            self.store,
            namespace,
            limit=limit,
            after=after,
            where=where,
            since=None if created_after is None else micros(created_after),
            until=None if created_before is None else micros(created_before),
        )

    async def get(self, namespace: str, memory_id: str) -> Memory | None:
        found = await asyncio.to_thread(self.store.get, namespace, memory_id)
        if found is None:
            for memory in self.outbox.pending(namespace):
                if memory.id == memory_id:
                    return memory
        return found

    async def update(self, namespace: str, memory_id: str, **changes: Any) -> Memory | None:
        """Change a stored memory's ``content``, ``role`` or ``metadata`` (re-embedded when its
        content changes); the version it replaces is kept (``versions``). None when the store
        holds no such memory; ``StillQueued`` when it is waiting in the write queue."""
        current = await asyncio.to_thread(self.store.get, namespace, memory_id)
        if current is None:
            if any(m.id == memory_id for m in self.outbox.pending(namespace)):
                raise StillQueued(memory_id)
            return None
        changed = msgspec.structs.replace(current, **changes)
        if changed == current:
            return current
        vectors, kept = await self._embed_memories([changed])
        async with self.writer.lock:  # ordered with this gateway's deletes and erasures
            await asyncio.to_thread(self.store.keep_version, current, time.time())
            # A conditional write: a delete or erasure through any gateway since ``get``
            # above wins (see the module's docstring).
            if not await asyncio.to_thread(self.store.replace, changed, vectors):
                # the version just kept goes with the memory
                await asyncio.to_thread(self.store.delete, namespace, memory_id)
                return None
            await asyncio.to_thread(self._keep_segments, kept)
        return changed

    async def versions(self, namespace: str, memory_id: str) -> builtins.list[Version]:
        return await asyncio.to_thread(self.store.versions, namespace, memory_id)

    async def delete(self, namespace: str, memory_id: str) -> bool:
        async with self.writer.lock:
            queued = await asyncio.to_thread(self.outbox.remove, namespace, memory_id)
            stored = await asyncio.to_thread(self.store.delete, namespace, memory_id)
        return queued or stored

    async def delete_where(
        self,
        namespace: str,
        where: Filter | None,
        *,
        created_after: float | None = None,
        created_before: float | None = None,
    ) -> int:
        """Delete the namespace's memories that pass ``where`` and were created at or after
        ``created_after`` and strictly before ``created_before`` (seconds since the epoch):
        the stored ones with their earlier versions, and the queued ones; how many. At least
        one condition is required (``ValueError``): erasing a namespace is
        ``delete_namespace``. Under the writer's lock, as a single delete: no batch of this
        gateway is in flight meanwhile. Memories still queued in another gateway sharing the
        store are not covered (they are written after this delete)."""
        if not where and created_after is None and created_before is None:
            raise ValueError("a delete by filter needs a filter or a time bound")
        since = None if created_after is None else micros(created_after)
        until = None if created_before is None else micros(created_before)

        def chosen(memory: Memory) -> bool:
            return matches(memory, where) and created_in(memory, since, until)

        async with self.writer.lock:
            queued = await asyncio.to_thread(self.outbox.remove_where, namespace, chosen)
            ids = await asyncio.to_thread(
                self.store.ids_where, namespace, where, since=since, until=until
            )
            stored = await asyncio.to_thread(self.store.delete_many, namespace, ids)
        return queued + stored

    async def delete_namespace(self, namespace: str) -> int:
        async with self.writer.lock:
            queued = await asyncio.to_thread(self.outbox.purge_namespace, namespace)
            stored = await asyncio.to_thread(self.store.delete_namespace, namespace)
        return queued + stored

    def queue_problem(self) -> str | None:
        """Why the write queue is failing (its last write failed), or None."""
        return self.outbox.failing

    # -- running -----------------------------------------------------------------------------
    # What the gateway asks of the service as a whole; nothing outside this class touches its
    # store, writer, queue or embedder.

    def start(self) -> None:
        """Start writing the queue to the store (what was queued before is replayed)."""
        self.writer.start()

    async def close(self, flush_seconds: float) -> None:
        """Write what is queued (for at most ``flush_seconds``), then stop the writer and the
        embedder; the store and the queue are their owner's to close."""
        await self.writer.stop(flush_seconds)
        for task in builtins.list(self._fills):
            task.cancel()
        self.embedder.close()

    async def adopt(self, queues: Iterable[Path]) -> int:
        """Move the items of other write queues (of gateways that are gone) into this one,
        ids kept, and have the writer pick them up; how many moved."""
        moved = 0
        for queue in queues:
            moved += await asyncio.to_thread(self.outbox.adopt, queue)
        if moved:
            self.writer.notify()
        return moved

    @property
    def written(self) -> int:
        """Memories the writer stored since the start."""
        return self.writer.written

    async def queue_depth(self) -> int:
        return await asyncio.to_thread(self.outbox.depth)

    async def health(self, store_timeout: float = 5.0) -> dict[str, str]:
        """The state of each part: ``store`` (it answers), ``queue`` (it can be written: a
        full disk is re-probed), ``writer`` (it runs, and the store takes its writes); each
        ``"ok"`` or why not."""
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.ping), store_timeout)
            checks["store"] = "ok"
        except Exception as exc:
            log.warning("health: the store is unavailable: %s", exc)
            checks["store"] = "unavailable"
        problem = await asyncio.to_thread(self.outbox.probe)  # the disk may have room again
        checks["queue"] = "ok" if problem is None else f"failing: {problem}"
        if not self.writer.running:
            checks["writer"] = "stopped"
        elif self.writer.last_error:
            checks["writer"] = "retrying: the store refuses writes"
        else:
            checks["writer"] = "ok"
        return checks

    async def count(self, namespace: str) -> int:
        return await asyncio.to_thread(self.store.count, namespace)

    async def namespaces(
        self, *, limit: int, offset: int = 0
    ) -> tuple[builtins.list[NamespaceCount], bool]:
        return await asyncio.to_thread(self.store.namespaces, limit=limit, offset=offset)


def page_between(
    store: MemoryStore,
    namespace: str,
    *,
    limit: int,
    after: str | None,
    where: Filter | None,
    since: int | None,
    until: int | None,
) -> tuple[builtins.list[Memory], bool]:
    """A page of ``store.list`` (newest first) keeping the memories created in ``[since,
    until)`` (``records.micros``; None: unbounded). The listing is ordered by time, so the
    bounds cost nothing extra: ``until`` becomes the page cursor when it stands before
    ``after`` (a listing starts below it), and the first memory older than ``since`` ends the
    listing. One memory beyond the page is read to tell whether there are more."""
    cursor = after
    if until is not None:
        start = cursor_at(until)
        stamp = None if after is None else id_micros(after)
        if after is None or (stamp is not None and (until, start) < (stamp, after)):
            cursor = start
        # (a cursor id that carries no time is kept; the memories at or after ``until`` it
        # lists are dropped below)
    want = limit + 1
    out: builtins.list[Memory] = []
    while len(out) < want:
        rows, more = store.list(namespace, limit=want - len(out), after=cursor, where=where)
        for memory in rows:
            created = micros(memory.created_at)
            if since is not None and created < since:
                return out[:limit], len(out) > limit
            if until is None or created < until:
                out.append(memory)
        if not more or not rows:
            break
        cursor = rows[-1].id
    return out[:limit], len(out) > limit


def _discard(*futures: asyncio.Future[Any] | None) -> None:
    """Cancel what is left of a recall's side tasks once it is over (they matter only when it
    failed half-way), retrieving any failure so that it is not reported as never retrieved:
    the recall reported its own."""
    for future in futures:
        if future is None:
            continue
        future.cancel()
        if future.done() and not future.cancelled():
            future.exception()


def _with_parts(memories: Sequence[Memory], rows: Vectors) -> builtins.list[tuple[Memory, bytes]]:
    by_text = dict(encoded_parts([m.content for m in memories], rows))
    return [(m, by_text[m.content]) for m in memories if m.content in by_text]


def _mixed(rows: Vectors, weight: float) -> Vectors:
    """A follow-up's query vector: its own (``rows[0]``) plus ``weight`` times its context's
    (``rows[1]``), normalised."""
    mixed = rows[0] + weight * rows[1]
    norm = float(np.linalg.norm(mixed))
    out: Vectors = mixed / norm if norm > 0 else rows[0]
    return out


def _now() -> float:
    return time.time()


def _pending_hits(
    stored: builtins.list[Hit], pending: Sequence[Memory], cosines: Vectors, limit: int
) -> builtins.list[Hit]:
    """Hits for the ``limit`` most similar memories still queued (the store's side is cut at
    as many), scored like the store's hits: their cosine when the store ranks by cosine; with
    fused scores, the score of the weakest stored hit at least as similar (a hair below it),
    or the best score when none is. Vectorised: a queue grows under load, and every recall of
    its namespace reads it."""
    if len(pending) > limit:
        chosen = np.argsort(-cosines, kind="stable")[:limit]
        pending, cosines = [pending[i] for i in chosen], cosines[chosen]
    similarity = np.asarray(cosines, dtype=np.float64)
    scores = similarity
    if any(h.score != h.cosine for h in stored):  # fused
        stored_cos = np.array([h.cosine for h in stored])
        stored_score = np.array([h.score for h in stored])
        order = np.argsort(-stored_cos, kind="stable")
        # the weakest score among the n most similar stored hits, for every n
        weakest = np.minimum.accumulate(stored_score[order])
        # how many stored hits are at least as similar as each queued memory
        ascending = stored_cos[order][::-1]
        n = len(stored) - np.searchsorted(ascending, similarity, side="left")
        best = float(stored_score.max())
        scores = np.where(n > 0, weakest[np.maximum(n, 1) - 1] * 0.999, best)
    return [
        Hit(memory, float(score), float(cosine))
        for memory, score, cosine in zip(pending, scores, similarity, strict=True)
    ]
