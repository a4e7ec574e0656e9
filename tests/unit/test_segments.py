"""Segment vectors: which texts get them, how they lift a dense candidate, where they are kept
(beside the memory in the local copy, gone with it), and how the service fills them in."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from memory.hybrid import HybridStore
from memory.local_copy import LocalCopy, NamespaceCopy
from memory.outbox import Outbox
from memory.recall import RecallSettings
from memory.records import Exchange, Hit, Memory
from memory.segments import MAX_SEGMENTS, decode, encode, has_segments, rescore, segments
from memory.service import MemoryService
from tests.conftest import wait_until
from tests.fakes import FakeEmbedder, MemStore

REQUEST = (
    "Help me make a budget spreadsheet with monthly columns, formulas and a chart for "
    "groceries, rent and travel."
)
FACT = f"{REQUEST} I moved to Krakow last spring."
NEAR = "I moved my desk to the window, did it help?"  # closer than FACT as a whole
QUERY = "where did i move last spring"


def test_segments_are_sentences_or_lines_of_a_text_that_has_several() -> None:
    assert segments("I live in Porto.") == []
    assert segments("  ") == []
    assert segments(FACT) == [REQUEST, "I moved to Krakow last spring."]
    # a short sentence joins the one before it; lines split too
    assert segments("I moved to Porto. Thanks! Any tips?\nfirst line here") == [
        "I moved to Porto. Thanks! Any tips?",
        "first line here",
    ]
    assert not has_segments("I live in Porto.")
    assert not has_segments("I moved. Thanks!")
    assert has_segments(FACT)
    many = " ".join(f"This is sentence number {i}." for i in range(20))
    assert len(segments(many)) == MAX_SEGMENTS


def test_encoded_vectors_round_trip() -> None:
    vectors = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    assert np.allclose(decode(encode(vectors), 8), vectors, atol=1e-2)


def test_a_sentence_lifts_the_memory_it_stands_in() -> None:
    embedder = FakeEmbedder()
    query, whole, near = embedder.embed([QUERY, FACT, NEAR])
    fact = Memory(id="fact", namespace="a", content=FACT)
    other = Memory(id="near", namespace="a", content=NEAR)
    cos_fact, cos_near = float(whole @ query), float(near @ query)
    assert cos_fact < cos_near  # the whole message is about the spreadsheet
    hits = [Hit(other, cos_near, cos_near), Hit(fact, cos_fact, cos_fact)]
    found = {"fact": encode(embedder.embed(segments(FACT)))}
    lifted = rescore(hits, found, query, 0.5)
    assert [h.memory.id for h in lifted] == ["fact", "near"]
    assert lifted[0].cosine > cos_fact
    # weight 0, or no segment vectors: the dense ranking as it was
    assert [h.memory.id for h in rescore(hits, found, query, 0.0)] == ["near", "fact"]
    assert [h.memory.id for h in rescore(hits, {}, query, 0.5)] == ["near", "fact"]
    # a sentence that matches less than the whole never lowers a memory
    unrelated = {"near": encode(embedder.embed(["groceries rent travel chart"]))}
    assert rescore(hits, unrelated, query, 0.5)[0] == hits[0]


def test_segment_vectors_live_and_go_with_their_memory(tmp_path: Path) -> None:
    index = NamespaceCopy(tmp_path / "a.sqlite3", pair_gap=0, pair_weight=0.8)
    one = Memory(id="1", namespace="a", content=FACT, created_at=1.0)
    two = Memory(id="2", namespace="a", content="One. Two three four.", created_at=2.0)
    index.put([one, two])
    index.keep_segments([("1", FACT, b"v1"), ("2", "stale content", b"v2"), ("3", "x", b"v3")])
    # vectors of another content (changed meanwhile) or of an absent memory are not kept
    assert index.segment_vectors(["1", "2", "3"]) == {"1": b"v1"}
    index.put([one])  # unchanged: kept
    assert index.segment_vectors(["1"]) == {"1": b"v1"}
    index.put([Memory(id="1", namespace="a", content="changed. Now this.", created_at=1.0)])
    assert index.segment_vectors(["1"]) == {}  # changed: gone, to be computed again
    index.keep_segments([("1", "changed. Now this.", b"new"), ("2", two.content, b"v2")])
    index.remove(["1"])
    assert index.segment_vectors(["1", "2"]) == {"2": b"v2"}
    index.replace([two])  # a rebuild keeps those of the memories that come back unchanged
    assert index.segment_vectors(["2"]) == {"2": b"v2"}
    index.replace([Memory(id="2", namespace="a", content="Other. Text here.", created_at=2.0)])
    assert index.segment_vectors(["2"]) == {}
    assert index.db.execute("SELECT COUNT(*) FROM segs").fetchone() == (0,)
    index.close()


def _service(tmp_path: Path, store: HybridStore, weight: float = 0.5) -> MemoryService:
    # segment vectors alone: NEAR is a question, which would weigh less (question_weight)
    settings = RecallSettings(
        lexical=False,
        segment_weight=weight,
        similarity_floor=0.0,
        question_weight=1.0,
        same_subject=2.0,
    )
    return MemoryService(store, FakeEmbedder(), Outbox(tmp_path / "q.sqlite3"), recall=settings)


def _store(tmp_path: Path, inner: MemStore | None = None) -> HybridStore:
    return HybridStore(
        inner or MemStore(), LocalCopy(tmp_path / "index", pair_gap=0), lexical_recall=False
    )


def test_recall_finds_a_fact_said_in_passing(tmp_path: Path) -> None:
    memories = [
        Memory(id="fact", namespace="a", content=FACT, created_at=1.0),
        Memory(id="near", namespace="a", content=NEAR, created_at=2.0),
    ]

    async def run(weight: float) -> list[str]:
        store = _store(tmp_path / str(weight))
        service = _service(tmp_path / str(weight), store, weight)
        await service.add(memories)
        kept = store.segment_vectors("a", ["fact", "near"])
        assert set(kept) == ({"fact"} if weight else set())  # NEAR is one sentence
        return [h.memory.id for h in await service.recall("a", QUERY)]

    assert asyncio.run(run(0.0)) == ["near", "fact"]
    assert asyncio.run(run(0.5)) == ["fact", "near"]


def test_the_writer_keeps_segment_vectors_of_chat_exchanges(tmp_path: Path) -> None:
    store = _store(tmp_path)

    async def run() -> None:
        service = _service(tmp_path, store)
        await service.remember(Exchange(namespace="a", user=FACT, assistant="Sure."))
        service.writer.start()
        await service.writer.stop()

    asyncio.run(run())
    user = next(m for m in store.list("a", limit=10)[0] if m.role == "user")
    assert set(store.segment_vectors("a", [user.id])) == {user.id}


def test_memories_without_segment_vectors_are_filled_in_after_a_recall(tmp_path: Path) -> None:
    """Written through another gateway (or before segment vectors existed): the first recall
    scores them by their whole vector and fills theirs in, in the background."""
    inner = MemStore()
    embedder = FakeEmbedder()
    fact = Memory(id="fact", namespace="a", content=FACT, created_at=1.0)
    near = Memory(id="near", namespace="a", content=NEAR, created_at=2.0)
    inner.add([fact, near], embedder.embed([FACT, NEAR]))
    store = _store(tmp_path, inner)
    store.copy.add([fact, near])

    async def run() -> tuple[list[str], list[str]]:
        service = _service(tmp_path, store)
        first = [h.memory.id for h in await service.recall("a", QUERY)]
        await asyncio.wait_for(asyncio.gather(*service._fills), 10)
        second = [h.memory.id for h in await service.recall("a", QUERY)]
        await service.close(1.0)
        return first, second

    first, second = asyncio.run(run())
    assert first == ["near", "fact"]
    assert wait_until(lambda: store.segment_vectors("a", ["fact"]))
    assert second == ["fact", "near"]


def test_segmented_calls_give_each_caller_its_rows() -> None:
    """A segmented request is never merged with a plain one, and each caller gets its texts'
    rows then its segments' rows, alone or split over both lanes by a bulk call."""
    from memory.embedder import BatchingEmbedder, embed_segmented

    inner = FakeEmbedder()
    texts = [FACT, NEAR, "First one here. Second one here.", "plain"] * 5

    async def run() -> None:
        batching = BatchingEmbedder(inner, busy_batch=4)
        plain, alone, other = await asyncio.gather(
            batching.embed(texts[:2]),
            batching.embed(texts[:3], segmented=True),
            batching.embed(texts[1:4], segmented=True),
        )
        assert np.allclose(plain, inner.embed(texts[:2]))
        assert np.allclose(alone, embed_segmented(inner, texts[:3]))
        assert np.allclose(other, embed_segmented(inner, texts[1:4]))
        bulk = await batching.embed_bulk(texts, segmented=True)
        assert np.allclose(bulk, embed_segmented(inner, texts))
        batching.close()

    asyncio.run(run())


def test_a_chat_embeds_its_user_turn_once_segments_included(tmp_path: Path) -> None:
    """The query of a chat is its user turn: the recall's model call gives its segment vectors
    too, and the writer stores them without embedding the turn again."""
    store = _store(tmp_path)
    embedder = FakeEmbedder()

    async def run() -> None:
        service = MemoryService(
            store, embedder, Outbox(tmp_path / "q.sqlite3"), recall=RecallSettings(lexical=False)
        )
        await service.recall("a", FACT)
        await service.remember(Exchange(namespace="a", user=FACT, assistant="Sure."))
        service.writer.start()
        await service.writer.stop()

    asyncio.run(run())
    texts = [t for call in embedder.calls for t in call]
    assert texts.count(FACT) == 1
    assert sorted(texts) == sorted([FACT, *segments(FACT), "Sure."])
    user = next(m for m in store.list("a", limit=10)[0] if m.role == "user")
    assert set(store.segment_vectors("a", [user.id])) == {user.id}


def test_a_queued_memory_is_lifted_by_its_sentences_as_a_stored_one_is(tmp_path: Path) -> None:
    async def run(weight: float) -> list[str]:
        folder = tmp_path / str(weight)
        store = _store(folder)
        service = _service(folder, store, weight)
        await service.add([Memory(id="near", namespace="a", content=NEAR, created_at=1.0)])
        await service.remember(Exchange(namespace="a", user=FACT, assistant="Sure."))
        await asyncio.gather(*service._background)  # its vectors, sentences included
        hits = await service.recall("a", QUERY)  # the writer never ran: FACT is queued
        return [h.memory.content for h in hits][:2]

    assert asyncio.run(run(0.0)) == [NEAR, FACT]
    assert asyncio.run(run(1.0)) == [FACT, NEAR]
