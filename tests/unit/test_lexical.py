from __future__ import annotations

from pathlib import Path

from memory.lexical import LexicalIndex, query_terms
from memory.recall import fuse
from memory.records import Memory


def mem(mid: str, text: str, t: float, ns: str = "a") -> Memory:
    return Memory(id=mid, namespace=ns, content=text, created_at=t)


def ids(results: list[tuple[Memory, float]]) -> list[str]:
    return [m.id for m, _ in results]


def test_query_terms_drop_stopwords_and_repeats() -> None:
    assert query_terms("What is the name of THE dog, the dog?") == ["name", "dog"]
    assert query_terms("the of and") == []


def test_bm25_ranking_and_stemming(tmp_path: Path) -> None:
    index = LexicalIndex(tmp_path / "lex.sqlite3", pair_gap=0)
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
    index = LexicalIndex(tmp_path / "lex.sqlite3", pair_gap=60)
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
    index = LexicalIndex(tmp_path / "lex.sqlite3", pair_gap=60)
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
    index = LexicalIndex(tmp_path / "lex.sqlite3")
    index.add([mem("x", "secret walrus", 1, ns="a"), mem("y", "open walrus", 1, ns="b")])
    assert ids(index.search("a", "walrus", 10)) == ["x"]
    assert ids(index.search("b", "walrus", 10)) == ["y"]


def test_reciprocal_rank_fusion() -> None:
    fused = fuse(["a", "b", "c"], ["c", "d"], k=5)
    assert fused["c"] == 1 / 8 + 1 / 6
    assert fused["a"] == 1 / 6
    assert max(fused, key=fused.__getitem__) == "c"


def test_tables_dropped_behind_a_cached_view_do_not_break_search_or_add(tmp_path: Path) -> None:
    one = LexicalIndex(tmp_path / "lex.sqlite3")
    other = LexicalIndex(tmp_path / "lex.sqlite3")  # e.g. another thread's view of the file
    one.add([mem("1", "walrus facts", 1)])
    assert ids(one.search("a", "walrus", 5)) == ["1"]  # ``one`` now knows the tables
    other.drop("a")
    assert one.search("a", "walrus", 5) == []  # no "no such table"
    one.add([mem("2", "walrus again", 2)])  # the tables are made anew
    assert ids(one.search("a", "walrus", 5)) == ["2"]
    other.rebuild("a", [mem("3", "walrus three", 3), mem("x", "walrus elsewhere", 3, "b")])
    assert ids(one.search("a", "walrus", 5)) == ["3"]
    assert one.search("b", "walrus", 5) == []  # a rebuild touches its own namespace only
