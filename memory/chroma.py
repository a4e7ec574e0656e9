"""The Chroma implementation of ``MemoryStore``.

One collection per namespace (named from a hash of the namespace, which keeps any allowed
namespace a legal collection name), so that a recall searches only its own namespace's
vectors: a metadata-filtered query over a shared collection measured 10-110 ms here against
1-2 ms for a collection of its own. Open collection handles are kept in a bounded LRU cache.
Embedded (``PersistentClient`` on a local folder) or server (``HttpClient``) mode is chosen
by one setting: a URL selects the server.

What a namespace costs while it is not used. Embedded Chroma keeps each collection's HNSW
index loaded once used, in a cache as large as the open-files limit divided by five (4
files and a map an index): 2.6 MB and 4 file descriptors a small namespace, unbounded in a
container. ``vector_cache`` bounds that cache (Chroma reads the limit when its client is
made: it is lowered for that moment only). Chroma 1.5.9 loses an evicted index's vectors
that were not yet saved to disk (a later query fails with "Nothing found on disk" or misses
them), so every collection saves its index at each write (``sync_threshold`` 1), which
costs ~7 ms a write at 10,000 memories; collections made before are switched to that when
first opened, before their index is loaded.

Keeping other gateways' local copies in step: every write is stamped (metadata ``w``, the
writing process's clock), so ``changes`` reads what was written since a time with a ``where``
filter; the collection's id is the namespace's generation (an erased namespace comes back
as a new collection); and a registry collection records when each namespace was erased,
before the erasure, so that a gateway holding queued writes of it can drop them.

Chroma's own embedding function is never used: vectors always come from our embedder.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import hashlib
import logging
import os
import resource
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import msgspec
import numpy as np

from memory.records import Filter, Hit, Memory, Metadata, Vectors, created_in, matches
from memory.store import Changes, NamespaceCount, StoreUnavailable, Version, page_of

log = logging.getLogger("memgate.store")

_USER_META = "m."  # prefix of caller metadata keys inside Chroma metadata
_NS_KEY = "memgate_namespace"
_STAMP = "w"  # metadata key of the write stamp
_HNSW = {"space": "cosine", "sync_threshold": 1, "batch_size": 1}
_PAGE = 5000  # rows a Chroma get returns at most (beyond ~32,000 it fails: too many SQL variables)
_VERSIONS_PAGE = 500  # ids in one ``$in`` of a registry delete
_REGISTRY = "registry"  # collection name suffix of the erasure registry
_CLOCK_MARGIN = 5.0  # seconds the clocks of processes sharing a store may disagree
T = TypeVar("T")


def collection_name(prefix: str, namespace: str) -> str:
    digest = hashlib.sha256(namespace.encode()).hexdigest()[:40]
    return f"{prefix}{digest}"


def _to_meta(memory: Memory, stamp: float) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "role": memory.role,
        "created_at": float(memory.created_at),
        _STAMP: stamp,
    }
    for key, value in memory.metadata.items():
        meta[_USER_META + key] = value
    return meta


def _from_row(namespace: str, mid: str, doc: str | None, meta: Any) -> Memory:
    meta = dict(meta or {})
    user: Metadata = {
        key[len(_USER_META) :]: value
        for key, value in meta.items()
        if key.startswith(_USER_META) and isinstance(value, str | int | float | bool)
    }
    try:
        created_at = float(meta.get("created_at", 0.0))
    except (TypeError, ValueError):  # written by hand, or by something else than memgate
        log.warning("memory %s of %s has no readable created_at", mid, namespace)
        created_at = 0.0
    return Memory(
        id=mid,
        namespace=namespace,
        content=doc or "",
        role=str(meta.get("role", "user")),
        created_at=created_at,
        metadata=user,
    )


@contextlib.contextmanager
def _file_limit(indexes: int) -> Iterator[None]:
    """Lower the soft open-files limit while Chroma's embedded client is made, so that it
    keeps about ``indexes`` HNSW indexes loaded (it sizes that cache as the limit // 5). The
    limit is restored at once; it is never set below what the process already has open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 256
    target = max(indexes * 5, in_use + 64)
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if soft != resource.RLIM_INFINITY and target >= soft:
        yield
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class ChromaStore:
    """``MemoryStore`` over Chroma, embedded (``path``) or server (``url``)."""

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        url: str | None = None,
        prefix: str = "mg-",
        cache_size: int = 1024,
        vector_cache: int = 128,
        client: Any = None,
    ) -> None:
        if client is None and not url and path is None:
            raise ValueError("ChromaStore needs a path (embedded) or a url (server)")
        self.mode = "server" if url else "embedded"
        self._path = Path(path) if path is not None else None
        self._url = url
        self._client_obj: Any = client
        self._prefix = prefix
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size
        self._vector_cache = vector_cache
        self._registry_col: Any = None
        self._lock = threading.Lock()
        self._connect_lock = threading.Lock()
        if self.mode == "embedded":
            self._connect()  # local disk: fail now, loudly, if it cannot be opened

    def _connect(self) -> Any:
        """The Chroma client, created on first use: a server that is down when the gateway
        starts is retried on later calls instead of failing the start."""
        if self._client_obj is not None:
            return self._client_obj
        with self._connect_lock:
            if self._client_obj is not None:
                return self._client_obj
            import chromadb
            from chromadb.config import Settings as ChromaSettings

            settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
            try:
                if self._url:
                    parsed = urlparse(self._url)
                    self._client_obj = chromadb.HttpClient(
                        host=parsed.hostname or "127.0.0.1",
                        port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                        ssl=parsed.scheme == "https",
                        settings=settings,
                    )
                elif self._path is not None:
                    self._path.mkdir(parents=True, exist_ok=True)
                    with _file_limit(self._vector_cache):
                        self._client_obj = chromadb.PersistentClient(
                            path=str(self._path), settings=settings
                        )
                    _add_indexes(self._path / "chroma.sqlite3")
                else:
                    raise ValueError("ChromaStore needs a path (embedded) or a url (server)")
            except Exception as exc:
                raise StoreUnavailable(f"cannot open Chroma: {exc}") from exc
            return self._client_obj

    @property
    def _client(self) -> Any:
        return self._connect()

    # -- collections -------------------------------------------------------------------------

    def _collection(self, namespace: str, *, create: bool) -> Any:
        with self._lock:
            col = self._cache.get(namespace)
            if col is not None:
                self._cache.move_to_end(namespace)
                return col
        from chromadb.errors import NotFoundError

        name = collection_name(self._prefix, namespace)
        try:
            if create:
                col = self._client.get_or_create_collection(
                    name,
                    metadata={_NS_KEY: namespace},
                    configuration={"hnsw": dict(_HNSW)},
                    embedding_function=None,
                )
            else:
                col = self._client.get_collection(name, embedding_function=None)
            _save_at_each_write(col)
        except NotFoundError:
            return None
        except Exception as exc:
            raise StoreUnavailable(f"Chroma failed: {exc}") from exc
        with self._lock:
            self._cache[namespace] = col
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return col

    def _forget(self, namespace: str) -> None:
        with self._lock:
            self._cache.pop(namespace, None)

    def _run(self, namespace: str, work: Callable[[Any], T], *, create: bool = False) -> T | None:
        """``work`` on the namespace's collection (None when there is none). A call that
        creates nothing and fails while the namespace is being erased (a Chroma server
        answers such a call with errors such as "Missing metadata segment") finds it gone."""
        from chromadb.errors import NotFoundError

        started = time.time()
        for attempt in range(2):
            try:
                col = self._collection(namespace, create=create)
                if col is None:
                    return None
                return work(col)
            except NotFoundError:
                # The collection was erased (maybe by another gateway process): forget the
                # stale handle and look the namespace up once more.
                self._forget(namespace)
                if attempt:
                    return None
            except Exception as exc:
                if not create and self._erased_since(namespace, started):
                    self._forget(namespace)
                    return None
                if isinstance(exc, StoreUnavailable):
                    raise
                raise StoreUnavailable(f"Chroma failed: {exc}") from exc
        return None

    def _erased_since(self, namespace: str, started: float) -> bool:
        """Whether the namespace was erased (through any gateway) since ``started``, less a
        margin for the clocks of the processes sharing the store."""
        try:
            erased = self.erasures([namespace]).get(namespace)
        except StoreUnavailable:
            return False
        return erased is not None and erased >= started - _CLOCK_MARGIN

    def _registry_collection(self) -> Any:
        if self._registry_col is None:
            try:
                self._registry_col = self._client.get_or_create_collection(
                    f"{self._prefix}{_REGISTRY}",
                    configuration={"hnsw": {**_HNSW, "space": "l2"}},
                    embedding_function=None,
                )
            except Exception as exc:
                raise StoreUnavailable(f"Chroma registry failed: {exc}") from exc
        return self._registry_col

    # -- MemoryStore -------------------------------------------------------------------------

    def add(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        stamp = time.time()
        by_ns: dict[str, builtins.list[int]] = {}
        for i, memory in enumerate(memories):
            by_ns.setdefault(memory.namespace, []).append(i)
        for namespace, rows in by_ns.items():

            def upsert(col: Any, rows: builtins.list[int] = rows) -> None:
                col.upsert(
                    ids=[memories[i].id for i in rows],
                    embeddings=vectors[rows],
                    documents=[memories[i].content for i in rows],
                    metadatas=[_to_meta(memories[i], stamp) for i in rows],
                )

            self._run(namespace, upsert, create=True)

    def replace(self, memory: Memory, vectors: Vectors) -> bool:
        """Chroma's ``update`` changes only ids the collection holds (an id deleted before it,
        through any client, is skipped), and fails on an erased collection: the conditional
        write ``MemoryStore.replace`` asks for. Metadata keys the new memory drops are
        removed (``update`` merges metadata; None deletes a key)."""

        def work(col: Any) -> bool:
            old = col.get(ids=[memory.id], include=["metadatas"])
            if not old["ids"]:
                return False
            meta: dict[str, Any] = dict.fromkeys(old["metadatas"][0] or {})
            meta.update(_to_meta(memory, time.time()))
            col.update(
                ids=[memory.id],
                embeddings=vectors[:1],
                documents=[memory.content],
                metadatas=[meta],
            )
            return bool(col.get(ids=[memory.id], include=[])["ids"])

        return bool(self._run(memory.namespace, work))

    def search(
        self, namespace: str, vector: Vectors, k: int, where: Filter | None = None
    ) -> builtins.list[Hit]:
        """The ``k`` nearest memories by cosine (Chroma's local modes have no lexical ranking:
        ``HybridStore`` adds one, as ``search_text``)."""
        res = self._query(namespace, vector, k, ["documents", "metadatas", "distances"], where)
        if res is None:
            return []
        ids, docs = res["ids"][0], res["documents"][0]
        metas, dists = res["metadatas"][0], res["distances"][0]
        return [
            Hit(_from_row(namespace, mid, doc, meta), 1.0 - float(dist), 1.0 - float(dist))
            for mid, doc, meta, dist in zip(ids, docs, metas, dists, strict=True)
        ]

    def nearest(
        self, namespace: str, vector: Vectors, k: int, where: Filter | None = None
    ) -> builtins.list[tuple[str, float]]:
        res = self._query(namespace, vector, k, ["distances"], where)
        if res is None:
            return []
        ids, dists = res["ids"][0], res["distances"][0]
        return [(mid, 1.0 - float(dist)) for mid, dist in zip(ids, dists, strict=True)]

    def _query(
        self,
        namespace: str,
        vector: Vectors,
        k: int,
        include: builtins.list[str],
        where: Filter | None = None,
    ) -> Any:
        """Chroma's answer to a k-nearest query, or None when there is nothing to return. A
        filter makes Chroma's query slower (it filters through the metadata index first)."""
        if k <= 0:
            return None
        res = self._run(
            namespace,
            lambda col: col.query(
                query_embeddings=vector.reshape(1, -1),
                n_results=k,
                include=include,
                where=chroma_where(where),
            ),
        )
        if not res or not res["ids"] or not res["ids"][0]:
            return None
        return res

    def search_text(
        self, namespace: str, text: str, k: int, where: Filter | None = None
    ) -> builtins.list[tuple[Memory, float]]:
        return []  # no lexical index here: ``HybridStore`` adds one

    def _read(self, namespace: str, col: Any, **kwargs: Any) -> builtins.list[Memory]:
        """Every memory ``col.get(**kwargs)`` matches, a page of Chroma rows at a time."""
        out: builtins.list[Memory] = []
        offset = 0
        while True:
            res = col.get(include=["documents", "metadatas"], limit=_PAGE, offset=offset, **kwargs)
            out += [
                _from_row(namespace, mid, doc, meta)
                for mid, doc, meta in zip(
                    res["ids"], res["documents"], res["metadatas"], strict=True
                )
            ]
            if len(res["ids"]) < _PAGE:
                return out
            offset += _PAGE

    def list(
        self,
        namespace: str,
        *,
        limit: int,
        after: str | None = None,
        where: Filter | None = None,
    ) -> tuple[builtins.list[Memory], bool]:
        """A page, cut from the whole namespace (Chroma has no ordered reads): the gateway
        pages from its local index (``HybridStore``) instead."""
        everything = self._run(namespace, lambda col: self._read(namespace, col)) or []
        return page_of(everything, limit=limit, after=after, where=where)

    def get_many(self, namespace: str, memory_ids: Sequence[str]) -> builtins.list[Memory]:
        if not memory_ids:
            return []
        found = {
            m.id: m
            for m in self._run(
                namespace, lambda col: self._read(namespace, col, ids=builtins.list(memory_ids))
            )
            or []
        }
        return [found[mid] for mid in memory_ids if mid in found]

    def get(self, namespace: str, memory_id: str) -> Memory | None:
        found = self.get_many(namespace, [memory_id])
        return found[0] if found else None

    def existing(self, namespace: str, memory_ids: Collection[str]) -> set[str]:
        wanted = builtins.list(memory_ids)
        if not wanted:
            return set()

        def work(col: Any) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(wanted), _PAGE):
                found.update(col.get(ids=wanted[start : start + _PAGE], include=[])["ids"])
            return found

        return self._run(namespace, work) or set()

    def vectors(
        self, namespace: str, memory_ids: Sequence[str]
    ) -> builtins.list[tuple[str, str, Vectors]]:
        wanted = builtins.list(memory_ids)
        if not wanted:
            return []

        def work(col: Any) -> builtins.list[tuple[str, str, Vectors]]:
            found: builtins.list[tuple[str, str, Vectors]] = []
            for start in range(0, len(wanted), _PAGE):
                res = col.get(
                    ids=wanted[start : start + _PAGE], include=["documents", "embeddings"]
                )
                found += [
                    (mid, doc, np.asarray(vec, dtype=np.float32))
                    for mid, doc, vec in zip(
                        res["ids"], res["documents"], res["embeddings"], strict=True
                    )
                ]
            return found

        return self._run(namespace, work) or []

    def ids(self, namespace: str) -> set[str]:
        def work(col: Any) -> set[str]:
            found: set[str] = set()
            offset = 0
            while True:
                page = col.get(include=[], limit=_PAGE, offset=offset)["ids"]
                found.update(page)
                if len(page) < _PAGE:
                    return found
                offset += _PAGE

        return self._run(namespace, work) or set()

    def changes(self, namespace: str, since: float | None) -> Changes:
        def work(col: Any) -> Changes:
            where = None if since is None else {_STAMP: {"$gte": since}}
            return Changes(str(col.id), self._read(namespace, col, where=where))

        return self._run(namespace, work) or Changes(None, [])

    def _registry(self, work: Callable[[Any], T]) -> T:
        """``work`` on the registry collection (erasures and earlier versions)."""
        try:
            return work(self._registry_collection())
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"Chroma registry failed: {exc}") from exc

    def delete(self, namespace: str, memory_id: str) -> bool:
        def work(col: Any) -> bool:
            if not col.get(ids=[memory_id], include=[])["ids"]:
                return False
            col.delete(ids=[memory_id])
            return True

        found = bool(self._run(namespace, work))
        # its earlier versions go with it, after it (see ``MemoryStore.delete``)
        self._registry(
            lambda reg: reg.delete(
                where={"$and": [{"ns": _digest(namespace)}, {"memory_id": memory_id}]}
            )
        )
        return found

    def ids_where(
        self,
        namespace: str,
        where: Filter | None,
        *,
        since: int | None = None,
        until: int | None = None,
    ) -> set[str]:
        """Chroma's filter finds the candidates (the time bounds a microsecond wider, as
        ``created_at`` is a float there); ``records.matches`` and ``created_in`` decide, so
        that the memories chosen are exactly those a listing with the same filter shows."""
        conditions = _conditions(where)
        if since is not None:
            conditions.append({"created_at": {"$gte": (since - 1) / 1e6}})
        if until is not None:
            conditions.append({"created_at": {"$lt": (until + 1) / 1e6}})
        chroma = _all_of(conditions)

        def work(col: Any) -> set[str]:
            found: set[str] = set()
            offset = 0
            while True:
                res = col.get(where=chroma, include=["metadatas"], limit=_PAGE, offset=offset)
                for mid, meta in zip(res["ids"], res["metadatas"], strict=True):
                    memory = _from_row(namespace, mid, None, meta)
                    if matches(memory, where) and created_in(memory, since, until):
                        found.add(mid)
                if len(res["ids"]) < _PAGE:
                    return found
                offset += _PAGE

        return self._run(namespace, work) or set()

    def delete_many(self, namespace: str, memory_ids: Collection[str]) -> int:
        wanted = sorted(memory_ids)
        if not wanted:
            return 0

        def work(col: Any) -> int:
            held = 0
            for start in range(0, len(wanted), _PAGE):
                chunk = wanted[start : start + _PAGE]
                present = col.get(ids=chunk, include=[])["ids"]
                if present:
                    col.delete(ids=present)
                held += len(present)
            return held

        held = self._run(namespace, work) or 0
        # their earlier versions go with them, after them (see ``MemoryStore.delete``)
        digest = _digest(namespace)
        for start in range(0, len(wanted), _VERSIONS_PAGE):
            chunk = wanted[start : start + _VERSIONS_PAGE]
            where = {"$and": [{"ns": digest}, {"memory_id": {"$in": chunk}}]}
            self._registry(functools.partial(_delete_where, where=where))
        return held

    def keep_version(self, memory: Memory, changed_at: float) -> None:
        """Record ``memory`` as it was before a change made at ``changed_at``."""
        self._registry(
            lambda reg: reg.upsert(
                ids=[f"version:{memory.id}:{changed_at:.6f}"],
                embeddings=[[changed_at]],
                documents=[msgspec.json.encode(memory).decode()],
                metadatas=[
                    {"ns": _digest(memory.namespace), "memory_id": memory.id, "at": changed_at}
                ],
            )
        )

    def versions(self, namespace: str, memory_id: str) -> builtins.list[Version]:
        res = self._registry(
            lambda reg: reg.get(
                where={"$and": [{"ns": _digest(namespace)}, {"memory_id": memory_id}]},
                include=["documents", "metadatas"],
            )
        )
        out = [
            Version(msgspec.json.decode(doc, type=Memory), float((meta or {}).get("at", 0.0)))
            for doc, meta in zip(res["documents"], res["metadatas"], strict=True)
        ]
        return sorted(out, key=lambda v: v.replaced_at)

    def delete_namespace(self, namespace: str) -> int:
        count = self.count(namespace)
        erased_at = time.time()
        self._registry(
            lambda reg: reg.upsert(
                ids=[_erasure_id(namespace)],
                embeddings=[[erased_at]],
                metadatas=[{_NS_KEY: namespace, "erased_at": erased_at}],
            )
        )
        self._forget(namespace)
        from chromadb.errors import NotFoundError

        try:
            self._client.delete_collection(collection_name(self._prefix, namespace))
        except NotFoundError:
            count = 0
        except Exception as exc:
            raise StoreUnavailable(f"Chroma delete_collection failed: {exc}") from exc
        finally:
            self._forget(namespace)
        # the earlier versions after the memories (see ``MemoryStore.delete_namespace``)
        self._registry(lambda reg: reg.delete(where={"ns": _digest(namespace)}))
        return count

    def erasures(self, namespaces: Collection[str]) -> dict[str, float]:
        wanted = {_erasure_id(ns): ns for ns in namespaces}
        if not wanted:
            return {}
        res = self._registry(lambda reg: reg.get(ids=builtins.list(wanted), include=["metadatas"]))
        return {
            wanted[rid]: float((meta or {}).get("erased_at", 0.0))
            for rid, meta in zip(res["ids"], res["metadatas"], strict=True)
        }

    def count(self, namespace: str) -> int:
        return int(self._run(namespace, lambda col: col.count()) or 0)

    def namespaces(
        self, *, limit: int, offset: int = 0
    ) -> tuple[builtins.list[NamespaceCount], bool]:
        """A page of the namespaces in Chroma's order of its collections (by their internal
        ids, which are random: neither by name nor by the time they were first written; the
        same from call to call while no collection is made or deleted), ``offset`` counting
        Chroma's collections; counts for that page only."""
        try:
            cols = self._client.list_collections(limit=limit + 1, offset=offset)
        except Exception as exc:
            raise StoreUnavailable(f"Chroma list_collections failed: {exc}") from exc
        ours = [
            col
            for col in cols[:limit]
            if str(getattr(col, "name", "")).startswith(self._prefix)
            and _NS_KEY in (getattr(col, "metadata", None) or {})
        ]  # not the registry, nor another program's collections

        def count(col: Any) -> NamespaceCount:
            try:
                n = int(col.count())
            except Exception:  # erased meanwhile
                n = 0
            return NamespaceCount(str(col.metadata[_NS_KEY]), n)

        if self.mode == "server" and len(ours) > 1:  # a round trip each: a few at once
            with ThreadPoolExecutor(8, thread_name_prefix="memgate-count") as pool:
                return builtins.list(pool.map(count, ours)), len(cols) > limit
        return [count(col) for col in ours], len(cols) > limit

    def ping(self) -> None:
        try:
            self._client.heartbeat()
        except Exception as exc:
            raise StoreUnavailable(f"Chroma is not answering: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._cache.clear()


# Chroma 1.5.9 looks up a collection's segments, and its write-ahead log, by columns it keeps
# no index on: every call scans tables that grow with the number of collections. At 10,000
# namespaces that took a query from 0.9 to 5.6 ms, a write of two memories from 7 to 28 ms
# and a get by ids from 0.5 to 2.5 ms (measured here). Embedded, the file is ours to index.
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS memgate_segments_collection ON segments(collection)",
    "CREATE INDEX IF NOT EXISTS memgate_queue_topic ON embeddings_queue(topic, seq_id)",
)


def _add_indexes(db_path: Path) -> None:
    """Add the indexes Chroma's own lookups need (see ``_INDEXES``); a schema that differs
    is left alone, with a warning."""
    try:
        with contextlib.closing(sqlite3.connect(str(db_path), timeout=30)) as db:
            for sql in _INDEXES:
                db.execute(sql)
            db.commit()
    except sqlite3.Error as exc:
        log.warning("could not add indexes to Chroma's %s: %s", db_path, exc)


def chroma_where(where: Filter | None) -> dict[str, Any] | None:
    """A memory filter as Chroma's ``where``: metadata keys carry our prefix."""
    return _all_of(_conditions(where))


def _conditions(where: Filter | None) -> builtins.list[dict[str, Any]]:
    return [
        {("role" if key == "role" else _USER_META + key): cond}
        for key, cond in (where or {}).items()
    ]


def _all_of(conditions: builtins.list[dict[str, Any]]) -> dict[str, Any] | None:
    if not conditions:
        return None
    return conditions[0] if len(conditions) == 1 else {"$and": conditions}


def _delete_where(col: Any, *, where: dict[str, Any]) -> None:
    col.delete(where=where)


def _digest(namespace: str) -> str:
    return hashlib.sha256(namespace.encode()).hexdigest()[:40]


def _erasure_id(namespace: str) -> str:
    return "erased:" + _digest(namespace)


def _save_at_each_write(col: Any) -> None:
    """Make a collection save its HNSW index at each write (see the module's docstring), if
    it was made before that was the rule. Before its index is loaded: the index then loads
    with the new threshold and saves what it replays from Chroma's log."""
    hnsw = (getattr(col, "configuration", None) or {}).get("hnsw") or {}
    if hnsw.get("sync_threshold", 1) != _HNSW["sync_threshold"]:
        col.modify(configuration={"hnsw": {"sync_threshold": 1, "batch_size": 1}})
