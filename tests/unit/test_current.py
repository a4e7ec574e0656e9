"""What is current comes first (memory.current), on made-up vectors."""

from __future__ import annotations

import numpy as np

from memory.current import current_first, subject_vectors
from memory.records import Hit, Memory
from memory.segments import encode


def hit(mid: str, text: str, at: float, score: float, role: str = "user") -> Hit:
    return Hit(Memory(id=mid, namespace="a", content=text, role=role, created_at=at), score)


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_the_latest_statement_of_a_subject_moves_above_the_older_one() -> None:
    hits = [
        hit("old", "Omar lives in Bergen.", 1.0, 0.9),
        hit("x", "Mina fences.", 2.0, 0.8),
        hit("y", "Ravi does pottery.", 5.0, 0.7),
        hit("new", "Omar moved to Seville.", 3.0, 0.6),
    ]
    vectors = {
        "old": unit(1, 0, 0, 0.1),
        "new": unit(1, 0, 0, 0.3),
        "x": unit(0, 1, 0, 0),
        "y": unit(0, 0, 1, 0),
    }
    out = current_first(hits, vectors, same_subject=0.45)
    assert [h.memory.id for h in out] == ["new", "old", "x", "y"]
    assert [h.score for h in out] == [0.9, 0.8, 0.7, 0.6]  # the places keep their scores
    # off, or another role, or not close enough: as it was
    assert current_first(hits, vectors, same_subject=2.0) == hits
    other = [*hits[:3], hit("new", "Omar moved to Seville.", 3.0, 0.6, role="assistant")]
    assert current_first(other, vectors, same_subject=0.45) == other
    far = {**vectors, "new": unit(0.3, 0, 0, 1)}
    assert current_first(hits, far, same_subject=0.45) == hits


def test_where_every_memory_looks_alike_nothing_moves() -> None:
    base = unit(1, 1, 1, 1)
    hits = [hit(f"m{i}", f"Caroline said thing {i}.", float(i), 1.0 - i / 10) for i in range(6)]
    vectors = {h.memory.id: unit(*(base + 0.05 * np.eye(4)[i % 4])) for i, h in enumerate(hits)}
    assert current_first(hits, vectors, same_subject=0.45) == hits
    assert current_first(hits, vectors, same_subject=0.45, margin=0.0) != hits  # the margin


def test_a_subject_is_the_sentence_that_matches_the_query() -> None:
    query = unit(1, 0, 0)
    hits = [hit("m", "Help me with a budget. Omar lives in Bergen.", 1.0, 0.5)]
    segments = {"m": encode(np.stack([unit(0, 1, 0), unit(0.9, 0, 0.1)]))}
    chosen = subject_vectors(hits, {"m": unit(0, 1, 0.2)}, segments, query)
    assert float(chosen["m"] @ unit(0.9, 0, 0.1)) > 0.99
