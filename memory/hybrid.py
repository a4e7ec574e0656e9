"""``HybridStore``: a ``MemoryStore`` with a local copy of each namespace beside it.

Wraps any store (Chroma, in this process or in its own): the local copy (``LocalCopy``:
the namespace's memories in listing order, and their BM25 index) answers the lexical side of
recall, the memories of dense hits, and pages of a listing. The wrapped store is the one
truth; the copy is derived from it and never answers with what the store no longer holds:

- **Confirmed on read, where it can be behind.** With a shared store, what the copy proposes
  (lexical matches, a page of a listing) is checked against the store (``existing``: ids
  only) before it is returned; what is gone is dropped and removed from the copy. Alone on
  its store, a gateway makes its copy a subset of the store by the order of its own writes (a
  memory goes into the copy after the store, under the namespace's lock; out of the copy
  before the store, under the same lock), so its lexical matches are returned as they are
  (the check was a tenth of a memory chat's cost at c=32); pages are still checked.
- **Dense hits from the copy when alone.** With a shared store they come from the store
  itself (a memory written through another gateway is found densely at once). Alone on its
  store, the copy holds each memory's vector (written with it, in the same order as above),
  and a namespace whose memories all have one (at most ``dense.MAX_ROWS``) is searched in
  memory: no round trip to the store. Vectors the copy lacks (memories it read from the
  store, a copy made before it kept them) are read from the store in the background; until
  then the store answers.
- **Caught up, not rebuilt.** Before a lexical search or a listing, a namespace is brought
  up to date with ``changes``: the memories written since the copy last looked (less a
  margin for clocks and slow writes), so the work follows what changed. With a shared store
  (several gateways on one Chroma server) this happens at most every ``sync_interval``
  seconds a namespace: a memory written through another gateway is found lexically within
  that, and densely at once. Alone on its store, a gateway only checks once a namespace
  after it starts (its own writes keep the copy in step). A namespace written before this
  process looked at it is caught up in the background right after the write, so that its
  first recall does not wait for that (a copy never compared with the store reads the whole
  namespace from it).
- **Erasure is a new generation.** A namespace erased through any gateway comes back (if
  written again) as a new generation: a copy of an older one is thrown away.
- **Verified in the background.** Once a namespace after start (and, shared, at most every
  ``verify_interval`` seconds), a background thread compares the copy's count with the
  store's; if they disagree twice, a moment apart, the copy is compared id by id with the
  store (at most every ``repair_interval`` seconds a namespace). This catches deletions made
  through other gateways that no read has met yet, writes that reached the store later than
  the margin, and a gateway that stopped between a store write and its copy's. Counting is
  kept off the request path: on a Chroma of 10,000 collections a count costs 6-20 ms.

Locks: one lock a namespace (striped) serializes its catch-up, repair, deletes, erasure and
the copy side of its writes (alone on the store, the store side too: a write holds the locks
of its namespaces' stripes, taken in stripe order); the copy's own locks are taken inside it,
never the other way round.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from memory import dense
from memory.local_copy import LocalCopy, NamespaceCopy
from memory.records import Filter, Hit, Memory, Vectors, id_micros, matches, sort_key
from memory.store import Changes, CursorNotFound, MemoryStore, NamespaceCount, Version

log = logging.getLogger("memgate.store")

_STRIPES = 64
_TRACKED = 10_000  # namespaces whose catch-up times are remembered (LRU)
_GET = 1000  # memories fetched from the store a call when repairing
# Tuning constants of the background checks (see the module's docstring; the catch-up's
# interval and margin are settings: store.sync_interval_seconds, store.sync_margin_seconds).
VERIFY_INTERVAL = 10.0  # seconds between two count comparisons of a shared namespace
REPAIR_INTERVAL = 30.0  # seconds between two id-by-id repairs of a namespace
RECOUNT_DELAY = 0.5  # seconds before counting again when the counts disagreed


@dataclass
class _Sync:
    """When a namespace's copy was last caught up, verified and repaired (monotonic)."""

    checked: float = -1e18
    verified: float = -1e18
    repaired: float = -1e18
    filled: float = -1e18  # vectors last read from the store


class HybridStore:
    def __init__(
        self,
        store: MemoryStore,
        copy: LocalCopy,
        *,
        lexical_recall: bool = True,
        shared: bool = False,
        sync_interval: float = 1.0,
        sync_margin: float = 5.0,
        verify_interval: float = VERIFY_INTERVAL,
        repair_interval: float = REPAIR_INTERVAL,
        recount_delay: float = RECOUNT_DELAY,
    ) -> None:
        """``shared``: other processes may write to ``store`` (a Chroma server);
        ``lexical_recall``: ``search_text`` answers (else the copy serves listings only)."""
        self.store = store
        self.copy = copy
        self.lexical_recall = lexical_recall
        self.shared = shared
        self.sync_interval = sync_interval
        self.sync_margin = sync_margin
        self.verify_interval = verify_interval
        self.repair_interval = repair_interval
        self.recount_delay = recount_delay
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._sync: OrderedDict[str, _Sync] = OrderedDict()
        self._sync_lock = threading.Lock()
        # counts compared and copies repaired in the background, one namespace at a time
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="memgate-verify")
        self._background: set[str] = set()
        self._filling: set[str] = set()
        self._catching: set[str] = set()

    def _lock(self, namespace: str) -> threading.Lock:
        return self._stripes[hash(namespace) % _STRIPES]

    def _state(self, namespace: str) -> _Sync:
        with self._sync_lock:
            state = self._sync.get(namespace)
            if state is None:
                state = self._sync[namespace] = _Sync()
                while len(self._sync) > _TRACKED:
                    self._sync.popitem(last=False)
            else:
                self._sync.move_to_end(namespace)
            return state

    # -- keeping the copy in step ------------------------------------------------------------

    def catch_up(self, namespace: str, *, force: bool = False) -> None:
        """Bring the namespace's copy up to date if it is due (see the module's docstring)."""
        state = self._state(namespace)
        if not force and not self._due(state):
            return
        with self._lock(namespace):
            if force or self._due(state):  # else another thread did it while this one waited
                self._catch_up_locked(namespace, state)
        self._verify_soon(namespace, state)

    def _due(self, state: _Sync) -> bool:
        if state.checked < -1e17:
            return True  # never looked at since this process started
        return self.shared and time.monotonic() - state.checked >= self.sync_interval

    def _catch_up_locked(self, namespace: str, state: _Sync) -> None:
        state.checked = time.monotonic()
        local = self.copy.state(namespace)
        generation = local.get("generation")
        checked_from = local.get("checked_from")
        if generation is not None and checked_from is not None and not self.shared:
            # Alone on the store, only this gateway writes and erases: its copy is in step,
            # unless it stopped between a store write and its copy's (``_verify`` tells).
            return
        started = time.time()
        since = (
            None if generation is None or checked_from is None else checked_from - self.sync_margin
        )
        changes = self.store.changes(namespace, since)
        if changes.generation != generation and since is not None:
            # erased through another gateway (and maybe written again since): start over
            changes = self.store.changes(namespace, None)
        if changes.generation is None:
            self.copy.drop(namespace)
        else:
            fresh = changes.generation != generation or since is None
            self.copy.write(namespace, lambda index: _apply(index, changes, started, replace=fresh))

    def _verify_soon(self, namespace: str, state: _Sync) -> None:
        """Compare the copy's count with the store's, in the background: once a namespace
        after start, then at most every ``verify_interval`` seconds when shared."""
        now = time.monotonic()
        with self._sync_lock:
            if namespace in self._background:
                return
            if state.verified > -1e17 and (
                not self.shared or now - state.verified < self.verify_interval
            ):
                return
            state.verified = now
            self._background.add(namespace)
        self._submit(self._background, namespace, lambda: self._verify(namespace, state))

    def _submit(self, running: set[str], namespace: str, work: Callable[[], None]) -> None:
        """``work`` on the background thread; ``namespace`` (which the caller put in
        ``running`` under ``_sync_lock``, and ``work`` takes out when it ends) is taken out at
        once if it cannot start (closing)."""
        try:
            self._worker.submit(work)
        except RuntimeError:
            with self._sync_lock:
                running.discard(namespace)

    def _verify(self, namespace: str, state: _Sync) -> None:
        """Counts that disagree twice, a moment apart and each right after a catch-up (a
        write may be between the store and the copy), make the copy be repaired, at most
        every ``repair_interval`` seconds a namespace."""
        try:
            for attempt in range(2):
                if attempt:
                    time.sleep(self.recount_delay)
                with self._lock(namespace):
                    if self.shared:
                        self._catch_up_locked(namespace, state)
                    local = self.copy.count(namespace)
                    truth = self.store.count(namespace)
                if local == truth:
                    return
            if time.monotonic() - state.repaired >= self.repair_interval:
                state.repaired = time.monotonic()
                self._repair(namespace)
        except Exception as exc:
            log.warning("could not check the local copy of %s: %s", namespace, exc)
        finally:
            with self._sync_lock:
                self._background.discard(namespace)

    def _repair(self, namespace: str) -> None:
        """Make the copy hold exactly the store's ids (costs the namespace's ids)."""
        with self._lock(namespace):
            truth = self.store.ids(namespace)
            local = self.copy.ids(namespace)
            missing = builtins.list(truth - local)
            fetched: builtins.list[Memory] = []
            for start in range(0, len(missing), _GET):
                fetched += self.store.get_many(namespace, missing[start : start + _GET])
            gone = local - truth
            if gone:
                self.copy.delete(namespace, gone)
            if fetched:
                self.copy.add(fetched)
        if gone or fetched:
            log.info(
                "local copy of %s repaired: %d removed, %d added",
                namespace,
                len(gone),
                len(fetched),
            )

    def _fill_soon(self, namespace: str) -> None:
        """Read the vectors the namespace's copy lacks from the store, in the background (at
        most every ``repair_interval`` seconds a namespace)."""
        state = self._state(namespace)
        now = time.monotonic()
        with self._sync_lock:
            if namespace in self._filling or now - state.filled < self.repair_interval:
                return
            state.filled = now
            self._filling.add(namespace)
        self._submit(self._filling, namespace, lambda: self._fill(namespace))

    def _fill(self, namespace: str) -> None:
        try:
            if self.copy.count(namespace) > dense.MAX_ROWS:
                return  # the store answers anyway
            missing = self.copy.unvectored(namespace)
            for start in range(0, len(missing), _GET):
                found = self.store.vectors(namespace, missing[start : start + _GET])
                self.copy.fill_vectors(
                    namespace, [(mid, content, dense.encode(v)) for mid, content, v in found]
                )
            if missing:
                log.info(
                    "local copy of %s: %d vectors read from the store", namespace, len(missing)
                )
        except Exception as exc:
            log.warning("could not read the vectors of %s from the store: %s", namespace, exc)
        finally:
            with self._sync_lock:
                self._filling.discard(namespace)

    def _confirmed(self, namespace: str, memories: Sequence[Memory]) -> set[str]:
        """The ids of ``memories`` the store still holds; the others leave the copy."""
        if not memories:
            return set()
        present = self.store.existing(namespace, [m.id for m in memories])
        gone = [m.id for m in memories if m.id not in present]
        if gone:
            self.copy.delete(namespace, gone)
        return present

    # -- MemoryStore -------------------------------------------------------------------------

    def add(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        by_ns: dict[str, builtins.list[Memory]] = {}
        for memory in memories:
            by_ns.setdefault(memory.namespace, []).append(memory)
        if self.shared:
            self.store.add(memories, vectors)
            for namespace, items in by_ns.items():
                with self._lock(namespace):
                    self.copy.add(items)
        else:
            encoded = {m.id: dense.encode(v) for m, v in zip(memories, vectors, strict=True)}
            # Alone on the store: the store's write and the copy's under the namespaces' locks
            # (taken in one order), so that no delete or erasure falls between the two.
            with contextlib.ExitStack() as held:
                for stripe in sorted({hash(namespace) % _STRIPES for namespace in by_ns}):
                    held.enter_context(self._stripes[stripe])
                self.store.add(memories, vectors)
                for items in by_ns.values():
                    self.copy.add(items, encoded)
        self._catch_up_soon(by_ns)

    def replace(self, memory: Memory, vectors: Vectors) -> bool:
        """The store's conditional write first; the copy follows what the store says (a
        memory the store no longer holds leaves the copy too). Alone on the store, both
        under the namespace's lock, as in ``add``."""
        namespace = memory.namespace
        with contextlib.ExitStack() as held:
            if not self.shared:
                held.enter_context(self._lock(namespace))
            replaced = self.store.replace(memory, vectors)
            if self.shared:
                held.enter_context(self._lock(namespace))
            if not replaced:
                self.copy.delete(namespace, [memory.id])
            elif self.shared:
                self.copy.add([memory])
            else:
                self.copy.add([memory], {memory.id: dense.encode(vectors[0])})
        return replaced

    def _catch_up_soon(self, namespaces: Collection[str]) -> None:
        """Catch up, in the background, the namespaces written before this process looked at
        their copies: a copy that writes made has never been compared with the store, and its
        first catch-up reads the whole namespace from it, which its first recall would wait
        for (~6 ms a namespace of 10 on a store of 2,000 namespaces, py-spy)."""
        for namespace in namespaces:
            if self._state(namespace).checked > -1e17:
                continue
            with self._sync_lock:
                if namespace in self._catching:
                    continue
                self._catching.add(namespace)
            self._submit(
                self._catching, namespace, functools.partial(self._background_catch_up, namespace)
            )

    def _background_catch_up(self, namespace: str) -> None:
        """``catch_up``, then (alone on the store) the vectors of what it read."""
        try:
            self.catch_up(namespace)
        except Exception as exc:  # the next recall catches up (and says what is wrong)
            log.warning("could not bring the local copy of %s up to date: %s", namespace, exc)
            return
        finally:
            with self._sync_lock:
                self._catching.discard(namespace)
        if not self.shared:
            self._fill(namespace)

    def search(
        self, namespace: str, vector: Vectors, k: int, where: Filter | None = None
    ) -> builtins.list[Hit]:
        """The dense ranking, its memories read from the local copy: alone on the store, from
        the copy's vectors when it has them all (see the module's docstring); else the store
        is asked for ids and cosines only, which is cheaper, and for the memories the copy
        lacks."""
        return self._search(namespace, vector, k, where, segmented=False)[0]

    def search_segmented(
        self, namespace: str, vector: Vectors, k: int, where: Filter | None = None
    ) -> tuple[builtins.list[Hit], dict[str, bytes]]:
        """``search``, and the copy's encoded segment vectors of the hits that have them,
        read with their memories."""
        return self._search(namespace, vector, k, where, segmented=True)

    def search_nearby(
        self, namespace: str, vector: Vectors, k: int, *, segmented: bool
    ) -> tuple[builtins.list[Hit], dict[str, bytes]] | None:
        """``search_segmented`` (``segmented``) or ``search`` with no filter, from the copy's
        vectors alone: None, at once, when answering would need the store (shared, the copy
        due to be caught up, or without all the vectors). A recall runs it in the model's
        thread, right after its query's call, where nothing may wait for the store."""
        if self.shared or self._due(self._state(namespace)):
            return None
        return self._from_copy(namespace, vector, k, segmented=segmented)

    def _from_copy(
        self, namespace: str, vector: Vectors, k: int, *, segmented: bool
    ) -> tuple[builtins.list[Hit], dict[str, bytes]] | None:
        """The dense ranking from the copy's vectors, None if they cannot answer."""
        local = self.copy.nearest(namespace, vector, k, segmented=segmented)
        if local is None:
            return None
        return [Hit(m, cos, cos) for m, cos in local[0]], local[1]

    def _search(
        self, namespace: str, vector: Vectors, k: int, where: Filter | None, *, segmented: bool
    ) -> tuple[builtins.list[Hit], dict[str, bytes]]:
        if not self.shared and where is None:
            self.catch_up(namespace)
            local = self._from_copy(namespace, vector, k, segmented=segmented)
            if local is not None:
                return local
            self._fill_soon(namespace)
        ranked = self.store.nearest(namespace, vector, k, where)
        ids = [mid for mid, _ in ranked]
        if segmented:
            found, segments = self.copy.memories_and_segments(namespace, ids)
        else:
            found, segments = self.copy.memories(namespace, ids), {}
        missing = [mid for mid in ids if mid not in found]
        if missing:
            fetched = self.store.get_many(namespace, missing)
            found.update((m.id, m) for m in fetched)
        return [Hit(found[mid], cos, cos) for mid, cos in ranked if mid in found], segments

    def nearest(
        self, namespace: str, vector: Vectors, k: int, where: Filter | None = None
    ) -> builtins.list[tuple[str, float]]:
        return self.store.nearest(namespace, vector, k, where)

    def segment_vectors(self, namespace: str, memory_ids: Sequence[str]) -> dict[str, bytes]:
        """The copy's encoded segment vectors (``memory.segments``) of those of
        ``memory_ids`` that have them."""
        return self.copy.segment_vectors(namespace, memory_ids)

    def subject_vectors(
        self, namespace: str, memory_ids: Sequence[str]
    ) -> tuple[dict[str, Vectors], dict[str, bytes]]:
        """The vectors of ``memory_ids`` (the copy's, else the store's) and the copy's encoded
        segment vectors of those that have them (``memory.current``)."""
        kept, segments = self.copy.vectors_and_segments(namespace, memory_ids)
        found = {mid: dense.decode(blob) for mid, blob in kept.items()}
        missing = [mid for mid in memory_ids if mid not in found]
        if missing:
            found.update((mid, vector) for mid, _, vector in self.store.vectors(namespace, missing))
        return found, segments

    def keep_segments(self, namespace: str, items: Sequence[tuple[str, str, bytes]]) -> None:
        """Keep segment vectors in the copy, beside their memories (dropped with them):
        (memory id, the content they were computed from, encoded vectors)."""
        self.copy.keep_segments(namespace, items)

    def search_text(
        self, namespace: str, text: str, k: int, where: Filter | None = None
    ) -> builtins.list[tuple[Memory, float]]:
        """The copy's BM25 matches (with a filter: among the best 4k, those that pass it),
        each confirmed in the store."""
        if k <= 0 or not text.strip() or not self.lexical_recall:
            return []
        self.catch_up(namespace)
        matched = self.copy.search(namespace, text, k * 4 if where else k)
        if where:
            matched = [(m, s) for m, s in matched if matches(m, where)][:k]
        if not self.shared:
            return matched  # the copy holds nothing the store does not (see the docstring)
        present = self._confirmed(namespace, [m for m, _ in matched])
        return [(m, score) for m, score in matched if m.id in present]

    def list(
        self,
        namespace: str,
        *,
        limit: int,
        after: str | None = None,
        where: Filter | None = None,
    ) -> tuple[builtins.list[Memory], bool]:
        """A page from the local copy (caught up first), each memory confirmed in the store:
        the cost of the page, whatever the namespace's size (with a filter, the cost of the
        rows read to fill it)."""
        self.catch_up(namespace)
        before: tuple[int, str] | None = None
        if after is not None:
            stamp = id_micros(after)
            before = (stamp, after) if stamp is not None else self.copy.cursor(namespace, after)
            if before is None:
                raise CursorNotFound(after)
        out: builtins.list[Memory] = []
        while len(out) <= limit:
            want = limit + 1 - len(out)
            rows = self.copy.page(namespace, before, max(want, 100) if where else want)
            if not rows:
                break
            before = sort_key(rows[-1])
            wanted = [m for m in rows if matches(m, where)]
            present = self._confirmed(namespace, wanted)
            out += [m for m in wanted if m.id in present]
        return out[:limit], len(out) > limit

    def get(self, namespace: str, memory_id: str) -> Memory | None:
        return self.store.get(namespace, memory_id)

    def get_many(self, namespace: str, memory_ids: Sequence[str]) -> builtins.list[Memory]:
        return self.store.get_many(namespace, memory_ids)

    def existing(self, namespace: str, memory_ids: Collection[str]) -> set[str]:
        return self.store.existing(namespace, memory_ids)

    def vectors(
        self, namespace: str, memory_ids: Sequence[str]
    ) -> builtins.list[tuple[str, str, Vectors]]:
        return self.store.vectors(namespace, memory_ids)

    def ids(self, namespace: str) -> set[str]:
        return self.store.ids(namespace)

    def changes(self, namespace: str, since: float | None) -> Changes:
        return self.store.changes(namespace, since)

    def keep_version(self, memory: Memory, changed_at: float) -> None:
        self.store.keep_version(memory, changed_at)

    def versions(self, namespace: str, memory_id: str) -> builtins.list[Version]:
        return self.store.versions(namespace, memory_id)

    def delete(self, namespace: str, memory_id: str) -> bool:
        """Out of the copy first, then out of the store: a failure in between leaves the copy
        without a memory the store still holds (it is checked again, and repaired), never
        the other way round."""
        with self._lock(namespace):
            self.copy.delete(namespace, [memory_id])
            try:
                return self.store.delete(namespace, memory_id)
            except BaseException:
                self._check_again(namespace)
                raise

    def ids_where(
        self,
        namespace: str,
        where: Filter | None,
        *,
        since: int | None = None,
        until: int | None = None,
    ) -> set[str]:
        return self.store.ids_where(namespace, where, since=since, until=until)

    def delete_many(self, namespace: str, memory_ids: Collection[str]) -> int:
        """As ``delete``: out of the copy first, then out of the store."""
        with self._lock(namespace):
            self.copy.delete(namespace, builtins.list(memory_ids))
            try:
                return self.store.delete_many(namespace, memory_ids)
            except BaseException:
                self._check_again(namespace)
                raise

    def delete_namespace(self, namespace: str) -> int:
        """The copy is thrown away first, then the store's namespace erased; the copy is read
        again from the store at the namespace's next use (all of it, if the erasure failed)."""
        with self._lock(namespace):
            self.copy.drop(namespace)
            try:
                return self.store.delete_namespace(namespace)
            finally:
                self._state(namespace).checked = -1e18

    def _check_again(self, namespace: str) -> None:
        """Compare the namespace's copy with the store again soon, whatever the intervals."""
        state = self._state(namespace)
        state.verified = state.repaired = -1e18
        self._verify_soon(namespace, state)

    def erasures(self, namespaces: Collection[str]) -> dict[str, float]:
        return self.store.erasures(namespaces)

    def count(self, namespace: str) -> int:
        return self.store.count(namespace)

    def namespaces(
        self, *, limit: int, offset: int = 0
    ) -> tuple[builtins.list[NamespaceCount], bool]:
        return self.store.namespaces(limit=limit, offset=offset)

    def ping(self) -> None:
        self.store.ping()

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
        try:
            self.store.close()
        finally:
            self.copy.close()


def _apply(index: NamespaceCopy, changes: Changes, started: float, *, replace: bool) -> None:
    """Apply a catch-up's changes to the namespace's copy."""
    with index.transaction():
        if replace:
            index.replace(changes.memories)
        else:
            index.put(changes.memories)
        index.set_state(generation=changes.generation, checked_from=started)
