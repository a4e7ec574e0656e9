from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from memory.outbox import Outbox
from memory.records import Exchange, Memory
from memory.service import MemoryService
from tests.fakes import FakeEmbedder, MemStore


def mem(mid: str, ns: str = "a", text: str = "hello") -> Memory:
    return Memory(id=mid, namespace=ns, content=text)


def test_outbox_is_a_durable_fifo(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "q.sqlite3")
    box.put([mem("1"), mem("2", "b")])
    box.put([mem("3")])
    box.put([mem("1")])  # same id again: ignored
    assert box.depth() == 3
    assert [m.id for m in box.pending("a")] == ["1", "3"]
    taken = box.take(2)
    assert [item.memory.id for item in taken] == ["1", "2"]
    assert all(item.enqueued_at > 0 for item in taken)
    box.close()
    reopened = Outbox(tmp_path / "q.sqlite3")  # survives a restart
    assert reopened.depth() == 3
    assert [m.id for m in reopened.pending("a")] == ["1", "3"]
    reopened.ack([item.seq for item in reopened.take(2)])
    assert [item.memory.id for item in reopened.take(10)] == ["3"]
    assert [m.id for m in reopened.pending("a")] == ["3"]
    assert reopened.pending("b") == []
    assert reopened.remove("a", "3") is True
    assert reopened.remove("a", "3") is False
    assert reopened.pending("a") == []
    reopened.put([mem("4", "b"), mem("5", "b")])
    assert reopened.purge_namespace("b") == 2
    assert reopened.pending("b") == []
    assert reopened.depth() == 0


def test_recall_sees_the_newest_queued_memories(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "q.sqlite3", recent=3)
    box.put([mem(str(i)) for i in range(5)])
    assert [m.id for m in box.pending("a")] == ["2", "3", "4"]
    assert box.depth() == 5  # all still queued for the writer
    box.close()
    assert [m.id for m in Outbox(tmp_path / "q.sqlite3", recent=3).pending("a")] == ["2", "3", "4"]


def _service(tmp_path: Path, store: MemStore) -> MemoryService:
    return MemoryService(store, FakeEmbedder(), Outbox(tmp_path / "q.sqlite3"))


def test_writer_drains_and_recall_sees_queued_items(tmp_path: Path) -> None:
    store = MemStore()

    async def run() -> None:
        service = _service(tmp_path, store)
        ex = Exchange(
            namespace="a", user="my cat is called Tom", assistant="Nice cat", created_at=1.0
        )
        await service.remember(ex)
        # before the writer ran: read-your-writes through the queue
        hits = await service.recall("a", "what is my cat called")
        assert hits[0].memory.content == "my cat is called Tom"
        assert store.count("a") == 0
        service.writer.start()
        for _ in range(200):
            if store.count("a") == 2 and service.outbox.depth() == 0:
                break
            await asyncio.sleep(0.01)
        assert sorted(store.contents("a")) == ["Nice cat", "my cat is called Tom"]
        hits = await service.recall("a", "what is my cat called")
        assert [h.memory.content for h in hits].count("my cat is called Tom") == 1
        await service.writer.stop()

    asyncio.run(run())


def test_writer_keeps_items_while_store_is_down_then_lands_them_once(tmp_path: Path) -> None:
    store = MemStore()
    store.down = True

    async def run() -> None:
        service = _service(tmp_path, store)
        service.writer.start()
        await service.remember(Exchange(namespace="a", user="u1", assistant="a1", created_at=1.0))
        await asyncio.sleep(0.3)
        assert service.outbox.depth() == 2
        assert service.writer.last_error
        store.down = False
        for _ in range(300):
            if service.outbox.depth() == 0:
                break
            await asyncio.sleep(0.02)
        assert service.outbox.depth() == 0
        assert sorted(store.contents("a")) == ["a1", "u1"]
        await service.writer.stop()

    asyncio.run(run())


def test_queued_items_replay_after_restart(tmp_path: Path) -> None:
    store = MemStore()

    async def first() -> None:
        service = _service(tmp_path, store)
        await service.remember(Exchange(namespace="a", user="u", assistant="r", created_at=1.0))
        service.outbox.close()  # "crash" before the writer ran

    async def second() -> None:
        service = _service(tmp_path, store)
        service.writer.start()
        await service.writer.stop(timeout=10)

    asyncio.run(first())
    assert store.count("a") == 0
    asyncio.run(second())
    assert sorted(store.contents("a")) == ["r", "u"]


def test_erasing_a_namespace_removes_queued_items_too(tmp_path: Path) -> None:
    store = MemStore()

    async def run() -> None:
        service = _service(tmp_path, store)
        await service.add([mem("x", "a", "stored")])
        await service.remember(Exchange(namespace="a", user="queued", assistant="", created_at=1.0))
        assert await service.delete_namespace("a") == 2
        service.writer.start()
        await service.writer.stop()
        assert store.count("a") == 0
        assert await service.recall("a", "queued stored") == []

    asyncio.run(run())


@pytest.mark.parametrize("fail", [True, False])
def test_batching_embedder_merges_concurrent_callers(fail: bool) -> None:
    from memory.embedder import BatchingEmbedder

    inner = FakeEmbedder()

    class Flaky:
        dimension = inner.dimension

        def embed(self, texts: list[str]):  # type: ignore[no-untyped-def]
            if fail:
                raise RuntimeError("boom")
            return inner.embed(texts)

    async def run() -> None:
        batching = BatchingEmbedder(Flaky())
        results = await asyncio.gather(
            *(batching.embed([f"text {i}"]) for i in range(20)), return_exceptions=True
        )
        if fail:
            assert all(isinstance(r, RuntimeError) for r in results)
        else:
            assert all(r.shape == (1, inner.dimension) for r in results)  # type: ignore[union-attr]
            assert len(inner.calls) < 20  # merged into fewer model calls

    asyncio.run(run())


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


def test_background_embeddings_never_hold_up_a_query() -> None:
    from memory.embedder import BatchingEmbedder

    inner = FakeEmbedder()
    release = threading.Event()
    threads: dict[str, str] = {}

    class Slow:
        dimension = inner.dimension

        def embed(self, texts: list[str]):  # type: ignore[no-untyped-def]
            threads[texts[0]] = threading.current_thread().name
            if texts[0].startswith("stored"):
                release.wait(10)  # a long batch of the writer's
            return inner.embed(texts)

    async def run() -> None:
        batching = BatchingEmbedder(Slow())
        stored = asyncio.ensure_future(batching.embed(["stored text"], background=True))
        await asyncio.sleep(0.05)
        query = await asyncio.wait_for(batching.embed(["query"]), 5)  # not queued behind it
        assert query.shape == (1, inner.dimension)
        assert not stored.done()
        release.set()
        assert (await stored).shape == (1, inner.dimension)
        batching.close()

    asyncio.run(run())
    assert threads["stored text"].startswith("memgate-embed-bg")
    assert not threads["query"].startswith("memgate-embed-bg")


def test_a_background_backlog_is_embedded_at_normal_priority() -> None:
    from memory.embedder import BatchingEmbedder

    inner = FakeEmbedder()
    threads: list[str] = []

    class Recording:
        dimension = inner.dimension

        def embed(self, texts: list[str]):  # type: ignore[no-untyped-def]
            threads.append(threading.current_thread().name)
            return inner.embed(texts)

    async def run() -> None:
        batching = BatchingEmbedder(Recording(), busy_batch=8)
        await batching.embed(["one"], background=True)
        await batching.embed([f"text {i}" for i in range(8)], background=True)
        batching.close()

    asyncio.run(run())
    assert threads[0].startswith("memgate-embed-bg")
    assert threads[1].startswith("memgate-embed-busy")


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


def test_a_bulk_embedding_uses_both_lanes_and_keeps_the_order() -> None:
    from memory.embedder import BatchingEmbedder

    inner = FakeEmbedder()
    threads: set[str] = set()

    class Recording:
        dimension = inner.dimension

        def embed(self, texts: list[str]):  # type: ignore[no-untyped-def]
            threads.add(threading.current_thread().name.split("_")[0])
            return inner.embed(texts)

    texts = [f"text number {i}" for i in range(40)]

    async def run() -> None:
        batching = BatchingEmbedder(Recording(), busy_batch=8)
        vectors = await batching.embed_bulk(texts)
        assert np.allclose(vectors, inner.embed(texts))
        batching.close()

    asyncio.run(run())
    assert any(t.startswith("memgate-embed-busy") for t in threads)
    assert any(not t.startswith("memgate-embed") for t in threads)
