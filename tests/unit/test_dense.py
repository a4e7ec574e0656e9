from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memory import dense
from memory.dense import DenseRows
from memory.local_copy import LocalCopy
from memory.records import Memory


def _unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_rows_rank_as_a_scan_does_through_adds_replaces_and_removals() -> None:
    rng = np.random.default_rng(7)
    rows = DenseRows(16, capacity=2)  # grows as rows come
    truth: dict[int, np.ndarray] = {}
    for step in range(400):
        rid = int(rng.integers(0, 150))
        if step % 5 == 4:
            rows.remove(rid)
            truth.pop(rid, None)
        else:
            vector = _unit(rng, 1)[0] * float(rng.uniform(0.5, 3))  # any length: normalised
            rows.put(rid, dense.encode(vector))
            truth[rid] = vector / np.linalg.norm(vector)
        if step % 40 == 0 or step == 399:
            query = _unit(rng, 1)[0]
            for k in (1, 5, 500):
                expected = sorted(
                    ((r, float(v @ query)) for r, v in truth.items()), key=lambda x: (-x[1], x[0])
                )[:k]
                found = rows.nearest(query, k)
                assert [r for r, _ in found] == [r for r, _ in expected]
                assert [c for _, c in found] == pytest.approx([c for _, c in expected], abs=1e-5)
    assert len(rows) == len(truth)


def test_rows_built_from_the_copy_match_rows_put_one_by_one() -> None:
    rng = np.random.default_rng(3)
    vectors = _unit(rng, 50)
    rids = list(range(10, 60))
    built = DenseRows.build(rids, b"".join(dense.encode(v) for v in vectors), 16)
    one_by_one = DenseRows(16)
    for rid, vector in zip(rids, vectors, strict=True):
        one_by_one.put(rid, dense.encode(vector))
    query = _unit(rng, 1)[0]
    assert built.nearest(query, 7) == one_by_one.nearest(query, 7)
    assert built.nearest(np.zeros(16, dtype=np.float32), 3) == []
    assert built.nearest(query, 0) == []
    with pytest.raises(ValueError, match="8 floats where 16"):
        built.put(1, dense.encode(np.ones(8)))


def _memories(n: int) -> list[Memory]:
    return [
        Memory(id=f"m{i}", namespace="a", content=f"memory number {i}", created_at=float(i))
        for i in range(n)
    ]


def test_the_copy_answers_only_when_every_memory_has_its_vector(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    index = LocalCopy(tmp_path)
    items = _memories(20)
    vectors = _unit(rng, 20)
    encoded = {m.id: dense.encode(v) for m, v in zip(items, vectors, strict=True)}
    index.add(items[:10], encoded)
    query = vectors[3]
    found = index.nearest("a", query, 2)
    assert found is not None
    assert found[0][0][0] == items[3]
    assert index.nearest("a", query[:8], 2) is None  # another model's query: the store's to say
    index.add(items[10:])  # read from the store, say: no vectors
    assert index.nearest("a", query, 2) is None
    assert index.unvectored("a") == [m.id for m in items[10:]]
    # a vector for another content than the copy's (changed meanwhile) is not kept
    index.fill_vectors("a", [("m10", "another content", encoded["m10"])])
    assert index.nearest("a", query, 2) is None
    index.fill_vectors("a", [(m.id, m.content, encoded[m.id]) for m in items[10:]])
    found = index.nearest("a", vectors[15], 1)
    assert found is not None
    assert found[0][0][0] == items[15]
    # a rebuild keeps the vectors of the memories that come back unchanged
    index.rebuild("a", items[5:])
    found = index.nearest("a", vectors[15], 1)
    assert found is not None
    assert found[0][0][0] == items[15]
    index.close()
    # and the file keeps them: a new process reads them back
    again = LocalCopy(tmp_path)
    found = again.nearest("a", vectors[7], 3)
    assert found is not None
    assert next(m.id for m, _ in found[0]) == "m7"
    again.delete("a", ["m7"])
    found = again.nearest("a", vectors[7], 20)
    assert found is not None
    assert "m7" not in {m.id for m, _ in found[0]}
    again.close()


def test_vectors_of_open_namespaces_fit_their_budget(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    one = DenseRows.build(list(range(200)), _unit(rng, 200).tobytes(), 16).nbytes
    index = LocalCopy(tmp_path, vectors_bytes=int(one * 1.5))
    for namespace in ("a", "b"):
        items = [Memory(id=m.id, namespace=namespace, content=m.content) for m in _memories(200)]
        index.add(
            items, {m.id: dense.encode(v) for m, v in zip(items, _unit(rng, 200), strict=True)}
        )
    query = _unit(rng, 1)[0]
    assert index.nearest("a", query, 3) is not None
    assert index.nearest("b", query, 3) is not None  # a's rows let go for b's
    held = [index.run(ns, lambda i: i.rows is not None) for ns in ("a", "b")]
    assert held == [False, True]
    assert index.nearest("a", query, 3) is not None  # read again
    index.close()


def test_a_namespace_past_the_scan_limit_is_left_to_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dense, "MAX_ROWS", 5)
    rng = np.random.default_rng(1)
    index = LocalCopy(tmp_path)
    items = _memories(6)
    vectors = {m.id: dense.encode(v) for m, v in zip(items, _unit(rng, 6), strict=True)}
    index.add(items[:5], vectors)
    assert index.nearest("a", _unit(rng, 1)[0], 2) is not None
    index.add(items[5:], vectors)
    assert index.nearest("a", _unit(rng, 1)[0], 2) is None
    index.delete("a", ["m0"])
    assert index.nearest("a", _unit(rng, 1)[0], 2) is not None
    index.close()
