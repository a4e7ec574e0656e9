"""``HybridStore``: a ``MemoryStore`` with a lexical (BM25) index beside its dense one.

Wraps any store (Chroma, in this process or in its own): every write goes to both, a search
fuses the dense ranking with the lexical one (``recall.hybrid``). The lexical index is local
derived data: the wrapped store is the truth, and a namespace's index is rebuilt from it when
their counts disagree (the index is new, or, with a shared Chroma server, another gateway
process wrote to it).
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Sequence

from memory.embedder import Vectors
from memory.lexical import LexicalIndex
from memory.recall import hybrid
from memory.records import Hit, Memory
from memory.store import MemoryStore

_PAGE = 10_000


class HybridStore:
    def __init__(
        self,
        store: MemoryStore,
        lexical: LexicalIndex,
        *,
        fusion_k: float = 5.0,
        shared: bool = False,
    ) -> None:
        """``shared``: other processes may write to ``store`` (a Chroma server), so the
        counts are compared at every lexical search, not once a namespace."""
        self.store = store
        self.lexical = lexical
        self.fusion_k = fusion_k
        self.shared = shared
        self._synced: set[str] = set()
        # One lock a namespace: a rebuild of its index, an erase and the index side of a
        # write never interleave (a rebuild listing the store just before an erase would
        # bring erased memories back; one listing it before a write would lose the write).
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def _lock(self, namespace: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(namespace, threading.Lock())

    def add(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        self.store.add(memories, vectors)
        by_ns: dict[str, builtins.list[Memory]] = {}
        for memory in memories:
            by_ns.setdefault(memory.namespace, []).append(memory)
        for namespace, items in by_ns.items():
            with self._lock(namespace):
                self.lexical.add(items)

    def search(self, namespace: str, vector: Vectors, k: int, text: str = "") -> builtins.list[Hit]:
        """The dense ranking, its memories read from the local index (the store is asked only
        for ids and cosines, which is cheaper; it is asked for the ones the index lacks), fused
        with the lexical one when ``text`` is given."""
        ranked = self.store.nearest(namespace, vector, k)
        found = self.lexical.memories(namespace, [mid for mid, _ in ranked])
        missing = [mid for mid, _ in ranked if mid not in found]
        if missing:
            found.update((m.id, m) for m in self.store.get_many(namespace, missing))
        dense = [Hit(found[mid], cos, cos) for mid, cos in ranked if mid in found]
        if not dense or not text.strip():
            return dense
        return hybrid(dense, self.search_text(namespace, text, k), k=k, fusion_k=self.fusion_k)

    def nearest(self, namespace: str, vector: Vectors, k: int) -> builtins.list[tuple[str, float]]:
        return self.store.nearest(namespace, vector, k)

    def search_text(self, namespace: str, text: str, k: int) -> builtins.list[tuple[Memory, float]]:
        if k <= 0 or not text.strip():
            return []
        self._sync(namespace)
        return self.lexical.search(namespace, text, k)

    def _sync(self, namespace: str) -> None:
        if namespace in self._synced:
            return
        with self._lock(namespace):
            self._sync_locked(namespace)

    def _sync_locked(self, namespace: str) -> None:
        if namespace in self._synced:
            return
        if self.lexical.count(namespace) != self.store.count(namespace):
            memories: builtins.list[Memory] = []
            after: str | None = None
            while True:
                page, more = self.store.list(namespace, limit=_PAGE, after=after)
                memories += page
                if not more or not page:
                    break
                after = page[-1].id
            self.lexical.rebuild(namespace, memories)
        if not self.shared:
            self._synced.add(namespace)

    def list(
        self, namespace: str, *, limit: int, after: str | None = None
    ) -> tuple[builtins.list[Memory], bool]:
        return self.store.list(namespace, limit=limit, after=after)

    def get(self, namespace: str, memory_id: str) -> Memory | None:
        return self.store.get(namespace, memory_id)

    def get_many(self, namespace: str, memory_ids: Sequence[str]) -> builtins.list[Memory]:
        return self.store.get_many(namespace, memory_ids)

    def delete(self, namespace: str, memory_id: str) -> bool:
        with self._lock(namespace):
            found = self.store.delete(namespace, memory_id)
            self.lexical.delete(namespace, [memory_id])
        return found

    def delete_namespace(self, namespace: str) -> int:
        with self._lock(namespace):
            erased = self.store.delete_namespace(namespace)
            self.lexical.drop(namespace)
            self._synced.discard(namespace)
        return erased

    def count(self, namespace: str) -> int:
        return self.store.count(namespace)

    def namespaces(self) -> builtins.list[str]:
        return self.store.namespaces()

    def ping(self) -> None:
        self.store.ping()

    def close(self) -> None:
        try:
            self.store.close()
        finally:
            self.lexical.close()
