from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from memory.process_store import ProcessStore
from memory.records import Memory
from memory.store import Changes, CursorNotFound, NamespaceCount, StoreUnavailable
from tests.fakes import FailingStore, FakeEmbedder, MemStore, broken_store


def mem(mid: str, text: str, ns: str = "a") -> Memory:
    return Memory(id=mid, namespace=ns, content=text, created_at=float(len(mid)))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ProcessStore]:
    opened = ProcessStore(MemStore, lock_path=tmp_path / "store.lock")
    yield opened
    opened.close()


def child_pid(store: ProcessStore) -> int:
    child = store._child
    assert child is not None
    return child.process.pid


def test_every_call_crosses_to_the_child_and_back(store: ProcessStore) -> None:
    embedder = FakeEmbedder()
    memories = [mem("1", "my cat is called Tom"), mem("22", "I live in Lisbon")]
    store.add(memories, embedder.embed([m.content for m in memories]))
    assert child_pid(store) != os.getpid()
    hits = store.search("a", embedder.embed(["what is my cat called"])[0], 1)
    assert [h.memory for h in hits] == [memories[0]]
    assert store.search_text("a", "cat", 5) == []
    assert store.count("a") == 2
    assert store.namespaces(limit=10) == ([NamespaceCount("a", 2)], False)
    page, more = store.list("a", limit=1)
    assert page == [memories[1]]
    assert more is True
    assert store.get("a", "22") == memories[1]
    assert store.get_many("a", ["1", "nope"]) == [memories[0]]
    assert store.existing("a", ["1", "nope"]) == {"1"}
    assert store.ids("a") == {"1", "22"}
    changes = store.changes("a", None)
    assert sorted(m.id for m in changes.memories) == ["1", "22"]
    assert store.changes("a", time.time() + 60).memories == []
    assert store.changes("nothing", None) == Changes(None, [])
    with pytest.raises(CursorNotFound):  # an exception of ours crosses too
        store.list("a", limit=1, after="unknown")
    assert store.delete("a", "1") is True
    assert store.delete("a", "1") is False
    assert store.delete_namespace("a") == 1
    assert set(store.erasures(["a", "b"])) == {"a"}
    store.ping()


def test_concurrent_calls_get_their_own_answers(store: ProcessStore) -> None:
    embedder = FakeEmbedder()
    texts = [f"memory number {i}" for i in range(40)]
    memories = [Memory(id=str(i), namespace=f"ns{i % 4}", content=t) for i, t in enumerate(texts)]
    store.add(memories, embedder.embed(texts))
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(20):
                assert store.count(f"ns{i % 4}") == 10
                got = store.get(f"ns{i % 4}", str(i))
                assert got is not None
                assert got.content == texts[i]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_errors_come_back_to_the_caller(tmp_path: Path) -> None:
    store = ProcessStore(FailingStore, lock_path=tmp_path / "lock")
    try:
        with pytest.raises(StoreUnavailable, match="fake store is down"):
            store.ping()
        # an exception that cannot be pickled arrives as StoreUnavailable naming it
        with pytest.raises(StoreUnavailable, match="Unpicklable: no pickle"):
            store.namespaces(limit=10)
        with pytest.raises(StoreUnavailable, match="get_many"):  # not a hang
            store.get_many("a", ["x"])
        assert store.count("a") == 0  # and the child still serves
    finally:
        store.close()


def test_a_store_that_cannot_open_fails_the_start(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="cannot open the fake store"):
        ProcessStore(broken_store, lock_path=tmp_path / "lock")


def test_a_dead_child_fails_its_calls_and_is_replaced(store: ProcessStore) -> None:
    embedder = FakeEmbedder()
    store.add([mem("1", "x")], embedder.embed(["x"]))
    first = child_pid(store)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while store._child is not None and store._child.alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.count("a") == 0  # a new child (the fake's memory died with the old one)
    assert child_pid(store) != first


def test_the_child_ignores_the_gateways_signals_and_ends_with_its_pipe(
    store: ProcessStore,
) -> None:
    pid = child_pid(store)
    os.kill(pid, signal.SIGTERM)  # e.g. a Ctrl-C for the whole terminal: not for the child
    os.kill(pid, signal.SIGINT)
    child = store._child
    assert child is not None
    with pytest.raises(subprocess.TimeoutExpired):  # it does not die of them (waits 0.5 s)
        child.process.wait(0.5)
    assert store.count("a") == 0
    assert child_pid(store) == pid
    store.close()
    assert child.process.poll() is not None
    with pytest.raises(StoreUnavailable):
        store.count("a")


def test_a_second_child_waits_for_the_first_to_let_go(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    first = ProcessStore(MemStore, lock_path=lock)
    opened: list[float] = []

    def open_second() -> None:
        second = ProcessStore(MemStore, lock_path=lock)
        opened.append(time.monotonic())
        second.close()

    thread = threading.Thread(target=open_second)
    thread.start()
    thread.join(1.0)
    assert thread.is_alive()  # still waiting for the lock after a second
    assert opened == []
    closed_at = time.monotonic()
    first.close()
    thread.join(30)
    assert opened
    assert opened[0] >= closed_at


def test_vectors_cross_unchanged(store: ProcessStore) -> None:
    vectors = np.eye(3, 8, dtype=np.float32)
    store.add([mem(str(i) * (i + 1), f"t{i}") for i in range(3)], vectors)
    hits = store.search("a", vectors[2], 1)
    assert hits[0].memory.content == "t2"
    assert hits[0].similarity == pytest.approx(1.0)
