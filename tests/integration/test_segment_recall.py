"""Segment vectors with the product's embedder and embedded Chroma: a fact said in passing
inside an unrelated request is recalled (the issue's "Where do I live?")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from memory.chroma import ChromaStore
from memory.embedder import Embedder, OnnxEmbedder
from memory.hybrid import HybridStore
from memory.local_copy import LocalCopy
from memory.outbox import Outbox
from memory.recall import RecallSettings
from memory.records import Memory
from memory.segments import segments
from memory.service import MemoryService

FACT = (
    "Help me make a budget spreadsheet for the household, with a tab per month. "
    "I moved to Lisbon last spring and I still don't know what utilities cost here."
)
OTHERS = [
    "What's the weather usually like in Montreal in October?",
    "My friend is moving to Ljubljana next month, what should she know about it?",
    "How do I make my apartment less cold in winter without a huge bill?",
    "Here's an overview for Utrecht: the old town is walkable and trams are cheap.",
    "Can you recommend some books like The Martian?",
    "Write a haiku about autumn leaves.",
    "What does a paralegal typically earn?",
    "How should I prepare for a performance review?",
    "thanks!",
    "Happy to help! Let me know if you need anything else.",
]


def test_segment_rows_come_from_the_same_pass(minilm: Embedder) -> None:
    assert isinstance(minilm, OnnxEmbedder)
    texts = [FACT, OTHERS[0]]
    rows = minilm.embed_segmented(texts)
    assert rows.shape == (2 + len(segments(FACT)), minilm.dimension)
    assert np.allclose(rows[:2], minilm.embed(texts), atol=1e-5)
    assert np.allclose(np.linalg.norm(rows[2:], axis=1), 1.0, atol=1e-4)
    query = minilm.embed(["Where do I live?"])[0]
    assert float(rows[3] @ query) > float(rows[0] @ query)  # "I moved to Lisbon ..." vs all


def test_where_do_i_live_finds_the_move_said_in_passing(tmp_path: Path, minilm: Embedder) -> None:
    memories = [
        Memory(id=f"m{i}", namespace="me", content=text, created_at=1_700_000_000.0 + i)
        for i, text in enumerate([FACT, *OTHERS])
    ]

    async def ranks(weight: float) -> list[str]:
        folder = tmp_path / str(weight)
        store = HybridStore(
            ChromaStore(path=folder / "chroma"), LocalCopy(folder / "index", pair_gap=0)
        )
        service = MemoryService(
            store,
            minilm,
            Outbox(folder / "q.sqlite3"),
            recall=RecallSettings(segment_weight=weight),
        )
        try:
            await service.add(memories)
            return [h.memory.id for h in await service.recall("me", "Where do I live?", k=10)]
        finally:
            await service.close(1.0)
            store.close()

    without = asyncio.run(ranks(0.0))
    with_segments = asyncio.run(ranks(1.0))
    assert "m0" not in without[:3]
    assert with_segments[0] == "m0"
