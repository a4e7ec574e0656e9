"""MemoryService: recall over the store and the write queue, one model call per text, the
writer's wait for a gap between searches."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from memory.hybrid import HybridStore
from memory.local_copy import LocalCopy
from memory.outbox import Outbox
from memory.recall import RecallSettings
from memory.records import Exchange, Hit, Memory, Vectors
from memory.service import MemoryService, _pending_hits
from tests.fakes import FakeEmbedder, MemStore


def mem(mid: str, ns: str = "a", text: str = "hello") -> Memory:
    return Memory(id=mid, namespace=ns, content=text)


def _service(tmp_path: Path, store: MemStore) -> MemoryService:
    return MemoryService(store, FakeEmbedder(), Outbox(tmp_path / "q.sqlite3"))


def test_recall_sees_the_newest_queued_memories(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "q.sqlite3", recent=3)
    box.put([mem(str(i)) for i in range(5)])
    assert [m.id for m in box.pending("a")] == ["2", "3", "4"]
    assert box.depth() == 5  # all still queued for the writer
    box.close()
    assert [m.id for m in Outbox(tmp_path / "q.sqlite3", recent=3).pending("a")] == ["2", "3", "4"]


def test_concurrent_recalls_and_writer_embed_each_text_once(tmp_path: Path) -> None:
    store = MemStore()

    async def run() -> None:
        embedder = FakeEmbedder()
        service = MemoryService(store, embedder, Outbox(tmp_path / "q.sqlite3"))
        await service.remember(Exchange(namespace="a", user="my cat is Tom", assistant="ok Tom"))
        await asyncio.gather(*(service.recall("a", "what is my cat") for _ in range(20)))
        service.writer.start()
        await service.writer.stop()
        texts = [t for call in embedder.calls for t in call]
        assert sorted(texts) == ["my cat is Tom", "ok Tom", "what is my cat"]
        assert store.count("a") == 2

    asyncio.run(run())


def test_a_small_write_waits_for_the_gap_after_a_search() -> None:
    """Events, not the clock: a gap that waits when it should not would hit the 30 s
    max_wait, far past the 5 s bound of each step."""
    from memory.service import SearchTracker

    async def run() -> None:
        tracker = SearchTracker(recent=30.0, max_wait=30.0)
        await asyncio.wait_for(tracker.gap(), 5)  # no search yet: at once

        release = asyncio.Event()

        async def search() -> None:
            with tracker.searching():
                await release.wait()

        task = asyncio.create_task(search())
        await asyncio.sleep(0)  # the search is running
        waiting = asyncio.create_task(tracker.gap())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done()  # it waits for the running search to end
        release.set()
        await asyncio.wait_for(waiting, 5)
        await task

        # a search ended just now: the gap waits for the end of the next one
        waiting = asyncio.create_task(tracker.gap())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done()
        with tracker.searching():
            pass
        await asyncio.wait_for(waiting, 5)

        # and never longer than max_wait
        brief = SearchTracker(recent=30.0, max_wait=0.01)
        with brief.searching():
            pass
        await asyncio.wait_for(brief.gap(), 5)

    asyncio.run(run())


def _pending_reference(
    stored: list[Hit], pending: list[Memory], cosines: np.ndarray
) -> list[tuple[str, float, float]]:
    """The queued memories' scores as first written: one loop, every stored hit each."""
    fused = any(h.score != h.cosine for h in stored)
    out = []
    for memory, cosine in zip(pending, cosines, strict=True):
        similarity = float(cosine)
        score = similarity
        if fused:
            above = [h.score for h in stored if h.cosine >= similarity]
            score = min(above) * 0.999 if above else max(h.score for h in stored)
        out.append((memory.id, score, similarity))
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_queued_memories_are_scored_among_the_stored_hits(fused: bool) -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        stored = []
        for i in range(int(rng.integers(0, 30))):
            cosine = float(np.round(rng.uniform(0, 1), 2))  # ties too
            score = float(rng.uniform(0, 0.4)) if fused else cosine
            stored.append(Hit(mem(f"s{i}"), score, cosine))
        pending = [mem(f"p{i}") for i in range(int(rng.integers(1, 80)))]
        cosines = np.round(rng.uniform(0, 1, len(pending)), 2).astype(np.float32)
        want = _pending_reference(stored, pending, cosines)
        hits = _pending_hits(stored, pending, cosines, 100)
        got = [(h.memory.id, h.score, h.cosine) for h in hits]
        assert [g[0] for g in got] == [w[0] for w in want]
        for (_, gs, gc), (_, ws, wc) in zip(got, want, strict=True):
            assert gs == pytest.approx(ws, abs=1e-12)
            assert gc == wc
        # only the most similar are kept when there are more than the limit
        cut = _pending_hits(stored, pending, cosines, 5)
        best = sorted(want, key=lambda w: -w[2])[:5]
        assert sorted(h.cosine for h in cut) == sorted(w[2] for w in best)


TEA = ["green tea in the morning", "my sister lives in Porto", "the parcel will be late"]


@pytest.mark.parametrize("segment_weight", [1.0, 0.0])
def test_alone_on_its_store_a_recall_searches_in_the_models_thread(
    tmp_path: Path, segment_weight: float
) -> None:
    """Alone on its store, a recall's dense search follows its query's model call in the
    model's thread, and finds what the search on its own finds; with a filter, a query
    already embedded or a shared store, it runs on its own as before."""
    model_threads: list[int] = []
    nearby: list[tuple[int, bool]] = []

    class Recording(FakeEmbedder):
        def embed(self, texts: Sequence[str]) -> Vectors:
            model_threads.append(threading.get_ident())
            return super().embed(texts)

    class Watched(HybridStore):
        def search_nearby(
            self, namespace: str, vector: Vectors, k: int, *, segmented: bool
        ) -> tuple[list[Hit], dict[str, bytes]] | None:
            found = super().search_nearby(namespace, vector, k, segmented=segmented)
            nearby.append((threading.get_ident(), found is not None))
            return found

    def hits(found: list[Hit]) -> list[tuple[str, float]]:
        return [(h.memory.id, round(h.score, 5)) for h in found]

    async def run(shared: bool) -> None:
        store = Watched(MemStore(), LocalCopy(tmp_path / f"index-{shared}"), shared=shared)
        settings = RecallSettings(segment_weight=segment_weight, similarity_floor=0.0)
        service = MemoryService(
            store, Recording(), Outbox(tmp_path / f"q-{shared}.sqlite3"), recall=settings
        )
        await service.add([mem(f"m{i}", text=t) for i, t in enumerate(TEA * 3)])
        await asyncio.to_thread(store.catch_up, "a")  # as after a first recall
        model_threads.clear()
        got = await service.recall("a", "tea in Porto")
        if shared:
            assert nearby == []  # never tried: the store answers
        else:
            assert nearby == [(model_threads[-1], True)]  # in the model's thread, after it
        chained, service._nearby = service._nearby, None  # the search on its own
        service._vectors.clear()
        service._segment_cache.clear()
        alone = await service.recall("a", "tea in Porto")
        assert got
        assert hits(got) == hits(alone)
        service._nearby = chained
        nearby.clear()
        again = await service.recall("a", "tea in Porto")  # embedded already: on its own
        assert hits(again) == hits(got)
        assert nearby == []
        filtered = await service.recall("a", "Porto again", where={"role": "user"})
        assert filtered
        assert nearby == []
        service.embedder.close()
        store.close()

    for shared in (False, True):
        nearby.clear()
        asyncio.run(run(shared))


def test_a_delete_by_filter_takes_queued_and_stored_memories_and_nothing_else(
    tmp_path: Path,
) -> None:
    """Exchanges of a conversation still in the write queue go with the stored ones; the
    writer never writes them afterwards; other conversations and namespaces stay."""
    store = MemStore()

    async def run() -> None:
        service = _service(tmp_path, store)
        for ns, conversation, text in [
            ("a", "c1", "stored one"),
            ("a", "c2", "stored two"),
            ("b", "c1", "other namespace"),
        ]:
            await service.remember(
                Exchange(
                    namespace=ns,
                    user=text,
                    assistant="ok",
                    metadata={"conversation_id": conversation},
                )
            )
        service.writer.start()
        await service.writer.stop()  # written
        for conversation in ("c1", "c2"):
            await service.remember(
                Exchange(namespace="a", user=f"queued {conversation}", assistant="fine",
                         metadata={"conversation_id": conversation})
            )  # fmt: skip
        assert service.outbox.depth() == 4
        assert await service.delete_where("a", {"conversation_id": "c1"}) == 4
        assert service.outbox.depth() == 2
        with pytest.raises(ValueError, match="needs a filter"):
            await service.delete_where("a", None)
        service.writer.start()
        await service.writer.stop()
        left = {ns: sorted(m.content for m, _ in rows.values()) for ns, rows in store.rows.items()}
        assert left == {
            "a": ["fine", "ok", "queued c2", "stored two"],
            "b": ["ok", "other namespace"],
        }

    asyncio.run(run())
