"""Test doubles: a deterministic embedder and an in-memory store (unit tests only)."""

from __future__ import annotations

import gc
import hashlib
import itertools
import re
import threading
import time
from collections.abc import Collection, Sequence

import numpy as np

from memory.records import Filter, Hit, Memory, Vectors, created_in, matches
from memory.store import Changes, NamespaceCount, StoreUnavailable, Version, page_of

_WORD = re.compile(r"\w+")


class FakeEmbedder:
    """Bag of hashed words, L2-normalised: texts sharing words are close."""

    def __init__(self, dimension: int = 256) -> None:
        self._dimension = dimension
        self.calls: list[list[str]] = []

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                h = int.from_bytes(hashlib.md5(word.encode()).digest()[:4], "little")  # noqa: S324
                out[i, h % self._dimension] += 1.0
            norm = float(np.linalg.norm(out[i]))
            if norm:
                out[i] /= norm
        return out


class MemStore:
    """An in-memory ``MemoryStore`` with brute-force cosine search; ``down`` simulates an
    outage. Several ``HybridStore``s over one ``MemStore`` behave like gateways sharing a
    Chroma server."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, tuple[Memory, Vectors]]] = {}
        self.stamps: dict[str, float] = {}  # memory id -> when it was last written
        self.generations: dict[str, str] = {}
        self.erased: dict[str, float] = {}
        self.history: dict[tuple[str, str], list[Version]] = {}
        self.down = False
        self.adds = 0
        self.calls: list[str] = []
        self._serial = itertools.count(1)
        self._lock = threading.Lock()

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.down:
            raise StoreUnavailable("fake store is down")

    def add(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        self._check("add")
        stamp = time.time()
        with self._lock:
            for memory, vector in zip(memories, vectors, strict=True):
                ns = memory.namespace
                if ns not in self.rows:
                    self.rows[ns] = {}
                    self.generations[ns] = f"g{next(self._serial)}"
                self.rows[ns][memory.id] = (memory, vector)
                self.stamps[memory.id] = stamp
            self.adds += len(memories)

    def replace(self, memory: Memory, vectors: Vectors) -> bool:
        self._check("replace")
        with self._lock:
            rows = self.rows.get(memory.namespace, {})
            if memory.id not in rows:
                return False
            rows[memory.id] = (memory, vectors[0])
            self.stamps[memory.id] = time.time()
            return True

    def search(
        self, namespace: str, vector: Vectors, k: int, where: Filter | None = None
    ) -> list[Hit]:
        self._check("search")
        rows = [(m, v) for m, v in self.rows.get(namespace, {}).values() if matches(m, where)]
        hits = [Hit(m, float(v @ vector), float(v @ vector)) for m, v in rows]
        return sorted(hits, key=lambda h: h.score, reverse=True)[:k]

    def nearest(
        self, namespace: str, vector: Vectors, k: int, where: Filter | None = None
    ) -> list[tuple[str, float]]:
        return [(h.memory.id, h.score) for h in self.search(namespace, vector, k, where=where)]

    def search_text(
        self, namespace: str, text: str, k: int, where: Filter | None = None
    ) -> list[tuple[Memory, float]]:
        self._check("search_text")  # no lexical index
        return []

    def list(
        self,
        namespace: str,
        *,
        limit: int,
        after: str | None = None,
        where: Filter | None = None,
    ) -> tuple[list[Memory], bool]:
        self._check("list")
        rows = self.rows.get(namespace, {}).values()
        return page_of([m for m, _ in rows], limit=limit, after=after, where=where)

    def get_many(self, namespace: str, memory_ids: Sequence[str]) -> list[Memory]:
        self._check("get_many")
        rows = self.rows.get(namespace, {})
        return [rows[i][0] for i in memory_ids if i in rows]

    def get(self, namespace: str, memory_id: str) -> Memory | None:
        found = self.get_many(namespace, [memory_id])
        return found[0] if found else None

    def existing(self, namespace: str, memory_ids: Collection[str]) -> set[str]:
        self._check("existing")
        rows = self.rows.get(namespace, {})
        return {i for i in memory_ids if i in rows}

    def vectors(self, namespace: str, memory_ids: Sequence[str]) -> list[tuple[str, str, Vectors]]:
        self._check("vectors")
        rows = self.rows.get(namespace, {})
        return [(i, rows[i][0].content, rows[i][1]) for i in memory_ids if i in rows]

    def ids(self, namespace: str) -> set[str]:
        self._check("ids")
        return set(self.rows.get(namespace, {}))

    def changes(self, namespace: str, since: float | None) -> Changes:
        self._check("changes")
        with self._lock:
            rows = self.rows.get(namespace)
            if rows is None:
                return Changes(None, [])
            found = [m for m, _ in rows.values() if since is None or self.stamps[m.id] >= since]
            return Changes(self.generations[namespace], found)

    def keep_version(self, memory: Memory, changed_at: float) -> None:
        self._check("keep_version")
        self.history.setdefault((memory.namespace, memory.id), []).append(
            Version(memory, changed_at)
        )

    def versions(self, namespace: str, memory_id: str) -> list[Version]:
        self._check("versions")
        return sorted(self.history.get((namespace, memory_id), []), key=lambda v: v.replaced_at)

    def delete(self, namespace: str, memory_id: str) -> bool:
        self._check("delete")
        self.history.pop((namespace, memory_id), None)
        return self.rows.get(namespace, {}).pop(memory_id, None) is not None

    def ids_where(
        self,
        namespace: str,
        where: Filter | None,
        *,
        since: int | None = None,
        until: int | None = None,
    ) -> set[str]:
        self._check("ids_where")
        rows = list(self.rows.get(namespace, {}).values())
        return {m.id for m, _ in rows if matches(m, where) and created_in(m, since, until)}

    def delete_many(self, namespace: str, memory_ids: Collection[str]) -> int:
        self._check("delete_many")
        with self._lock:
            rows = self.rows.get(namespace, {})
            for memory_id in memory_ids:
                self.history.pop((namespace, memory_id), None)
            return sum(rows.pop(memory_id, None) is not None for memory_id in memory_ids)

    def delete_namespace(self, namespace: str) -> int:
        self._check("delete_namespace")
        with self._lock:
            self.erased[namespace] = time.time()
            for key in [k for k in self.history if k[0] == namespace]:
                del self.history[key]
            self.generations.pop(namespace, None)
            return len(self.rows.pop(namespace, {}))

    def erasures(self, namespaces: Collection[str]) -> dict[str, float]:
        self._check("erasures")
        return {ns: self.erased[ns] for ns in namespaces if ns in self.erased}

    def count(self, namespace: str) -> int:
        self._check("count")
        return len(self.rows.get(namespace, {}))

    def namespaces(self, *, limit: int, offset: int = 0) -> tuple[list[NamespaceCount], bool]:
        self._check("namespaces")
        names = sorted(self.rows)
        page = [NamespaceCount(n, len(self.rows[n])) for n in names[offset : offset + limit]]
        return page, len(names) > offset + limit

    def ping(self) -> None:
        self._check("ping")

    def close(self) -> None:
        return None

    def contents(self, namespace: str) -> list[str]:
        return [m.content for m, _ in self.rows.get(namespace, {}).values()]


class Unpicklable(Exception):
    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("cannot pickle this")


class FailingStore(MemStore):
    """A ``MemStore`` whose ``ping`` says the store is down and whose ``namespaces`` fails
    with an exception that cannot cross a process boundary."""

    def ping(self) -> None:
        raise StoreUnavailable("fake store is down")

    def namespaces(self, *, limit: int, offset: int = 0) -> tuple[list[NamespaceCount], bool]:
        raise Unpicklable("no pickle")

    def get_many(self, namespace: str, memory_ids: Sequence[str]) -> list[Memory]:
        return [lambda: None]  # type: ignore[list-item]  # an answer that cannot be pickled


def broken_store() -> MemStore:
    raise StoreUnavailable("cannot open the fake store")


class FreezeCountStore(MemStore):
    """A ``MemStore`` whose ``count`` answers how many objects its process has frozen out of
    the cyclic collector's walks (``gc.get_freeze_count``)."""

    def count(self, namespace: str) -> int:
        return gc.get_freeze_count()
