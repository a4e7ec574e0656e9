"""The in-memory BM25 search (``memory.bm25``) against FTS5's own ``bm25()`` over the same file:
the same memories, the same scores, in the same order, through inserts out of time order,
changes, removals, a rebuild from the file and a copy made before token counts were kept."""

from __future__ import annotations

import random
import sqlite3
import tracemalloc
from pathlib import Path

import msgspec
import pytest

from memory import local_copy
from memory.local_copy import NamespaceCopy
from memory.records import Memory
from memory.words import query_terms

WORDS = [
    *("cat", "cats", "running", "run", "ran", "dog", "Lisbon", "Porto", "moved", "move"),
    *("café", "cafe", "the", "a", "guitar", "play", "playing", "music", "job", "jobs"),
    *("work", "worked", "hello", "thanks", "sister", "brother", "paint", "painting"),
    *("naïve", "naive", "2023", "May", "may", "Über", "uber"),
]


def fts5(index: NamespaceCopy, text: str, limit: int) -> list[tuple[str, float]]:
    """What FTS5's own statement answers."""
    terms = query_terms(text)
    return [(m.id, round(s, 6)) for m, s in index._fts5(terms, limit)] if terms else []


def in_memory(index: NamespaceCopy, text: str, limit: int) -> list[tuple[str, float]]:
    return [(m.id, round(s, 6)) for m, s in index.search(text, limit)]


def same_ranking(got: list[tuple[str, float]], want: list[tuple[str, float]], limit: int) -> None:
    """The same scores in the same order, and the same memories at each score (two memories
    whose scores are equal but for the last bit may stand in either order; a tie at the cut
    may keep either)."""
    assert [s for _, s in got] == [s for _, s in want]
    groups: dict[float, tuple[set[str], set[str]]] = {}
    for (a, score), (b, _) in zip(got, want, strict=True):
        groups.setdefault(score, (set(), set()))
        groups[score][0].add(a)
        groups[score][1].add(b)
    last = want[-1][1] if len(want) == limit else None
    for score, (mine, theirs) in groups.items():
        if score != last:
            assert mine == theirs, score


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scores_and_order_are_fts5s(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    index = NamespaceCopy(tmp_path / "ns.sqlite3", pair_gap=3600, pair_weight=0.8)
    memories: list[Memory] = []
    clock = 1_700_000_000.0
    compared = 0
    for step in range(40):
        batch = []
        for _ in range(rng.randint(1, 30)):
            clock += rng.choice([1, 10, 100, 5000])
            at = clock - rng.choice([50, 20_000]) if rng.random() < 0.2 else clock
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 25)))
            batch.append(
                Memory(
                    id=f"m{len(memories) + len(batch)}", namespace="n", content=text, created_at=at
                )
            )
        index.put(batch)
        memories += batch
        if rng.random() < 0.3:
            gone = {m.id for m in rng.sample(memories, min(len(memories), rng.randint(1, 5)))}
            index.remove(gone)
            memories = [m for m in memories if m.id not in gone]
        if rng.random() < 0.2:
            i = rng.randrange(len(memories))
            memories[i] = msgspec.structs.replace(
                memories[i], content=memories[i].content + " paint"
            )
            index.put([memories[i]])
        if step == 20:
            index.postings = None  # read again from the file
        for _ in range(5):
            query = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
            limit = rng.choice([5, 20, 50])
            same_ranking(in_memory(index, query, limit), fts5(index, query, limit), limit)
            compared += 1
    assert index.postings is not None
    assert compared == 200
    index.close()


def test_a_copy_without_token_counts_gets_them_at_its_first_search(tmp_path: Path) -> None:
    path = tmp_path / "ns.sqlite3"
    index = NamespaceCopy(path, pair_gap=3600, pair_weight=0.8)
    index.put(
        [
            Memory(
                id=str(i), namespace="n", content=f"my sister plays the guitar {i}", created_at=i
            )
            for i in range(20)
        ]
    )
    before = fts5(index, "sister guitar", 10)
    index.close()
    # as a file made before the counts were kept: no such column
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE docs DROP COLUMN toks")
    index = NamespaceCopy(path, pair_gap=3600, pair_weight=0.8)
    assert index.db.execute("SELECT COUNT(*) FROM docs WHERE toks IS NULL").fetchone() == (20,)
    assert in_memory(index, "sister guitar", 10) == before
    assert index.db.execute("SELECT COUNT(*) FROM docs WHERE toks IS NULL").fetchone() == (0,)
    index.close()


def test_a_word_fts5_splits_is_searched_as_a_phrase_by_fts5(tmp_path: Path) -> None:
    index = NamespaceCopy(tmp_path / "ns.sqlite3", pair_gap=0, pair_weight=0.8)
    index.put(
        [
            Memory(id="1", namespace="n", content="call snake_case here", created_at=1),
            Memory(id="2", namespace="n", content="a snake and a case", created_at=100),
        ]
    )
    # "snake_case" is one word to the query's split, two tokens to FTS5: a phrase
    assert [m.id for m, _ in index.search("snake_case", 10)] == ["1"]
    index.close()


def test_a_failed_write_leaves_no_trace_in_the_posting_lists(tmp_path: Path) -> None:
    index = NamespaceCopy(tmp_path / "ns.sqlite3", pair_gap=0, pair_weight=0.8)
    index.put([Memory(id="1", namespace="n", content="guitar lessons", created_at=1)])
    assert [m.id for m, _ in index.search("guitar", 5)] == ["1"]

    class Boom(Exception):
        pass

    def failing_write() -> None:
        with index.transaction():
            index.put([Memory(id="2", namespace="n", content="guitar strings", created_at=2)])
            raise Boom

    with pytest.raises(Boom):
        failing_write()
    assert [m.id for m, _ in index.search("guitar", 5)] == ["1"]
    index.close()


def test_a_big_namespace_is_searched_by_fts5_until_it_has_been_searched_a_few_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_copy, "_SMALL", 10)
    monkeypatch.setattr(local_copy, "_FTS_SEARCHES", 3)
    path = tmp_path / "ns.sqlite3"
    index = NamespaceCopy(path, pair_gap=3600, pair_weight=0.8)
    index.put(
        [
            Memory(id=str(i), namespace="n", content=f"guitar {i % 5} lesson {i}", created_at=i)
            for i in range(40)
        ]
    )
    answers = []
    for _ in range(3):
        answers.append(in_memory(index, "guitar lesson 3", 10))
        assert index.postings is None  # FTS5 answered
    answers.append(in_memory(index, "guitar lesson 3", 10))
    assert index.postings is not None  # the fourth read the posting lists
    for got in answers:
        same_ranking(got, answers[0], 10)
    index.close()
    # a small namespace reads them at its first search
    monkeypatch.setattr(local_copy, "_SMALL", 40)
    index = NamespaceCopy(path, pair_gap=3600, pair_weight=0.8)
    same_ranking(in_memory(index, "guitar lesson 3", 10), answers[0], 10)
    assert index.postings is not None
    index.close()


def test_lists_mostly_of_removed_memories_are_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_copy, "_SMALL", 10_000)
    index = NamespaceCopy(tmp_path / "ns.sqlite3", pair_gap=3600, pair_weight=0.8)
    index.put(
        [
            Memory(id=str(i), namespace="n", content=f"word{i % 7} common {i}", created_at=i)
            for i in range(3000)
        ]
    )
    first = index.search("common word3", 20)
    worn = index.postings
    assert worn is not None
    assert not worn.worn
    index.remove([str(i) for i in range(0, 3000, 3)] + [str(i) for i in range(1, 3000, 3)])
    assert worn.worn  # 2,000 of 3,000 slots dead
    got = in_memory(index, "common word3", 20)
    assert index.postings is not None
    assert index.postings is not worn
    assert not index.postings.worn
    assert len(index.postings.rids) == 1000
    same_ranking(got, fts5(index, "common word3", 20), 20)
    assert {m.id for m, _ in first} != {mid for mid, _ in got}
    index.close()


def _words(rng: random.Random, n: int, vocabulary: int) -> list[str]:
    return [" ".join(f"w{rng.randrange(vocabulary)}" for _ in range(12)) for _ in range(n)]


@pytest.mark.parametrize("vocabulary", [300, 300_000])
def test_the_size_estimate_follows_what_the_lists_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vocabulary: int
) -> None:
    """``Postings.nbytes`` within 25% of what building the lists and a search allocate, for a
    small and a large vocabulary (the cost of a term dominates the second)."""
    monkeypatch.setattr(local_copy, "_SMALL", 10_000)
    rng = random.Random(vocabulary)
    index = NamespaceCopy(tmp_path / "ns.sqlite3", pair_gap=3600, pair_weight=0.8)
    index.put(
        [
            Memory(id=str(i), namespace="n", content=text, created_at=i)
            for i, text in enumerate(_words(rng, 5000, vocabulary))
        ]
    )
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index.search("w1 w2 w3", 10)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert index.postings is not None
    assert 0.75 * held <= index.postings.nbytes <= 1.25 * held, (index.postings.nbytes, held)
    index.close()


def test_the_lists_of_all_namespaces_stay_within_their_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each namespace searched reads its lists; those of the least recently searched ones are
    let go when together they would hold more than ``postings_bytes``, and a namespace whose
    lists alone would not fit keeps none. Every search answers as FTS5 does, held or not."""
    monkeypatch.setattr(local_copy, "_SMALL", 10_000)
    rng = random.Random(5)
    texts = {name: _words(rng, n, 2000) for name, n in [("a", 400), ("b", 400), ("c", 400)]}
    texts["big"] = _words(rng, 3000, 20_000)
    sizes = {}
    for name, items in texts.items():  # what each one's lists cost
        alone = NamespaceCopy(tmp_path / f"{name}.sqlite3", pair_gap=3600, pair_weight=0.8)
        alone.put([Memory(id=str(i), namespace=name, content=t) for i, t in enumerate(items)])
        alone.search("w1", 1)
        assert alone.postings is not None
        sizes[name] = alone.postings.nbytes
        alone.close()
    budget = sizes["a"] + sizes["b"] + sizes["c"] // 2  # two small ones fit, not three
    assert sizes["big"] > budget
    pool = local_copy.LocalCopy(tmp_path / "pool", postings_bytes=budget)
    for name, items in texts.items():
        pool.add([Memory(id=str(i), namespace=name, content=t) for i, t in enumerate(items)])

    def held() -> dict[str, int]:
        return {
            name: index.postings.nbytes
            for name, index in pool._open.items()
            if index.postings is not None
        }

    for name in ["a", "b", "c", "a", "big", "b", "c"]:
        query = " ".join(f"w{rng.randrange(2000)}" for _ in range(3))
        got = [(m.id, round(s, 6)) for m, s in pool.search(name, query, 10)]
        want = pool.run(name, lambda index, q=query: fts5(index, q, 10))
        assert want is not None
        same_ranking(got, want, 10)
        now = held()
        assert sum(now.values()) <= budget, (name, now)
        assert "big" not in now
        if name != "big":
            assert name in now  # the one just searched keeps its lists
    assert set(held()) == {"b", "c"}  # "a" was the least recently searched
    pool.close()
