"""The ``MemoryStore`` protocol: where memories and their vectors live.

Every method is blocking (callers run them in worker threads) and scoped to one namespace:
no call ever returns or touches another namespace's data. ``StoreUnavailable`` is raised
when the backing service cannot be reached or fails.

The store is the one truth about which memories exist. Several gateway processes may share
it (a Chroma server); what a gateway keeps locally is derived from it, and ``changes``,
``existing`` and ``erasures`` are what keep that local data in step with the truth.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Protocol, runtime_checkable

import msgspec

from memory.records import Filter, Hit, Memory, Vectors, id_micros, matches, sort_key


class StoreUnavailable(Exception):
    """The store cannot serve the call right now (unreachable, failing, not open)."""


class Changes(msgspec.Struct, frozen=True):
    """What a local copy of a namespace needs to know to catch up.

    ``generation`` names the namespace's current incarnation in the store (None: the store
    holds nothing of it): it changes when the namespace is erased, so a copy made from an
    older generation is thrown away. ``memories``: those written at or after the ``since``
    the caller gave (every memory when ``since`` is None)."""

    generation: str | None
    memories: list[Memory]


class Version(msgspec.Struct, frozen=True):
    """A memory as it was, until it was changed at ``replaced_at``."""

    memory: Memory
    replaced_at: float


class NamespaceCount(msgspec.Struct, frozen=True):
    namespace: str
    count: int


@runtime_checkable
class MemoryStore(Protocol):
    def add(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        """Insert or replace (by id) memories with their vectors; idempotent. Each write is
        stamped with the time it was made, which ``changes`` reads back."""

    def replace(self, memory: Memory, vectors: Vectors) -> bool:
        """Change the stored memory of ``memory.id`` to ``memory`` (vector: one row), only if
        its namespace still holds it: a conditional write, so that a memory deleted, or a
        namespace erased, before it (by any process sharing the store) is never brought
        back. True when the memory is in the store after the call, False when it is gone
        (nothing was written, or a delete came right after)."""

    def search(
        self, namespace: str, vector: Vectors, k: int, where: Filter | None = None
    ) -> builtins.list[Hit]:
        """The ``k`` memories of ``namespace`` (passing ``where``) nearest to ``vector`` (one
        row), best first."""

    def nearest(
        self, namespace: str, vector: Vectors, k: int, where: Filter | None = None
    ) -> builtins.list[tuple[str, float]]:
        """The ids of the ``k`` memories nearest to ``vector`` with their cosines, best first:
        ``search`` without fetching the memories (for callers that hold them already)."""

    def search_text(
        self, namespace: str, text: str, k: int, where: Filter | None = None
    ) -> builtins.list[tuple[Memory, float]]:
        """The ``k`` best lexical matches of ``text`` with their scores, best first; empty
        where the store has no lexical index. ``MemoryService.recall`` runs it beside
        ``search`` and fuses the two with ``recall.fused`` (the one place they are fused)."""

    def list(
        self,
        namespace: str,
        *,
        limit: int,
        after: str | None = None,
        where: Filter | None = None,
    ) -> tuple[builtins.list[Memory], bool]:
        """A page of memories (passing ``where``), newest first (by ``records.sort_key``),
        starting after the memory ``after`` (which may have been deleted since: its id still
        says where it stood; ``CursorNotFound`` when it does not); and has_more."""

    def get(self, namespace: str, memory_id: str) -> Memory | None: ...

    def get_many(self, namespace: str, memory_ids: Sequence[str]) -> builtins.list[Memory]:
        """The memories of ``namespace`` among ``memory_ids`` (missing ones left out)."""

    def existing(self, namespace: str, memory_ids: Collection[str]) -> set[str]:
        """Which of ``memory_ids`` the namespace holds (ids only: cheaper than ``get_many``)."""

    def vectors(
        self, namespace: str, memory_ids: Sequence[str]
    ) -> builtins.list[tuple[str, str, Vectors]]:
        """(id, content, vector) of the memories of ``namespace`` among ``memory_ids`` (for
        filling a local copy's vectors; missing ones left out)."""

    def ids(self, namespace: str) -> set[str]:
        """Every id of the namespace (for repairing a local copy; costs the namespace)."""

    def changes(self, namespace: str, since: float | None) -> Changes:
        """The namespace's generation, and its memories written at or after ``since`` (a
        write stamp, seconds since the epoch; None: all of them)."""

    def keep_version(self, memory: Memory, changed_at: float) -> None:
        """Record ``memory`` as it was before a change made at ``changed_at`` (seconds since
        the epoch), for ``versions``."""

    def versions(self, namespace: str, memory_id: str) -> builtins.list[Version]:
        """The earlier versions of a memory, oldest first."""

    def delete(self, namespace: str, memory_id: str) -> bool:
        """Delete one memory and its earlier versions (those even when the memory is gone
        already: an update that lost its race to a delete leaves none behind); False when
        the namespace holds no such id."""

    def ids_where(
        self,
        namespace: str,
        where: Filter | None,
        *,
        since: int | None = None,
        until: int | None = None,
    ) -> set[str]:
        """The ids of the namespace's memories that pass ``where`` and were created in
        ``[since, until)`` (``records.micros``; None: unbounded), read from the store itself
        (the truth, not a local copy): what a delete by filter deletes."""

    def delete_many(self, namespace: str, memory_ids: Collection[str]) -> int:
        """``delete`` for many ids at once (their earlier versions too); how many of them the
        namespace held."""

    def delete_namespace(self, namespace: str) -> int:
        """Erase every memory of the namespace, and their earlier versions (after the
        memories: a version kept by an update that raced the erasure goes too); returns how
        many memories there were. The erasure is recorded (``erasures``) before anything is
        deleted."""

    def erasures(self, namespaces: Collection[str]) -> dict[str, float]:
        """When each of ``namespaces`` that was ever erased was last erased (seconds since
        the epoch): writes queued before that belong to what was erased."""

    def count(self, namespace: str) -> int: ...

    def namespaces(
        self, *, limit: int, offset: int = 0
    ) -> tuple[builtins.list[NamespaceCount], bool]:
        """A page of the namespaces that hold memories, with their counts; and has_more. In
        the store's own order, the same from call to call while no namespace is made or
        erased (so that ``offset`` pages through them each once)."""

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""

    def close(self) -> None: ...


class CursorNotFound(LookupError):
    """A page cursor names a memory whose place in the listing cannot be known any more."""


def cursor_key(after: str, find: Callable[[str], Memory | None]) -> tuple[int, str]:
    """Where the page cursor ``after`` stands in a listing: from the id itself when it carries
    its time, else from the memory ``find`` returns; ``CursorNotFound`` otherwise."""
    stamp = id_micros(after)
    if stamp is not None:
        return stamp, after
    memory = find(after)
    if memory is None:
        raise CursorNotFound(after)
    return sort_key(memory)


def page_of(
    memories: Iterable[Memory], *, limit: int, after: str | None, where: Filter | None = None
) -> tuple[builtins.list[Memory], bool]:
    """A page of ``memories`` (all of a namespace) for ``MemoryStore.list``: newest first,
    after the cursor ``after``. Costs the namespace: for stores without an ordered index."""
    everything = sorted(memories, key=sort_key, reverse=True)
    if after is not None:
        by_id = {m.id: m for m in everything}
        key = cursor_key(after, by_id.get)
        everything = [m for m in everything if sort_key(m) < key]
    everything = [m for m in everything if matches(m, where)]
    return everything[:limit], len(everything) > limit
