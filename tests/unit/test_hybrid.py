from __future__ import annotations

from pathlib import Path

from memory.hybrid import HybridStore
from memory.lexical import LexicalIndex
from memory.records import Memory
from tests.fakes import FakeEmbedder, MemStore

TEXTS = [
    "Order number XK-4471 ships on Tuesday",
    "The parcel will be late",
    "My sister lives in Porto",
    "I like green tea in the morning",
]


def memories(ns: str = "a") -> list[Memory]:
    return [
        Memory(id=f"m{i}", namespace=ns, content=t, created_at=float(i))
        for i, t in enumerate(TEXTS)
    ]


def test_search_fuses_dense_and_lexical(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    store = HybridStore(MemStore(), LexicalIndex(tmp_path / "lex.sqlite3", pair_gap=0))
    items = memories()
    store.add(items, embedder.embed(TEXTS))
    query = "when does XK-4471 arrive"
    hits = store.search("a", embedder.embed([query])[0], 3, query)
    assert hits[0].memory.id == "m0"
    assert hits[0].lexical is True
    assert store.search_text("a", query, 3)[0][0].id == "m0"
    # without text: the dense ranking alone
    dense = store.search("a", embedder.embed([query])[0], 3)
    assert all(h.lexical is False for h in dense)


def test_a_new_lexical_index_is_rebuilt_from_the_store(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    inner = MemStore()
    inner.add(memories(), embedder.embed(TEXTS))  # written before the index existed
    store = HybridStore(inner, LexicalIndex(tmp_path / "lex.sqlite3", pair_gap=0))
    assert [m.id for m, _ in store.search_text("a", "Porto", 5)] == ["m2"]


def test_shared_store_resyncs_at_every_search(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    inner = MemStore()
    mine = HybridStore(inner, LexicalIndex(tmp_path / "1.sqlite3", pair_gap=0), shared=True)
    other = HybridStore(inner, LexicalIndex(tmp_path / "2.sqlite3", pair_gap=0), shared=True)
    assert mine.search_text("a", "Porto", 5) == []
    other.add(memories(), embedder.embed(TEXTS))  # another gateway writes to the server
    assert [m.id for m, _ in mine.search_text("a", "Porto", 5)] == ["m2"]
    other.delete("a", "m2")
    assert mine.search_text("a", "Porto", 5) == []


def test_deletes_reach_both_indexes(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    inner = MemStore()
    store = HybridStore(inner, LexicalIndex(tmp_path / "lex.sqlite3", pair_gap=0))
    store.add(memories() + memories("b"), embedder.embed(TEXTS + TEXTS))
    assert store.delete("a", "m2") is True
    assert store.delete("a", "m2") is False
    assert store.search_text("a", "Porto", 5) == []
    assert store.count("a") == 3
    assert store.delete_namespace("a") == 3
    assert store.search_text("a", "tea", 5) == []
    assert [m.id for m, _ in store.search_text("b", "tea", 5)] == ["m3"]
    assert store.namespaces() == ["b"]
    store.close()


def test_dense_hits_come_from_the_index_or_else_the_store(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    inner = MemStore()
    inner.add(memories(), embedder.embed(TEXTS))  # not in the lexical index (yet)
    store = HybridStore(inner, LexicalIndex(tmp_path / "lex.sqlite3", pair_gap=0))
    vector = embedder.embed(["green tea in the morning"])[0]
    from_store = store.search("a", vector, 2)
    assert from_store[0].memory.id == "m3"
    store.search_text("a", "tea", 1)  # syncs the index: now it holds them
    assert store.lexical.memories("a", ["m3", "nope"]) == {"m3": memories()[3]}
    assert store.search("a", vector, 2) == from_store
    assert store.nearest("a", vector, 1) == [("m3", from_store[0].score)]


def test_a_search_during_an_erase_never_brings_erased_memories_back(tmp_path: Path) -> None:
    import threading
    import time

    class SlowErase(MemStore):
        def delete_namespace(self, namespace: str) -> int:
            time.sleep(0.3)  # a slow store: the erase is under way for a while
            return super().delete_namespace(namespace)

    embedder = FakeEmbedder()
    store = HybridStore(SlowErase(), LexicalIndex(tmp_path / "lex.sqlite3", pair_gap=0))
    store.add(memories(), embedder.embed(TEXTS))
    assert store.search_text("a", "Porto", 5)
    eraser = threading.Thread(target=store.delete_namespace, args=("a",))
    eraser.start()
    time.sleep(0.1)
    store.search_text("a", "Porto", 5)  # while the store is still erasing
    eraser.join()
    fresh = Memory(id="new", namespace="a", content="A new start", created_at=100.0)
    store.add([fresh], embedder.embed([fresh.content]))
    assert store.search_text("a", "Porto", 5) == []
    assert [m.id for m, _ in store.search_text("a", "new start", 5)] == ["new"]
