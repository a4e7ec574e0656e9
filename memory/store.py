"""The ``MemoryStore`` protocol: where memories and their vectors live.

Every method is blocking (callers run them in worker threads) and scoped to one namespace:
no call ever returns or touches another namespace's data. ``StoreUnavailable`` is raised
when the backing service cannot be reached or fails.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from memory.embedder import Vectors
from memory.records import Hit, Memory


class StoreUnavailable(Exception):
    """The store cannot serve the call right now (unreachable, failing, not open)."""


@runtime_checkable
class MemoryStore(Protocol):
    def add(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        """Insert or replace (by id) memories with their vectors; idempotent."""

    def search(self, namespace: str, vector: Vectors, k: int, text: str = "") -> builtins.list[Hit]:
        """The ``k`` best memories of ``namespace`` for a query: nearest to ``vector`` (one
        row), and where the store has a lexical index, matching ``text``; best first."""

    def nearest(self, namespace: str, vector: Vectors, k: int) -> builtins.list[tuple[str, float]]:
        """The ids of the ``k`` memories nearest to ``vector`` with their cosines, best first:
        ``search`` without fetching the memories (for callers that hold them already)."""

    def search_text(self, namespace: str, text: str, k: int) -> builtins.list[tuple[Memory, float]]:
        """The ``k`` best lexical matches of ``text`` with their scores, best first; empty
        where the store has no lexical index. ``search`` without ``text`` plus this, fused by
        ``recall.hybrid``, is ``search`` with ``text``: callers may run the two at once."""

    def list(
        self, namespace: str, *, limit: int, after: str | None = None
    ) -> tuple[builtins.list[Memory], bool]:
        """A page of memories, newest first, starting after the id ``after``; and has_more."""

    def get(self, namespace: str, memory_id: str) -> Memory | None: ...

    def get_many(self, namespace: str, memory_ids: Sequence[str]) -> builtins.list[Memory]:
        """The memories of ``namespace`` among ``memory_ids`` (missing ones left out)."""

    def delete(self, namespace: str, memory_id: str) -> bool:
        """Delete one memory; False when the namespace holds no such id."""

    def delete_namespace(self, namespace: str) -> int:
        """Erase every memory of the namespace; returns how many there were."""

    def count(self, namespace: str) -> int: ...

    def namespaces(self) -> builtins.list[str]: ...

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""

    def close(self) -> None: ...
