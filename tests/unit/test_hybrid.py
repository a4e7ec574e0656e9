from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from memory.hybrid import HybridStore
from memory.local_copy import LocalCopy
from memory.recall import fused
from memory.records import Hit, Memory, Vectors, new_id
from memory.store import Changes, CursorNotFound, StoreUnavailable
from tests.conftest import wait_until
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
    store = HybridStore(MemStore(), LocalCopy(tmp_path / "index", pair_gap=0))
    items = memories()
    store.add(items, embedder.embed(TEXTS))
    query = "when does XK-4471 arrive"
    dense = store.search("a", embedder.embed([query])[0], 3)
    assert all(h.lexical is False for h in dense)  # the dense ranking alone
    lexical = store.search_text("a", query, 3)
    assert lexical[0][0].id == "m0"
    hits = fused(dense, lexical, k=3, fusion_k=5.0)  # as MemoryService.recall fuses them
    assert hits[0].memory.id == "m0"
    assert hits[0].lexical is True


def test_a_new_lexical_index_is_rebuilt_from_the_store(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    inner = MemStore()
    inner.add(memories(), embedder.embed(TEXTS))  # written before the index existed
    store = HybridStore(inner, LocalCopy(tmp_path / "index", pair_gap=0))
    assert [m.id for m, _ in store.search_text("a", "Porto", 5)] == ["m2"]


def gateway(
    inner: MemStore, folder: Path, *, interval: float = 0.0, margin: float = 0.0
) -> HybridStore:
    """A gateway's store over a shared store: its own local copies in ``folder``."""
    return HybridStore(
        inner,
        LocalCopy(folder, pair_gap=0),
        shared=True,
        sync_interval=interval,
        sync_margin=margin,
        verify_interval=0.0,
        repair_interval=0.0,
        recount_delay=0.01,
    )


def test_writes_through_another_gateway_are_caught_up(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    inner = MemStore()
    mine, other = gateway(inner, tmp_path / "one"), gateway(inner, tmp_path / "two")
    assert mine.search_text("a", "Porto", 5) == []
    other.add(memories(), embedder.embed(TEXTS))  # another gateway writes to the server
    assert [m.id for m, _ in mine.search_text("a", "Porto", 5)] == ["m2"]
    assert [m.id for m in mine.list("a", limit=10)[0]] == ["m3", "m2", "m1", "m0"]
    mine.close()
    other.close()


def test_a_catch_up_reads_what_changed_not_the_namespace(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    inner = MemStore()
    read: list[int] = []
    changes = inner.changes

    def counted(namespace: str, since: float | None) -> Changes:
        found = changes(namespace, since)
        read.append(len(found.memories))
        return found

    inner.changes = counted  # type: ignore[method-assign]
    bulk = [Memory(id=f"b{i}", namespace="a", content=f"note {i}") for i in range(300)]
    inner.add(bulk, embedder.embed([m.content for m in bulk]))
    mine, other = gateway(inner, tmp_path / "one"), gateway(inner, tmp_path / "two")
    mine.search_text("a", "note", 5)
    assert read[0] == 300  # the first look copies the namespace, once
    other.search_text("a", "note", 5)  # (and the other gateway's first look, its own copy)
    assert sorted(read)[-2:] == [300, 300]
    time.sleep(0.01)
    for i in range(3):
        fresh = Memory(id=f"new{i}", namespace="a", content=f"walrus {i}")
        other.add([fresh], embedder.embed([fresh.content]))
        assert [m.id for m, _ in mine.search_text("a", f"walrus {i}", 1)] == [f"new{i}"]
    # then only what was written since (the background check catches up too)
    assert sorted(read)[-3] == 1
    mine.close()
    other.close()


def test_memories_deleted_through_another_gateway_are_never_returned(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    inner = MemStore()
    # a long interval: no catch-up happens, only the check of what the copy proposes
    mine = gateway(inner, tmp_path / "one", interval=3600.0)
    other = gateway(inner, tmp_path / "two", interval=3600.0)
    other.add(memories(), embedder.embed(TEXTS))
    assert [m.id for m, _ in mine.search_text("a", "Porto", 5)] == ["m2"]
    assert other.delete("a", "m2") is True
    assert mine.search_text("a", "Porto", 5) == []
    assert "m2" not in mine.copy.ids("a")  # and the copy forgot it
    other.delete("a", "m1")
    page, more = mine.list("a", limit=10)
    assert [m.id for m in page] == ["m3", "m0"]
    assert more is False
    mine.close()
    other.close()


def test_an_erasure_through_another_gateway_discards_the_copy(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    inner = MemStore()
    mine, other = gateway(inner, tmp_path / "one"), gateway(inner, tmp_path / "two")
    other.add(memories(), embedder.embed(TEXTS))
    assert mine.search_text("a", "Porto", 5)
    assert other.delete_namespace("a") == 4
    assert mine.search_text("a", "Porto", 5) == []
    assert mine.copy.count("a") == 0
    fresh = Memory(id="new", namespace="a", content="Porto again", created_at=50.0)
    other.add([fresh], embedder.embed([fresh.content]))  # a new generation of "a"
    assert [m.id for m, _ in mine.search_text("a", "Porto", 5)] == ["new"]
    assert mine.copy.ids("a") == {"new"}
    mine.close()
    other.close()


def test_a_copy_that_missed_a_deletion_is_repaired(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    inner = MemStore()
    mine, other = gateway(inner, tmp_path / "one"), gateway(inner, tmp_path / "two")
    other.add(memories(), embedder.embed(TEXTS))
    mine.search_text("a", "Porto", 5)
    wait_until(lambda: not mine._background)  # the first check after start is over
    other.delete("a", "m0")  # no read of mine ever proposes m0 again
    assert "m0" in mine.copy.ids("a")
    mine.search_text("a", "tea", 5)  # counts disagree, twice: repaired, in the background
    wait_until(lambda: "m0" not in mine.copy.ids("a"))
    mine.close()
    other.close()


def notes(store: HybridStore, count: int) -> list[Memory]:
    """``count`` memories written to namespace "a", a second apart, ids carrying their time."""
    items = [
        Memory(id=new_id(float(i)), namespace="a", content=f"note {i}", created_at=float(i))
        for i in range(count)
    ]
    store.add(items, FakeEmbedder().embed([m.content for m in items]))
    return items


def test_pages_are_keyset_and_a_deleted_cursor_still_works(tmp_path: Path) -> None:
    inner = MemStore()
    mine, other = gateway(inner, tmp_path / "one"), gateway(inner, tmp_path / "two")
    items = notes(other, 25)
    newest_first = [m.id for m in reversed(items)]
    page, more = mine.list("a", limit=10)
    assert [m.id for m in page] == newest_first[:10]
    assert more
    other.delete("a", page[-1].id)  # the cursor itself goes
    other.delete("a", newest_first[10])  # and the first memory of the next page
    page, more = mine.list("a", limit=10, after=page[-1].id)
    assert [m.id for m in page] == newest_first[11:21]
    assert more
    # a legacy id (no time in it) that the copy never saw cannot be placed
    with pytest.raises(CursorNotFound):
        mine.list("a", limit=10, after="m-unknown")
    mine.close()
    other.close()


def test_an_export_during_deletions_sees_every_memory_that_survives(tmp_path: Path) -> None:
    inner = MemStore()
    mine, other = gateway(inner, tmp_path / "one"), gateway(inner, tmp_path / "two")
    items = notes(other, 200)
    doomed = {m.id for m in items[::3]}
    seen: list[str] = []
    after: str | None = None
    while True:
        page, more = mine.list("a", limit=7, after=after)
        seen += [m.id for m in page]
        for mid in list(doomed)[:5]:  # deletions land between pages
            other.delete("a", mid)
            doomed.discard(mid)
        if not more:
            break
        after = page[-1].id
    survivors = inner.ids("a")
    assert survivors <= set(seen)
    assert len(seen) == len(set(seen))


def test_deletes_reach_both_indexes(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    inner = MemStore()
    store = HybridStore(inner, LocalCopy(tmp_path / "index", pair_gap=0))
    store.add(memories() + memories("b"), embedder.embed(TEXTS + TEXTS))
    assert store.delete("a", "m2") is True
    assert store.delete("a", "m2") is False
    assert store.search_text("a", "Porto", 5) == []
    assert store.count("a") == 3
    assert store.delete_namespace("a") == 3
    assert store.search_text("a", "tea", 5) == []
    assert [m.id for m, _ in store.search_text("b", "tea", 5)] == ["m3"]
    assert [n.namespace for n in store.namespaces(limit=10)[0]] == ["b"]
    store.close()


def _ranked(hits: Sequence[Hit]) -> list[tuple[str, float]]:
    return [(h.memory.id, round(h.score, 5)) for h in hits]


def test_dense_hits_come_from_the_store_until_the_copy_has_the_vectors(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    inner = MemStore()
    inner.add(memories(), embedder.embed(TEXTS))  # written before the copy existed
    store = HybridStore(inner, LocalCopy(tmp_path / "index", pair_gap=0))
    vector = embedder.embed(["green tea in the morning"])[0]
    from_store = store.search("a", vector, 2)  # the copy is read from the store: no vectors
    assert from_store[0].memory.id == "m3"
    assert inner.calls.count("search") == 1
    assert store.copy.memories("a", ["m3", "nope"]) == {"m3": memories()[3]}
    wait_until(lambda: not store.copy.unvectored("a"))  # read from the store meanwhile
    assert "vectors" in inner.calls
    assert _ranked(store.search("a", vector, 2)) == _ranked(from_store)
    assert inner.calls.count("search") == 1  # answered by the copy
    assert store.nearest("a", vector, 1) == [("m3", from_store[0].score)]
    store.close()


def test_alone_on_the_store_dense_hits_come_from_the_copy(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    inner = MemStore()
    store = HybridStore(inner, LocalCopy(tmp_path / "index", pair_gap=0))
    items = memories() + memories("b")
    store.add(items, embedder.embed(TEXTS + TEXTS))
    for query in ["green tea in the morning", "when is the parcel late", "Porto sister"]:
        vector = embedder.embed([query])[0]
        for k in (1, 3, 10):
            local = store.search("a", vector, k)
            assert _ranked(local) == _ranked(inner.search("a", vector, k))
            assert all(h.memory.namespace == "a" for h in local)
    hits, segments = store.search_segmented("a", vector, 2)
    assert [h.memory.id for h in hits] == ["m2", "m0"]
    assert segments == {}
    assert inner.calls.count("search") == 9  # the comparisons above, none by the copy
    # a filter is the store's to apply
    assert store.search("a", vector, 2, where={"role": "assistant"}) == []
    assert inner.calls.count("search") == 10
    store.close()


def test_the_copy_never_finds_what_was_deleted_or_changed(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    inner = MemStore()
    store = HybridStore(inner, LocalCopy(tmp_path / "index", pair_gap=0))
    store.add(memories(), embedder.embed(TEXTS))
    tea = embedder.embed(["green tea"])[0]
    assert store.search("a", tea, 1)[0].memory.id == "m3"
    assert store.delete("a", "m3") is True
    assert "m3" not in {h.memory.id for h in store.search("a", tea, 10)}
    changed = Memory(id="m1", namespace="a", content="green tea with honey", created_at=1.0)
    store.add([changed], embedder.embed([changed.content]))
    best = store.search("a", tea, 1)[0]
    assert best.memory == changed
    assert best.score == pytest.approx(float(embedder.embed([changed.content])[0] @ tea), 1e-5)
    assert store.delete_namespace("a") == 3
    assert store.search("a", tea, 10) == []
    assert "search" not in inner.calls[:-1]  # only the empty namespace went to the store
    store.close()


def test_a_shared_store_answers_dense_hits_itself(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    inner = MemStore()
    mine, other = gateway(inner, tmp_path / "one"), gateway(inner, tmp_path / "two")
    mine.add(memories(), embedder.embed(TEXTS))
    late = Memory(id="late", namespace="a", content="green tea at night", created_at=9.0)
    other.add([late], embedder.embed([late.content]))
    hits = mine.search("a", embedder.embed(["green tea at night"])[0], 1)
    assert [h.memory.id for h in hits] == ["late"]  # written through the other one: at once
    assert inner.calls.count("search") == 1
    mine.close()
    other.close()


def test_vectors_in_memory_are_bounded(tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    inner = MemStore()
    store = HybridStore(inner, LocalCopy(tmp_path / "index", pair_gap=0, vectors_bytes=0))
    store.add(memories(), embedder.embed(TEXTS))
    assert store.search("a", embedder.embed(["tea"])[0], 1)[0].memory.id == "m3"
    assert inner.calls.count("search") == 1  # none may be held: the store answers
    store.close()


def test_a_search_during_an_erase_never_brings_erased_memories_back(tmp_path: Path) -> None:
    import threading

    started, release = threading.Event(), threading.Event()

    class SlowErase(MemStore):
        def delete_namespace(self, namespace: str) -> int:
            started.set()  # a slow store: the erase is under way until released
            release.wait(10)
            return super().delete_namespace(namespace)

    embedder = FakeEmbedder()
    store = HybridStore(SlowErase(), LocalCopy(tmp_path / "index", pair_gap=0))
    store.add(memories(), embedder.embed(TEXTS))
    assert store.search_text("a", "Porto", 5)
    eraser = threading.Thread(target=store.delete_namespace, args=("a",))
    eraser.start()
    assert started.wait(10)
    searcher = threading.Thread(target=store.search_text, args=("a", "Porto", 5))
    searcher.start()  # while the store is still erasing (it may wait for the erase's lock)
    searcher.join(0.2)
    release.set()
    eraser.join(10)
    searcher.join(10)
    assert not eraser.is_alive()
    assert not searcher.is_alive()
    fresh = Memory(id="new", namespace="a", content="A new start", created_at=100.0)
    store.add([fresh], embedder.embed([fresh.content]))
    assert store.search_text("a", "Porto", 5) == []
    assert [m.id for m, _ in store.search_text("a", "new start", 5)] == ["new"]


def test_alone_on_its_store_a_gateway_checks_counts_once_and_repairs_a_gap(
    tmp_path: Path,
) -> None:
    embedder = FakeEmbedder()
    inner = MemStore()
    first = HybridStore(inner, LocalCopy(tmp_path / "index", pair_gap=0))
    first.add(memories(), embedder.embed(TEXTS))
    assert first.search_text("a", "Porto", 5)
    first.close()
    # the gateway stopped between a store write and its copy's
    lost = Memory(id="gap", namespace="a", content="A walrus in the gap", created_at=9.0)
    inner.add([lost], embedder.embed([lost.content]))
    inner.calls.clear()
    again = HybridStore(inner, LocalCopy(tmp_path / "index", pair_gap=0))
    again.search_text("a", "walrus", 5)  # the first look counts, and repairs in the background
    wait_until(lambda: "gap" in again.copy.ids("a"))
    assert "changes" not in inner.calls  # alone on the store: counting is enough
    calls = len(inner.calls)
    again.search_text("a", "walrus", 5)
    # later: nothing (alone on its store, its copy holds nothing the store does not)
    assert inner.calls[calls:] == []
    again.close()


def test_a_change_through_another_gateway_reaches_the_copy(tmp_path: Path) -> None:
    import msgspec

    embedder = FakeEmbedder()
    inner = MemStore()
    mine, other = gateway(inner, tmp_path / "one"), gateway(inner, tmp_path / "two")
    other.add(memories(), embedder.embed(TEXTS))
    assert [m.id for m, _ in mine.search_text("a", "Porto", 5)] == ["m2"]
    changed = msgspec.structs.replace(memories()[2], content="My sister lives in Braga")
    time.sleep(0.01)
    other.add([changed], embedder.embed([changed.content]))
    assert [m.id for m, _ in mine.search_text("a", "Braga", 5)] == ["m2"]
    assert mine.search_text("a", "Porto", 5) == []
    mine.close()
    other.close()


def test_alone_on_its_store_the_copy_never_holds_what_the_store_does_not(tmp_path: Path) -> None:
    """Lexical matches are not checked against the store when a gateway is alone on it: a
    delete leaves the copy before the store (a failed one leaves the copy without a memory
    the store still holds, until it is repaired), an erasure likewise, and a write cannot
    fall between an erasure's two halves."""
    import threading

    embedder = FakeEmbedder()

    class Flaky(MemStore):
        fail_delete = False
        fail_erase = False
        adding = threading.Event()
        release = threading.Event()
        slow_add = False

        def delete(self, namespace: str, memory_id: str) -> bool:
            if self.fail_delete:
                raise StoreUnavailable("down while deleting")
            return super().delete(namespace, memory_id)

        def delete_namespace(self, namespace: str) -> int:
            if self.fail_erase:
                raise StoreUnavailable("down while erasing")
            return super().delete_namespace(namespace)

        def add(self, memories: Sequence[Memory], vectors: Vectors) -> None:
            super().add(memories, vectors)
            if self.slow_add:
                self.adding.set()  # in the store, not yet in the copy
                self.release.wait(10)

    inner = Flaky()
    store = HybridStore(
        inner,
        LocalCopy(tmp_path / "index", pair_gap=0),
        repair_interval=0.0,
        recount_delay=0.01,
    )
    store.add(memories(), embedder.embed(TEXTS))
    assert [m.id for m, _ in store.search_text("a", "Porto", 5)] == ["m2"]
    inner.calls.clear()
    assert [m.id for m, _ in store.search_text("a", "Porto", 5)] == ["m2"]
    assert "existing" not in inner.calls

    inner.fail_delete = True
    with pytest.raises(StoreUnavailable):
        store.delete("a", "m2")
    assert "m2" in inner.ids("a")
    assert store.search_text("a", "Porto", 5) == []  # the copy let it go first
    wait_until(lambda: "m2" in store.copy.ids("a"))  # checked again and repaired
    assert [m.id for m, _ in store.search_text("a", "Porto", 5)] == ["m2"]
    inner.fail_delete = False
    assert store.delete("a", "m2") is True
    assert store.search_text("a", "Porto", 5) == []
    assert store.copy.ids("a") <= inner.ids("a")

    inner.fail_erase = True
    with pytest.raises(StoreUnavailable):
        store.delete_namespace("a")
    inner.fail_erase = False
    # the copy was thrown away first; the next use reads the namespace again from the store
    assert [m.id for m, _ in store.search_text("a", "tea", 5)] == ["m3"]

    # a write of the namespace under way when it is erased: the erasure waits for it
    inner.slow_add = True
    late = Memory(id="late", namespace="a", content="A late walrus", created_at=50.0)
    writer = threading.Thread(target=store.add, args=([late], embedder.embed([late.content])))
    writer.start()
    assert inner.adding.wait(10)
    eraser = threading.Thread(target=store.delete_namespace, args=("a",))
    eraser.start()
    eraser.join(0.2)
    assert eraser.is_alive()  # waiting for the write to reach the copy too
    inner.release.set()
    writer.join(10)
    eraser.join(10)
    assert not inner.ids("a")
    assert store.search_text("a", "walrus", 5) == []
    assert not store.copy.ids("a")
    store.close()


def test_a_namespace_written_first_is_caught_up_before_its_first_recall(tmp_path: Path) -> None:
    """A copy made by writes has never been compared with the store (which may hold older
    memories of the namespace): that first catch-up reads the whole namespace, in the
    background right after the write, not in the first recall."""
    embedder = FakeEmbedder()
    inner = MemStore()
    older = Memory(
        id="old", namespace="a", content="an older note about walruses", created_at=-99.0
    )
    inner.add([older], embedder.embed([older.content]))  # before this gateway's copy existed
    store = HybridStore(inner, LocalCopy(tmp_path / "index", pair_gap=0))
    store.add(memories(), embedder.embed(TEXTS))
    wait_until(lambda: inner.calls.count("changes") == 1)
    wait_until(lambda: "old" in store.copy.ids("a"))
    wait_until(lambda: not store.copy.unvectored("a"))  # and its vectors
    assert [m.id for m, _ in store.search_text("a", "walruses", 5)] == ["old"]
    assert store.search("a", embedder.embed(["walruses"])[0], 1)[0].memory.id == "old"
    # the recall read nothing from the store
    assert inner.calls.count("changes") == 1
    assert "search" not in inner.calls
    store.close()
