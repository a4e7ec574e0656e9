"""``DenseRows``: one namespace's memory vectors in memory, searched exactly (brute force).

The gateway's local copy of a namespace (``memory.local_copy``) keeps each memory's vector beside
it; alone on its store, a gateway answers the dense side of recall from these rows instead of
asking the store (the round trip to Chroma's process, and Chroma's own query, cost more than
the product below: 0.4 ms for 10,000 memories of 384 dimensions here, 1 ms for 30,000).
Exact, so it ranks at least as well as the store's HNSW index. Big namespaces are left to the
store (``MAX_ROWS``), where an index beats a scan.

Rows are L2-normalised when they come in: a product with a normalised query is the cosine.
"""

from __future__ import annotations

import numpy as np

from memory.records import Vectors

# A namespace with more memories than this is searched by the store (a scan of 30,000 costs
# ~1 ms here, about what Chroma's query costs across its process; it grows with the rows).
MAX_ROWS = 30_000
_DTYPE = np.float32


def encode(vector: Vectors) -> bytes:
    """A vector as stored in the copy: float32, as it came (normalised when read back)."""
    return np.asarray(vector, dtype=_DTYPE).tobytes()


def decode(blob: bytes) -> Vectors:
    """A vector ``encode`` wrote."""
    return np.frombuffer(blob, dtype=_DTYPE)


class DenseRows:
    """Vectors by the copy's row id (``rid``); every method expects the caller to hold the
    namespace file's lock."""

    def __init__(self, dimension: int, capacity: int = 64) -> None:
        self.dimension = dimension
        self._matrix = np.zeros((capacity, dimension), dtype=_DTYPE)
        self._rids = np.zeros(capacity, dtype=np.int64)
        self._at: dict[int, int] = {}  # rid -> its row

    @classmethod
    def build(cls, rids: list[int], joined: bytes, dimension: int) -> DenseRows:
        """Rows from the copy's vectors read end to end (``len(rids) * dimension`` floats)."""
        rows = cls(dimension, max(64, len(rids)))
        n = len(rids)
        if n:
            matrix = np.frombuffer(joined, dtype=_DTYPE).reshape(n, dimension)
            rows._matrix[:n] = _normalised(matrix)
            rows._rids[:n] = rids
            rows._at = {rid: i for i, rid in enumerate(rids)}
        return rows

    def __len__(self) -> int:
        return len(self._at)

    @property
    def nbytes(self) -> int:
        return int(self._matrix.nbytes + self._rids.nbytes) + 100 * len(self._at)

    def put(self, rid: int, vector: bytes) -> None:
        """Add (or replace) a row."""
        row = np.frombuffer(vector, dtype=_DTYPE)
        if row.shape != (self.dimension,):
            raise ValueError(f"a vector of {row.size} floats where {self.dimension} are kept")
        at = self._at.get(rid)
        if at is None:
            at = len(self._at)
            if at == len(self._rids):
                self._grow()
            self._at[rid] = at
            self._rids[at] = rid
        self._matrix[at] = _normalised(row[None, :])[0]

    def remove(self, rid: int) -> None:
        """Drop a row (the last row takes its place)."""
        at = self._at.pop(rid, None)
        if at is None:
            return
        last = len(self._at)
        if at != last:
            moved = int(self._rids[last])
            self._matrix[at] = self._matrix[last]
            self._rids[at] = moved
            self._at[moved] = at

    def nearest(self, query: Vectors, k: int) -> list[tuple[int, float]]:
        """The ``k`` rows closest to ``query`` (cosine), best first, ties by rid."""
        n = len(self._at)
        if k <= 0 or n == 0:
            return []
        q = np.asarray(query, dtype=_DTYPE).reshape(-1)
        norm = float(np.linalg.norm(q))
        if norm == 0.0:
            return []
        cosines = self._matrix[:n] @ (q / norm)
        best = np.argpartition(-cosines, k - 1)[:k] if k < n else np.arange(n)
        rids = self._rids[best]
        order = np.lexsort((rids, -cosines[best]))
        return [(int(rids[i]), float(cosines[best[i]])) for i in order]

    def _grow(self) -> None:
        size = len(self._rids) * 2
        matrix = np.zeros((size, self.dimension), dtype=_DTYPE)
        matrix[: len(self._rids)] = self._matrix
        rids = np.zeros(size, dtype=np.int64)
        rids[: len(self._rids)] = self._rids
        self._matrix, self._rids = matrix, rids


def _normalised(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0.0] = 1.0
    out: np.ndarray = (matrix / norms).astype(_DTYPE, copy=False)
    return out
