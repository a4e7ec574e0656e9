"""The Chroma implementation of ``MemoryStore``.

One collection per namespace (named from a hash of the namespace, which keeps any allowed
namespace a legal collection name), so that a recall searches only its own namespace's index
and does not slow down as other namespaces grow. Open collections are kept in a bounded LRU
cache. Embedded (``PersistentClient`` on a local folder) or server (``HttpClient``) mode is
chosen by one setting: a URL selects the server.

Chroma's own embedding function is never used: vectors always come from our embedder.
"""

from __future__ import annotations

import builtins
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from memory.embedder import Vectors
from memory.records import Hit, Memory, Metadata
from memory.store import StoreUnavailable

_USER_META = "m."  # prefix of caller metadata keys inside Chroma metadata
_NS_KEY = "memgate_namespace"


def collection_name(prefix: str, namespace: str) -> str:
    digest = hashlib.sha256(namespace.encode()).hexdigest()[:40]
    return f"{prefix}{digest}"


def _to_meta(memory: Memory) -> dict[str, Any]:
    meta: dict[str, Any] = {"role": memory.role, "created_at": float(memory.created_at)}
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
    return Memory(
        id=mid,
        namespace=namespace,
        content=doc or "",
        role=str(meta.get("role", "user")),
        created_at=float(meta.get("created_at", 0.0)),
        metadata=user,
    )


class ChromaStore:
    """``MemoryStore`` over Chroma, embedded (``path``) or server (``url``)."""

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        url: str | None = None,
        prefix: str = "mg-",
        cache_size: int = 1024,
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
                    self._client_obj = chromadb.PersistentClient(
                        path=str(self._path), settings=settings
                    )
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
                    configuration={"hnsw": {"space": "cosine"}},
                    embedding_function=None,
                )
            else:
                col = self._client.get_collection(name, embedding_function=None)
        except NotFoundError:
            return None
        except Exception as exc:
            raise StoreUnavailable(f"Chroma failed: {exc}") from exc
        with self._lock:
            self._cache[namespace] = col
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return col

    def _call(self, namespace: str, fn: str, *args: Any, **kwargs: Any) -> Any:
        from chromadb.errors import NotFoundError

        for attempt in range(2):
            col = self._collection(namespace, create=fn == "upsert")
            if col is None:
                return None
            try:
                return getattr(col, fn)(*args, **kwargs)
            except NotFoundError:
                # The collection was erased (maybe by another gateway process): forget the
                # stale handle and look the namespace up once more.
                with self._lock:
                    self._cache.pop(namespace, None)
                if attempt:
                    return None
            except Exception as exc:
                raise StoreUnavailable(f"Chroma {fn} failed: {exc}") from exc
        return None

    # -- MemoryStore -------------------------------------------------------------------------

    def add(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        by_ns: dict[str, builtins.list[int]] = {}
        for i, memory in enumerate(memories):
            by_ns.setdefault(memory.namespace, []).append(i)
        for namespace, rows in by_ns.items():
            self._call(
                namespace,
                "upsert",
                ids=[memories[i].id for i in rows],
                embeddings=vectors[rows],
                documents=[memories[i].content for i in rows],
                metadatas=[_to_meta(memories[i]) for i in rows],
            )

    def search(self, namespace: str, vector: Vectors, k: int, text: str = "") -> builtins.list[Hit]:
        """The ``k`` nearest memories by cosine (``text`` is not used: Chroma's local modes
        have no lexical ranking; ``HybridStore`` adds one)."""
        res = self._query(namespace, vector, k, ["documents", "metadatas", "distances"])
        if res is None:
            return []
        ids, docs = res["ids"][0], res["documents"][0]
        metas, dists = res["metadatas"][0], res["distances"][0]
        return [
            Hit(_from_row(namespace, mid, doc, meta), 1.0 - float(dist), 1.0 - float(dist))
            for mid, doc, meta, dist in zip(ids, docs, metas, dists, strict=True)
        ]

    def nearest(self, namespace: str, vector: Vectors, k: int) -> builtins.list[tuple[str, float]]:
        res = self._query(namespace, vector, k, ["distances"])
        if res is None:
            return []
        ids, dists = res["ids"][0], res["distances"][0]
        return [(mid, 1.0 - float(dist)) for mid, dist in zip(ids, dists, strict=True)]

    def _query(self, namespace: str, vector: Vectors, k: int, include: builtins.list[str]) -> Any:
        """Chroma's answer to a k-nearest query, or None when there is nothing to return."""
        if k <= 0:
            return None
        res = self._call(
            namespace, "query", query_embeddings=vector.reshape(1, -1), n_results=k, include=include
        )
        if not res or not res["ids"] or not res["ids"][0]:
            return None
        return res

    def search_text(self, namespace: str, text: str, k: int) -> builtins.list[tuple[Memory, float]]:
        return []  # no lexical index here: ``HybridStore`` adds one

    def list(
        self, namespace: str, *, limit: int, after: str | None = None
    ) -> tuple[builtins.list[Memory], bool]:
        res = self._call(namespace, "get", include=["metadatas"])
        if not res or not res["ids"]:
            return [], False
        order = sorted(
            zip(res["ids"], res["metadatas"], strict=True),
            key=lambda row: (float((row[1] or {}).get("created_at", 0.0)), row[0]),
            reverse=True,
        )
        ids = [mid for mid, _ in order]
        start = 0
        if after is not None:
            if after not in ids:
                return [], False
            start = ids.index(after) + 1
        page = ids[start : start + limit]
        return self.get_many(namespace, page), start + limit < len(ids)

    def get_many(self, namespace: str, memory_ids: Sequence[str]) -> builtins.list[Memory]:
        if not memory_ids:
            return []
        res = self._call(namespace, "get", ids=list(memory_ids), include=["documents", "metadatas"])
        if not res:
            return []
        found = {
            mid: _from_row(namespace, mid, doc, meta)
            for mid, doc, meta in zip(res["ids"], res["documents"], res["metadatas"], strict=True)
        }
        return [found[mid] for mid in memory_ids if mid in found]

    def get(self, namespace: str, memory_id: str) -> Memory | None:
        found = self.get_many(namespace, [memory_id])
        return found[0] if found else None

    def delete(self, namespace: str, memory_id: str) -> bool:
        if self.get(namespace, memory_id) is None:
            return False
        self._call(namespace, "delete", ids=[memory_id])
        return True

    def delete_namespace(self, namespace: str) -> int:
        count = self.count(namespace)
        with self._lock:
            self._cache.pop(namespace, None)
        from chromadb.errors import NotFoundError

        try:
            self._client.delete_collection(collection_name(self._prefix, namespace))
        except NotFoundError:
            return 0
        except Exception as exc:
            raise StoreUnavailable(f"Chroma delete_collection failed: {exc}") from exc
        return count

    def count(self, namespace: str) -> int:
        res = self._call(namespace, "count")
        return int(res or 0)

    def namespaces(self) -> builtins.list[str]:
        try:
            cols = self._client.list_collections()
        except Exception as exc:
            raise StoreUnavailable(f"Chroma list_collections failed: {exc}") from exc
        out: builtins.list[str] = []
        for col in cols:
            meta = getattr(col, "metadata", None) or {}
            if str(getattr(col, "name", "")).startswith(self._prefix) and _NS_KEY in meta:
                out.append(str(meta[_NS_KEY]))
        return sorted(out)

    def ping(self) -> None:
        try:
            self._client.heartbeat()
        except Exception as exc:
            raise StoreUnavailable(f"Chroma is not answering: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
