from __future__ import annotations

import random
from pathlib import Path

import pytest

from memory import local_copy
from memory.local_copy import LocalCopy, NamespaceCopy
from memory.recall import fuse
from memory.records import Memory
from memory.words import query_terms


def mem(mid: str, text: str, t: float, ns: str = "a") -> Memory:
    return Memory(id=mid, namespace=ns, content=text, created_at=t)


def ids(results: list[tuple[Memory, float]]) -> list[str]:
    return [m.id for m, _ in results]


def test_query_terms_drop_stopwords_and_repeats() -> None:
    assert query_terms("What is the name of THE dog, the dog?") == ["name", "dog"]
    assert query_terms("the of and") == []


def test_bm25_ranking_and_stemming(tmp_path: Path) -> None:
    index = LocalCopy(tmp_path / "index", pair_gap=0)
    index.add(
        [
            mem("1", "I adopted two cats last year", 1),
            mem("2", "The weather was lovely", 10_000),
            mem("3", "My cat sleeps all day; the cat is lazy", 20_000),
        ]
    )
    got = ids(index.search("a", "cats?", 10))
    assert set(got) == {"1", "3"}  # porter stemming: cats ~ cat
    assert got[0] == "3"  # two matches in a short text
    assert index.search("a", "the of", 10) == []
    assert index.search("other", "cat", 10) == []


def test_pairs_credit_the_neighbour_within_the_gap(tmp_path: Path) -> None:
    index = LocalCopy(tmp_path / "index", pair_gap=60)
    index.add(
        [
            mem("q", "Where did you go on holiday?", 100),
            mem("a", "We went to Lisbon.", 110),
            mem("late", "Unrelated remark much later.", 100_000),
        ]
    )
    # "holiday" is only in q, but the pair (q, a) makes a a match too
    assert set(ids(index.search("a", "holiday", 10))) == {"q", "a"}
    # the late memory is too far from "a" to pair with it
    assert ids(index.search("a", "remark", 10)) == ["late"]


def test_out_of_order_inserts_and_deletes_relink(tmp_path: Path) -> None:
    index = LocalCopy(tmp_path / "index", pair_gap=60)
    index.add([mem("1", "alpha", 100), mem("3", "gamma", 120)])
    index.add([mem("2", "beta", 110)])  # lands between 1 and 3
    assert set(ids(index.search("a", "gamma", 10))) == {"3", "2"}  # (2, 3) paired now
    assert "1" not in ids(index.search("a", "gamma", 10))
    index.delete("a", ["2"])
    assert set(ids(index.search("a", "gamma", 10))) == {"3", "1"}  # 3 pairs with 1 again
    assert index.count("a") == 2
    index.add([mem("3", "gamma", 120)])  # already indexed: unchanged
    assert index.count("a") == 2
    index.drop("a")
    assert index.count("a") == 0
    assert index.search("a", "gamma", 10) == []


def test_namespaces_are_separate(tmp_path: Path) -> None:
    index = LocalCopy(tmp_path / "index")
    index.add([mem("x", "secret walrus", 1, ns="a"), mem("y", "open walrus", 1, ns="b")])
    assert ids(index.search("a", "walrus", 10)) == ["x"]
    assert ids(index.search("b", "walrus", 10)) == ["y"]


def test_reciprocal_rank_fusion() -> None:
    fused = fuse(["a", "b", "c"], ["c", "d"], k=5)
    assert fused["c"] == 1 / 8 + 1 / 6
    assert fused["a"] == 1 / 6
    assert max(fused, key=fused.__getitem__) == "c"


def test_at_most_max_open_files_are_open_and_closed_ones_reopen(tmp_path: Path) -> None:
    index = LocalCopy(tmp_path / "index", max_open=2)
    for n in range(6):
        index.add([mem(f"{n}", f"walrus number {n}", 1, ns=f"ns{n}")])
    assert len(index._open) == 2
    for n in range(6):  # each file opens again when used
        assert ids(index.search(f"ns{n}", "walrus", 5)) == [f"{n}"]
    assert len(index._open) == 2
    assert len(list((tmp_path / "index").rglob("*.sqlite3"))) == 6
    index.drop("ns0")
    assert index.search("ns0", "walrus", 5) == []
    assert len(list((tmp_path / "index").rglob("*.sqlite3"))) == 5
    index.close()


def test_a_file_in_use_is_not_closed_and_a_dropped_one_is_reopened(tmp_path: Path) -> None:
    import threading

    index = LocalCopy(tmp_path / "index", max_open=1)
    index.add([mem("1", "walrus", 1)])
    started, release = threading.Event(), threading.Event()

    def slow(ix: object) -> int:
        started.set()
        release.wait(5)
        return 1

    worker = threading.Thread(target=index.write, args=("a", slow))
    worker.start()
    assert started.wait(5)
    index.add([mem("2", "other", 1, ns="b")])  # over max_open: "a" is in use, so it stays
    assert "a" in index._open
    dropper = threading.Thread(target=index.drop, args=("a",))
    dropper.start()
    release.set()
    worker.join(5)
    dropper.join(5)
    assert index.count("a") == 0
    index.add([mem("3", "walrus again", 2)])  # a new file
    assert ids(index.search("a", "walrus", 5)) == ["3"]
    index.close()


def test_pages_newest_first_and_the_place_of_removed_memories(tmp_path: Path) -> None:
    index = LocalCopy(tmp_path / "index")
    index.add([mem(f"m{i}", f"text {i}", float(i)) for i in range(5)])
    index.add([mem("tie", "same time as m4", 4.0)])
    first = index.page("a", None, 3)
    assert [m.id for m in first] == ["tie", "m4", "m3"]  # equal times: by id, descending
    cursor = index.cursor("a", "m3")
    assert cursor == (3_000_000, "m3")
    index.delete("a", ["m3"])
    assert index.cursor("a", "m3") == cursor  # removed, but its place is remembered
    assert [m.id for m in index.page("a", cursor, 10)] == ["m2", "m1", "m0"]
    assert index.cursor("a", "never") is None
    index.close()


def test_a_changed_memory_replaces_its_old_version(tmp_path: Path) -> None:
    index = LocalCopy(tmp_path / "index")
    index.add([mem("1", "walrus", 1)])
    index.add([mem("1", "narwhal", 1)])
    assert index.count("a") == 1
    assert index.search("a", "walrus", 5) == []
    assert ids(index.search("a", "narwhal", 5)) == ["1"]
    index.close()


def _expected_links(index: NamespaceCopy) -> tuple[dict[int, int | None], dict[int, str]]:
    """Each memory's partner (the memory just before it by time, then rid, when close enough)
    and the pair rows that follow, computed here from the docs table."""
    rows = index.db.execute(
        "SELECT rid, created_at, content FROM docs ORDER BY created_at, rid"
    ).fetchall()
    prev: dict[int, int | None] = {}
    pairs: dict[int, str] = {}
    for (rid0, t0, c0), (rid1, t1, c1) in zip([(None, None, None), *rows], rows, strict=False):
        close = rid0 is not None and t1 - t0 <= index.pair_gap
        prev[rid1] = rid0 if close else None
        if close:
            pairs[rid1] = f"{c0}\n{c1}"
    return prev, pairs


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_batched_writes_keep_every_pair_and_row_right(tmp_path: Path, seed: int) -> None:
    """Batches out of time order, with equal times, gaps wider than the pairing gap, an id
    twice in one batch, changed memories and removals: after each, the file holds exactly the
    memories, each pointing at the one just before it and its pair row made of both."""
    rng = random.Random(seed)
    index = NamespaceCopy(tmp_path / "ns.sqlite3", pair_gap=60, pair_weight=0.8)
    index.search("w1", 5)  # posting lists held from the start: kept in step by every write
    want: dict[str, Memory] = {}
    clock = 1_700_000_000.0
    for _ in range(30):
        batch = []
        for _ in range(rng.randint(1, 40)):
            clock += rng.choice([0, 1, 30, 59, 61, 500])
            at = clock - rng.choice([0, 45, 3000]) if rng.random() < 0.3 else clock
            mid = rng.choice(list(want)) if want and rng.random() < 0.15 else f"m{rng.random()}"
            text = " ".join(f"w{rng.randint(1, 30)}" for _ in range(rng.randint(1, 8)))
            batch.append(Memory(id=mid, namespace="n", content=text, created_at=at))
        if rng.random() < 0.2:
            batch.append(batch[0])  # the same memory twice in a batch
        index.put(batch)
        for memory in sorted(batch, key=lambda m: (m.created_at, m.id)):
            want[memory.id] = memory
        if rng.random() < 0.3:
            gone = set(rng.sample(sorted(want), min(len(want), rng.randint(1, 6))))
            index.remove(gone)
            for mid in gone:
                del want[mid]
        stored = {m.id: m for m in index.memories(list(want)).values()}
        assert stored == want
        assert index.count() == len(want)
        prev, pairs = _expected_links(index)
        assert dict(index.db.execute("SELECT rid, prev FROM docs").fetchall()) == prev
        assert dict(index.db.execute("SELECT rowid, body FROM pair").fetchall()) == pairs
        assert dict(index.db.execute("SELECT rowid, body FROM plain").fetchall()) == dict(
            index.db.execute("SELECT rid, content FROM docs").fetchall()
        )
        postings = index.postings
        assert postings is not None
        partners = {
            rid: (None if postings.partner[slot] < 0 else postings.rids[postings.partner[slot]])
            for rid, slot in postings.slot_of.items()
        }
        assert partners == prev
    index.close()


def test_a_batch_is_written_in_a_few_statements(tmp_path: Path) -> None:
    """Under load every statement's step gives the GIL up and waits to take it back: a batch of
    200 memories and their segment vectors runs a few statements, not a dozen a memory (it was
    ~3,600 with the tokens)."""
    index = NamespaceCopy(tmp_path / "ns.sqlite3", pair_gap=60, pair_weight=0.8)
    index.put([mem(f"old{i}", f"an older memory {i}", i * 10.0) for i in range(50)])
    ran: list[str] = []
    tokenizer_db = local_copy._TOKENIZER._db
    assert tokenizer_db is not None
    index.db.set_trace_callback(ran.append)
    tokenizer_db.set_trace_callback(ran.append)
    try:
        index.put(
            [mem(f"new{i}", f"a new memory number {i} here", 100 + i * 5.0) for i in range(200)]
        )
        index.keep_segments(
            [(f"new{i}", f"a new memory number {i} here", b"v") for i in range(200)]
        )
    finally:
        index.db.set_trace_callback(None)
        tokenizer_db.set_trace_callback(None)
    assert index.count() == 250
    assert len(index.segment_vectors([f"new{i}" for i in range(200)])) == 200
    ours = [sql for sql in ran if not sql.startswith("--")]  # not FTS5's own, inside ours
    assert len(ours) <= 24, ours
    index.close()


def test_segment_vectors_come_back_byte_for_byte(tmp_path: Path) -> None:
    """Read in one row, end to end: zero bytes, bytes that are not UTF-8, empty and long."""
    index = NamespaceCopy(tmp_path / "ns.sqlite3", pair_gap=60, pair_weight=0.8)
    rng = random.Random(5)
    memories = [mem(f"m{i}", f"memory number {i}. It has two sentences.", i) for i in range(40)]
    index.put(memories)
    blobs = {m.id: rng.randbytes(rng.choice([0, 1, 7, 768, 5000])) for m in memories[:30]}
    blobs["m0"] = b"\x00\xff\xfe\x00"
    index.keep_segments([(m.id, m.content, blobs[m.id]) for m in memories[:30]])
    asked = [m.id for m in rng.sample(memories, 25)] + ["absent"]
    assert index.segment_vectors(asked) == {mid: blobs[mid] for mid in asked if mid in blobs}
    assert index.segment_vectors(["m35", "absent"]) == {}
    index.close()


def test_a_query_is_tokenized_before_the_namespace_lock_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = LocalCopy(tmp_path / "index", pair_gap=0)
    index.add([mem("1", "I adopted two cats last year", 1)])
    held: list[bool] = []
    words = local_copy._TOKENIZER.words

    def spy(terms: list[str]) -> list[tuple[str, ...]]:
        held.append(index._open["a"].lock.locked())
        return words(terms)

    monkeypatch.setattr(local_copy._TOKENIZER, "words", spy)
    assert ids(index.search("a", "zebras and cats", 5)) == ["1"]
    assert held == [False]
    index.close()
