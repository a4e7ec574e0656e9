from __future__ import annotations

import asyncio
from pathlib import Path

from memory.outbox import Outbox
from memory.records import Exchange, Memory
from memory.service import MemoryService
from tests.fakes import FakeEmbedder, MemStore


def mem(mid: str, ns: str = "a", text: str = "hello") -> Memory:
    return Memory(id=mid, namespace=ns, content=text)


def _service(tmp_path: Path, store: MemStore) -> MemoryService:
    return MemoryService(store, FakeEmbedder(), Outbox(tmp_path / "q.sqlite3"))


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
        for _ in range(500):  # until the writer has tried, and failed (bounded: 10 s)
            if service.writer.last_error:
                break
            await asyncio.sleep(0.02)
        assert service.writer.last_error
        assert service.outbox.depth() == 2
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


def test_acking_a_batch_runs_two_statements_and_forgets_it(tmp_path: Path) -> None:
    """Each step gives the GIL up with the queue's lock held (a request's commit waits for
    that lock): acking 100 memories is two one-step statements, not a step a row."""
    box = Outbox(tmp_path / "q.sqlite3")
    box.put([Memory(id=f"m{i}", namespace=f"ns{i % 3}", content=f"text {i}") for i in range(120)])
    taken = box.take(100)
    ran: list[str] = []
    box._db.set_trace_callback(ran.append)
    try:
        box.ack([item.seq for item in taken])
    finally:
        box._db.set_trace_callback(None)
    assert len(ran) == 2, ran
    left = [item.memory.id for item in box.take(1000)]
    assert left == [f"m{i}" for i in range(100, 120)]
    assert {m.id for ns in ("ns0", "ns1", "ns2") for m in box.pending(ns)} == set(left)


def test_a_batch_never_splits_an_exchange(tmp_path: Path) -> None:
    """A batch ends where a put (an exchange's user turn and reply) ends: a listing never
    shows a turn without its reply because the two went into different batches."""
    box = Outbox(tmp_path / "q.sqlite3")
    box.put([mem("1")])
    box.put([mem("2"), mem("3")])  # one exchange
    box.put([mem("4"), mem("5")])
    assert [i.memory.id for i in box.take(2)] == ["1", "2", "3"]
    assert [i.memory.id for i in box.take(1)] == ["1"]
    assert [i.memory.id for i in box.take(4)] == ["1", "2", "3", "4", "5"]
    box.ack([i.seq for i in box.take(5)])
    box.put([mem(f"x{i}") for i in range(6)])
    assert len(box.take(2)) == 4  # at most twice the batch
