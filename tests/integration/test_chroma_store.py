"""The ``MemoryStore`` contract against every store (the test fake, Chroma embedded and
server, Chroma in a child process, and the hybrid store with its local copies) with the
product's default embedder; then Chroma's own behaviours."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest

from memory.chroma import ChromaStore
from memory.embedder import Embedder
from memory.hybrid import HybridStore
from memory.local_copy import LocalCopy
from memory.process_store import ProcessStore
from memory.recall import fused
from memory.records import Hit, Memory
from memory.store import Changes, MemoryStore
from tests.fakes import MemStore
from tests.processes import ChromaServer

pytestmark = pytest.mark.slow


def make(ns: str, i: int, text: str) -> Memory:
    return Memory(
        id=f"{ns}-{i}",
        namespace=ns,
        content=text,
        role="user" if i % 2 else "assistant",
        created_at=1_700_000_000.0 + i,
        metadata={"i": i, "tag": f"t{i}", "ok": True, "w": 0.5},
    )


TEXTS = [
    "I moved to Lisbon last spring",
    "My dog Rex loves the beach",
    "I work as a nurse at night",
    "My favourite food is grilled sardines",
    "I play the violin in a small orchestra",
]


@pytest.fixture(params=["fake", "embedded", "server", "process", "hybrid"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MemoryStore]:
    """The same contract for every ``MemoryStore``; a fresh collection prefix isolates each
    test on the shared server."""
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    made: MemoryStore
    if request.param == "fake":
        made = MemStore()
    elif request.param == "server":
        server: ChromaServer = request.getfixturevalue("chroma_server")
        made = ChromaStore(url=server.url, prefix=prefix)
    elif request.param == "process":
        made = ProcessStore(
            functools.partial(ChromaStore, path=tmp_path / "chroma", prefix=prefix),
            lock_path=tmp_path / "chroma.lock",
        )
    elif request.param == "hybrid":
        made = HybridStore(
            ChromaStore(path=tmp_path / "chroma", prefix=prefix),
            LocalCopy(tmp_path / "index"),
        )
    else:
        made = ChromaStore(path=tmp_path / "chroma", prefix=prefix)
    yield made
    made.close()


def test_store_contract(store: MemoryStore, minilm: Embedder) -> None:
    a = [make("ns:a@x", i, t) for i, t in enumerate(TEXTS)]
    b = [make("ns-b", i, t) for i, t in enumerate(TEXTS)]
    vectors = minilm.embed([m.content for m in a + b])
    store.add(a + b, vectors)
    store.add(a[:1], minilm.embed([a[0].content]))  # upsert: no duplicate
    assert store.count("ns:a@x") == 5
    assert store.count("nobody") == 0
    page_ns, more_ns = store.namespaces(limit=10)
    assert sorted((n.namespace, n.count) for n in page_ns) == [("ns-b", 5), ("ns:a@x", 5)]
    assert more_ns is False
    first, more_ns = store.namespaces(limit=1)
    second, _ = store.namespaces(limit=1, offset=1)
    assert more_ns
    assert {first[0].namespace, second[0].namespace} == {"ns-b", "ns:a@x"}

    changes = store.changes("ns:a@x", None)
    assert changes.generation is not None
    assert sorted(m.id for m in changes.memories) == sorted(m.id for m in a)
    later = store.changes("ns:a@x", time.time() + 1)
    assert (later.generation, later.memories) == (changes.generation, [])
    assert store.changes("nobody", None) == Changes(None, [])
    assert store.existing("ns:a@x", ["ns:a@x-1", "ns-b-1", "nope"]) == {"ns:a@x-1"}
    found = store.vectors("ns:a@x", ["ns:a@x-2", "ns-b-1", "nope"])
    assert [(mid, content) for mid, content, _ in found] == [("ns:a@x-2", a[2].content)]
    assert np.asarray(found[0][2]) == pytest.approx(vectors[2], abs=1e-6)
    assert store.vectors("ns:a@x", []) == []
    assert store.ids("ns-b") == {m.id for m in b}
    assert store.erasures(["ns:a@x"]) == {}

    hits = store.search("ns:a@x", minilm.embed(["which city do I live in?"])[0], 3)
    assert hits[0].memory == a[0]
    assert hits[0].score > hits[1].score
    assert all(h.memory.namespace == "ns:a@x" for h in hits)
    assert store.search("nobody", minilm.embed(["x"])[0], 3) == []
    query = minilm.embed(["which city do I live in?"])[0]
    picked = store.search("ns:a@x", query, 5, where={"i": {"$in": [1, 3]}})
    assert sorted(h.memory.id for h in picked) == ["ns:a@x-1", "ns:a@x-3"]
    replies = store.nearest("ns:a@x", query, 5, where={"role": "assistant", "ok": True})
    assert sorted(mid for mid, _ in replies) == ["ns:a@x-0", "ns:a@x-2", "ns:a@x-4"]
    page, _ = store.list("ns:a@x", limit=10, where={"tag": "t2"})
    assert [m.id for m in page] == ["ns:a@x-2"]

    page, more = store.list("ns:a@x", limit=2)
    assert [m.id for m in page] == ["ns:a@x-4", "ns:a@x-3"]
    assert more is True
    page, more = store.list("ns:a@x", limit=2, after=page[-1].id)
    assert [m.id for m in page] == ["ns:a@x-2", "ns:a@x-1"]
    page, more = store.list("ns:a@x", limit=2, after=page[-1].id)
    assert [m.id for m in page] == ["ns:a@x-0"]
    assert more is False

    assert store.get("ns:a@x", "ns:a@x-1") == a[1]
    store.keep_version(a[2], 1_700_000_100.0)
    store.keep_version(a[2], 1_700_000_050.0)
    versions = store.versions("ns:a@x", "ns:a@x-2")
    assert [(v.memory, v.replaced_at) for v in versions] == [
        (a[2], 1_700_000_050.0),
        (a[2], 1_700_000_100.0),
    ]
    assert store.versions("ns-b", "ns:a@x-2") == []
    assert store.delete("ns:a@x", "ns:a@x-2") is True
    assert store.versions("ns:a@x", "ns:a@x-2") == []
    store.add(a[2:3], minilm.embed([a[2].content]))
    assert store.get("ns-b", "ns:a@x-1") is None  # an id of A asked for in B
    assert store.delete("ns-b", "ns:a@x-1") is False
    assert store.delete("ns:a@x", "ns:a@x-1") is True
    assert store.get("ns:a@x", "ns:a@x-1") is None
    assert store.count("ns:a@x") == 4

    # replace: a conditional write, which a delete before it wins, with the metadata given
    changed = msgspec.structs.replace(
        a[3], content="I play the cello now", metadata={"i": 3, "new": "yes"}
    )
    assert store.replace(changed, minilm.embed([changed.content])) is True
    assert store.get("ns:a@x", "ns:a@x-3") == changed
    cello = store.search("ns:a@x", minilm.embed(["which instrument: cello?"])[0], 1)
    assert cello[0].memory == changed
    store.keep_version(a[4], 1_700_000_200.0)
    assert store.delete("ns:a@x", "ns:a@x-4") is True
    gone = msgspec.structs.replace(a[4], content="brought back?")
    assert store.replace(gone, minilm.embed([gone.content])) is False
    assert store.get("ns:a@x", "ns:a@x-4") is None
    assert store.delete("ns:a@x", "ns:a@x-4") is False
    assert store.versions("ns:a@x", "ns:a@x-4") == []
    store.add(a[4:5], minilm.embed([a[4].content]))
    assert store.replace(gone, minilm.embed([gone.content])) is True
    assert store.replace(msgspec.structs.replace(a[0], namespace="nobody"), vectors[:1]) is False
    assert store.count("nobody") == 0
    store.add(a[3:5], minilm.embed([m.content for m in a[3:5]]))
    assert store.count("ns:a@x") == 4

    before = time.time()
    assert store.delete_namespace("ns:a@x") == 4
    assert store.erasures(["ns:a@x", "ns-b"])["ns:a@x"] >= before - 1
    assert set(store.erasures(["ns:a@x", "ns-b"])) == {"ns:a@x"}
    assert store.count("ns:a@x") == 0
    assert store.changes("ns:a@x", None).generation is None
    store.add(a[:1], minilm.embed([a[0].content]))  # written again: a new generation
    assert store.changes("ns:a@x", None).generation not in (None, changes.generation)
    store.delete_namespace("ns:a@x")
    assert store.search("ns:a@x", minilm.embed(["Lisbon"])[0], 5) == []
    assert store.list("ns:a@x", limit=10) == ([], False)
    assert store.count("ns-b") == 5
    store.ping()


def test_delete_by_filter_contract(store: MemoryStore, minilm: Embedder) -> None:
    """``ids_where`` chooses exactly what a listing with the same filter and time bounds
    shows (typed metadata, the microsecond edges of the bounds); ``delete_many`` deletes
    those, their earlier versions too, and nothing of another namespace."""
    base = 1_700_000_000.0
    made = [
        Memory(id=f"m{i}", namespace="del", content=f"turn {i}", created_at=base + i,
               metadata={"conversation_id": "c1" if i < 4 else "c2", "n": i % 2})
        for i in range(6)
    ]  # fmt: skip
    made.append(
        Memory(
            id="flag", namespace="del", content="flag", created_at=base + 10, metadata={"n": True}
        )
    )
    other = [msgspec.structs.replace(m, namespace="del-b") for m in made]
    store.add(made + other, minilm.embed([m.content for m in made + other]))
    store.keep_version(made[1], base + 100)

    def chosen(**kw: object) -> list[str]:
        return sorted(store.ids_where("del", **kw))  # type: ignore[arg-type]

    assert chosen(where={"conversation_id": "c1"}) == ["m0", "m1", "m2", "m3"]
    assert chosen(where={"n": 1}) == ["m1", "m3", "m5"]  # 1 is not true
    assert chosen(where={"n": True}) == ["flag"]
    assert chosen(where={"conversation_id": {"$in": ["c2"]}, "role": "user"}) == ["m4", "m5"]
    us = 1_000_000  # a second in micros: at or after since, strictly before until
    t = int(base * us)
    assert chosen(where=None, since=t + 2 * us, until=t + 4 * us) == ["m2", "m3"]
    assert chosen(where={"conversation_id": "c1"}, since=t + 3 * us) == ["m3"]
    assert chosen(where=None, until=t + 1) == ["m0"]
    assert chosen(where={"conversation_id": "nobody"}) == []
    assert store.ids_where("nobody", {"n": 1}) == set()

    assert store.delete_many("del", ["m0", "m1", "m2", "m3", "gone"]) == 4
    assert store.versions("del", "m1") == []
    assert sorted(m.id for m in store.list("del", limit=10)[0]) == ["flag", "m4", "m5"]
    assert store.count("del-b") == 7
    assert store.delete_many("del", []) == 0
    assert store.delete_many("nobody", ["m4"]) == 0


def test_namespace_pages_keep_one_order(store: MemoryStore, minilm: Embedder) -> None:
    """docs/api.md: no particular order, but the same from page to page: paging by ``offset``
    lists each namespace once, as one big page does."""
    names = ["zeta", "alpha", "mike", "bravo", "yankee", "charlie", "x:1@b.c"]
    for i, name in enumerate(names):
        store.add([make(name, i, TEXTS[i % 5])], minilm.embed([TEXTS[i % 5]]))
    whole, more = store.namespaces(limit=1000)  # (the server holds other tests' too)
    assert not more
    assert sorted(n.namespace for n in whole) == sorted(names)
    paged: list[str] = []
    offset, more = 0, True
    while more:
        page, more = store.namespaces(limit=2, offset=offset)
        paged += [n.namespace for n in page]
        offset += 2
    assert paged == [n.namespace for n in whole]
    assert store.namespaces(limit=1000)[0] == whole


def test_a_bounded_vector_cache_loses_nothing(tmp_path: Path, minilm: Embedder) -> None:
    """Chroma 1.5.9 drops vectors of an evicted HNSW index that were not saved yet: with every
    write saved, 40 namespaces through a cache of 4 still find all their memories; so do
    collections made the old way (saved every 1,000 writes) once reopened."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    vectors = minilm.embed(TEXTS)
    old = chromadb.PersistentClient(
        path=str(tmp_path / "chroma"), settings=ChromaSettings(anonymized_telemetry=False)
    )
    from memory.chroma import collection_name

    for n in range(20):  # the old layout: default sync threshold, one write at a time
        col = old.get_or_create_collection(
            collection_name("mg-", f"old{n}"),
            metadata={"memgate_namespace": f"old{n}"},
            configuration={"hnsw": {"space": "cosine"}},
            embedding_function=None,
        )
        for i in range(3):
            col.upsert(ids=[f"old{n}-{i}"], embeddings=vectors[i : i + 1], documents=[TEXTS[i]])
        col.query(query_embeddings=vectors[:1], n_results=1)
    del old
    chromadb.api.client.SharedSystemClient.clear_system_cache()
    store = ChromaStore(path=tmp_path / "chroma", vector_cache=4)
    for n in range(20):
        for i in range(3):  # one write at a time, as the chat's writer makes them
            store.add([make(f"new{n}", i, TEXTS[i])], vectors[i : i + 1])
    for _ in range(2):
        for name in [f"old{n}" for n in range(20)] + [f"new{n}" for n in range(20)]:
            found = store.nearest(name, vectors[2], 3)
            assert len(found) == 3, name
            assert found[0][0].endswith("-2"), name


def test_store_survives_reopen(tmp_path: Path, minilm: Embedder) -> None:
    first = ChromaStore(path=tmp_path / "chroma")
    first.add([make("p", 0, TEXTS[0])], minilm.embed([TEXTS[0]]))
    first.close()
    second = ChromaStore(path=tmp_path / "chroma")
    assert second.get("p", "p-0") == make("p", 0, TEXTS[0])


def test_two_clients_of_one_server_see_the_same_namespaces(
    chroma_server: ChromaServer, minilm: Embedder
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    one = ChromaStore(url=chroma_server.url, prefix=prefix)
    two = ChromaStore(url=chroma_server.url, prefix=prefix)
    one.add([make("shared", 0, TEXTS[0])], minilm.embed([TEXTS[0]]))
    assert two.get("shared", "shared-0") == make("shared", 0, TEXTS[0])
    assert two.search("shared", minilm.embed(["Lisbon"])[0], 1)[0].memory.id == "shared-0"
    assert two.delete_namespace("shared") == 1
    assert one.count("shared") == 0  # one's cached handle is stale: it must notice
    one.add([make("shared", 1, TEXTS[1])], minilm.embed([TEXTS[1]]))
    assert two.count("shared") == 1
    assert [m.id for m in two.list("shared", limit=5)[0]] == ["shared-1"]


def test_server_down_at_start_then_up(tmp_path: Path, minilm: Embedder) -> None:
    from memory.store import StoreUnavailable

    server = ChromaServer(tmp_path / "late")
    store = ChromaStore(url=server.url)  # nothing listens yet: no error until used
    with pytest.raises(StoreUnavailable):
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.count("x")
    server.start()
    try:
        store.add([make("x", 0, TEXTS[0])], minilm.embed([TEXTS[0]]))
        assert store.count("x") == 1
        server.stop()
        with pytest.raises(StoreUnavailable):
            store.count("x")
        server.start()
        assert store.count("x") == 1
    finally:
        server.stop()


def test_hybrid_search_and_lexical_resync(
    chroma_server: ChromaServer, tmp_path: Path, minilm: Embedder
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    one = HybridStore(
        ChromaStore(url=chroma_server.url, prefix=prefix), LocalCopy(tmp_path / "1"), shared=True
    )
    two = HybridStore(
        ChromaStore(url=chroma_server.url, prefix=prefix), LocalCopy(tmp_path / "2"), shared=True
    )
    texts = [*TEXTS, "Order number XK-4471 ships on Tuesday", "The parcel will be late"]
    memories = [make("h", i, t) for i, t in enumerate(texts)]
    one.add(memories, minilm.embed(texts))
    query = "XK-4471"

    def recalled(store: HybridStore) -> list[Hit]:  # as MemoryService.recall fuses the two
        vector = minilm.embed([query])[0]
        return fused(
            store.search("h", vector, 3), store.search_text("h", query, 3), k=3, fusion_k=5.0
        )

    hits = recalled(one)
    assert hits[0].memory.content == texts[5]
    assert hits[0].lexical is True
    assert hits[0].similarity is not None
    assert all(h.score <= hits[0].score for h in hits)
    # the second gateway never indexed these: its lexical index is rebuilt from Chroma
    hits = recalled(two)
    assert hits[0].memory.content == texts[5]
    assert hits[0].lexical is True
    one.delete("h", memories[5].id)
    hits = recalled(two)
    assert all(h.memory.id != memories[5].id for h in hits)


def test_onnx_embedder_matches_the_full_model(minilm: Embedder, torch_minilm: Embedder) -> None:
    from memory.embedder import OnnxEmbedder

    assert isinstance(minilm, OnnxEmbedder)  # the product's default is the one tested
    onnx, minilm = minilm, torch_minilm
    texts = [*TEXTS, "a much longer text " * 200]  # past the 256-token limit: truncated
    a, b = onnx.embed(texts), minilm.embed(texts)
    assert a.shape == b.shape == (len(texts), 384)
    assert abs(float(np.linalg.norm(a[0])) - 1.0) < 1e-5
    assert float((a * b).sum(axis=1).min()) > 0.98
    # the same neighbour either way
    assert int(np.argmax(b @ a[0])) == 0
