"""Test doubles: a deterministic embedder and an in-memory store (unit tests only)."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence

import numpy as np

from memory.embedder import Vectors
from memory.records import Hit, Memory
from memory.store import StoreUnavailable

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
    outage."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, tuple[Memory, Vectors]]] = {}
        self.down = False
        self.adds = 0
        self._lock = threading.Lock()

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("fake store is down")

    def add(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        self._check()
        with self._lock:
            for memory, vector in zip(memories, vectors, strict=True):
                self.rows.setdefault(memory.namespace, {})[memory.id] = (memory, vector)
            self.adds += len(memories)

    def search(self, namespace: str, vector: Vectors, k: int, text: str = "") -> list[Hit]:
        self._check()
        rows = list(self.rows.get(namespace, {}).values())
        hits = [Hit(m, float(v @ vector), float(v @ vector)) for m, v in rows]
        return sorted(hits, key=lambda h: h.score, reverse=True)[:k]

    def nearest(self, namespace: str, vector: Vectors, k: int) -> list[tuple[str, float]]:
        return [(h.memory.id, h.score) for h in self.search(namespace, vector, k)]

    def search_text(self, namespace: str, text: str, k: int) -> list[tuple[Memory, float]]:
        self._check()  # no lexical index
        return []

    def list(
        self, namespace: str, *, limit: int, after: str | None = None
    ) -> tuple[list[Memory], bool]:
        self._check()
        ordered = sorted(
            (m for m, _ in self.rows.get(namespace, {}).values()),
            key=lambda m: (m.created_at, m.id),
            reverse=True,
        )
        ids = [m.id for m in ordered]
        start = 0
        if after is not None:
            if after not in ids:
                return [], False
            start = ids.index(after) + 1
        return ordered[start : start + limit], start + limit < len(ordered)

    def get_many(self, namespace: str, memory_ids: Sequence[str]) -> list[Memory]:
        self._check()
        rows = self.rows.get(namespace, {})
        return [rows[i][0] for i in memory_ids if i in rows]

    def get(self, namespace: str, memory_id: str) -> Memory | None:
        found = self.get_many(namespace, [memory_id])
        return found[0] if found else None

    def delete(self, namespace: str, memory_id: str) -> bool:
        self._check()
        return self.rows.get(namespace, {}).pop(memory_id, None) is not None

    def delete_namespace(self, namespace: str) -> int:
        self._check()
        return len(self.rows.pop(namespace, {}))

    def count(self, namespace: str) -> int:
        self._check()
        return len(self.rows.get(namespace, {}))

    def namespaces(self) -> list[str]:
        self._check()
        return sorted(self.rows)

    def ping(self) -> None:
        self._check()

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

    def namespaces(self) -> list[str]:
        raise Unpicklable("no pickle")

    def get_many(self, namespace: str, memory_ids: Sequence[str]) -> list[Memory]:
        return [lambda: None]  # type: ignore[list-item]  # an answer that cannot be pickled


def broken_store() -> MemStore:
    raise StoreUnavailable("cannot open the fake store")
