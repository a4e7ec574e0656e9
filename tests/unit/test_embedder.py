"""The embedding lanes and the service's wait for a vector when things go wrong: a model
that raises, or answers the wrong number of rows, an executor shut down, a caller cancelled,
a model that hangs. No waiter may be left waiting for ever; every wait here is bounded."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest

from memory.embedder import BatchingEmbedder
from memory.errors import EmbeddingTimeout
from memory.outbox import Outbox
from memory.records import Vectors
from memory.service import MemoryService
from tests.fakes import FakeEmbedder, MemStore

BOUND = 5.0  # seconds: far beyond what any of these takes when it works


class Faulty(FakeEmbedder):
    """Raises, or answers one row short, on the calls it is told to; else a FakeEmbedder."""

    def __init__(self) -> None:
        super().__init__()
        self.plan: list[str] = []

    def embed(self, texts: Sequence[str]) -> Vectors:
        what = self.plan.pop(0) if self.plan else "ok"
        if what == "raise":
            raise ValueError("the model broke")
        vectors = super().embed(texts)
        return vectors[:-1] if what == "short" else vectors


def test_a_model_that_raises_fails_its_waiters_and_the_lane_goes_on() -> None:
    async def run() -> None:
        model = Faulty()
        lanes = BatchingEmbedder(model)
        for background in (False, True):
            model.plan = ["raise"]
            with pytest.raises(ValueError, match="the model broke"):
                await asyncio.wait_for(lanes.embed(["a", "b"], background=background), BOUND)
            model.plan = ["short"]
            with pytest.raises(RuntimeError, match="1 vectors for 2 texts"):
                await asyncio.wait_for(lanes.embed(["a", "b"], background=background), BOUND)
            got = await asyncio.wait_for(lanes.embed(["a"], background=background), BOUND)
            assert got.shape == (1, model.dimension)
        lanes.close()

    asyncio.run(run())


def test_a_shut_down_executor_fails_at_once_and_the_other_lane_still_works() -> None:
    async def run() -> None:
        lanes = BatchingEmbedder(FakeEmbedder())
        lanes.close()  # the background lane's threads are gone
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(lanes.embed(["late"], background=True), BOUND)
        with pytest.raises(RuntimeError):  # and again: the lane gave its turn back
            await asyncio.wait_for(lanes.embed(["later"], background=True), BOUND)
        got = await asyncio.wait_for(lanes.embed(["query"]), BOUND)
        assert got.shape[0] == 1

    asyncio.run(run())


def test_a_cancelled_caller_leaves_the_shared_call_to_the_others(tmp_path: Path) -> None:
    gate = threading.Event()

    class Slow(FakeEmbedder):
        def embed(self, texts: Sequence[str]) -> Vectors:
            gate.wait(BOUND)
            return super().embed(texts)

    async def run() -> None:
        service = MemoryService(MemStore(), Slow(), Outbox(tmp_path / "q.sqlite3"))
        first = asyncio.ensure_future(service._embed_texts(["shared text"]))
        second = asyncio.ensure_future(service._embed_texts(["shared text"]))
        await asyncio.sleep(0)
        first.cancel()  # a client that went away
        gate.set()
        vectors = await asyncio.wait_for(second, BOUND)
        assert vectors.shape == (1, 256)
        assert first.cancelled()
        assert service._inflight == {}  # nothing left claiming to be in flight
        np.testing.assert_allclose(
            await asyncio.wait_for(service._embed_texts(["shared text"]), BOUND), vectors
        )  # and it was cached
        service.embedder.close()

    asyncio.run(run())


def test_a_hung_model_is_a_503_on_the_memory_api_and_no_memories_in_a_chat(
    tmp_path: Path,
) -> None:
    from tests.conftest import AppHarness, completion
    from tests.unit.test_chat import assert_openai_error

    harness = AppHarness(tmp_path)
    harness.upstream.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion("fine"))
    )
    with harness.client() as client:
        service = harness.app.state["gateway"].service
        service.embed_timeout = 0.05
        gate = threading.Event()
        real = harness.embedder.embed

        def hung(texts: Sequence[str]) -> Vectors:
            gate.wait(BOUND)
            return real(texts)

        harness.embedder.embed = hung  # type: ignore[method-assign]
        try:
            r = client.post("/v1/memory/search?namespace=h", json={"query": "anything"})
            assert assert_openai_error(r, 503)["code"] == "embedder_unavailable"
            r = client.post(
                "/v1/memory/chat/completions?namespace=h",
                json={"model": "m", "messages": [{"role": "user", "content": "hi there"}]},
            )
            assert r.status_code == 200
            assert r.headers["x-memory-error"].startswith("recall failed")
        finally:
            gate.set()


def test_a_recall_waits_for_its_vector_only_so_long(tmp_path: Path) -> None:
    gate = threading.Event()

    class Hung(FakeEmbedder):
        def embed(self, texts: Sequence[str]) -> Vectors:
            gate.wait(BOUND)
            return super().embed(texts)

    async def run() -> None:
        service = MemoryService(
            MemStore(), Hung(), Outbox(tmp_path / "q.sqlite3"), embed_timeout=0.05
        )
        with pytest.raises(EmbeddingTimeout):
            await asyncio.wait_for(service.recall("a", "where do I live?"), BOUND)
        gate.set()  # the model comes back: recall works again
        assert await asyncio.wait_for(service.recall("a", "where do I live?"), BOUND) == []
        service.embedder.close()

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


def test_a_lone_requests_follow_up_runs_in_the_models_thread() -> None:
    """A follow-up runs right after its model call, in the same thread, when its request is
    the batch alone; else (a batch of several, a failed call) it does not run and its future
    says None; an error it raises is its own, the rows stand."""
    model = Faulty()
    ran: list[tuple[str, int]] = []

    def follow(rows: Vectors) -> str:
        ran.append((threading.current_thread().name, len(rows)))
        if len(rows) == 3:
            raise LookupError("the follow-up broke")
        return "followed"

    async def run() -> None:
        loop = asyncio.get_running_loop()
        lanes = BatchingEmbedder(model)
        after = loop.create_future()
        rows = await asyncio.wait_for(lanes.submit(["a", "b"], then=follow, after=after), BOUND)
        assert rows.shape == (2, model.dimension)
        assert await asyncio.wait_for(after, BOUND) == "followed"
        assert ran == [(ran[0][0], 2)]
        assert ran[0][0] != threading.current_thread().name

        after = loop.create_future()  # the follow-up raises
        rows = await asyncio.wait_for(
            lanes.submit(["a", "b", "c"], then=follow, after=after), BOUND
        )
        assert rows.shape == (3, model.dimension)
        with pytest.raises(LookupError, match="the follow-up broke"):
            await asyncio.wait_for(after, BOUND)

        ran.clear()  # a batch of several: none runs
        model.plan = ["ok", "ok"]
        first = lanes.submit(["x"])  # the lane is busy with this one, the next two queue
        afters = [loop.create_future() for _ in range(2)]
        calls = [lanes.submit([f"y{i}"], then=follow, after=a) for i, a in enumerate(afters)]
        await asyncio.wait_for(asyncio.gather(first, *calls), BOUND)
        assert [await asyncio.wait_for(a, BOUND) for a in afters] == [None, None]
        assert model.calls[-1] == ["y0", "y1"]
        assert ran == []

        model.plan = ["raise"]  # a failed call: the rows' waiter gets the error, after None
        after = loop.create_future()
        with pytest.raises(ValueError, match="the model broke"):
            await asyncio.wait_for(lanes.submit(["z"], then=follow, after=after), BOUND)
        assert await asyncio.wait_for(after, BOUND) is None
        assert ran == []
        lanes.close()

    asyncio.run(run())


def test_the_torch_backend_without_its_extra_says_how_to_install_it(tmp_path: Path) -> None:
    """torch, sentence-transformers and the full model are the ``torch`` extra: ``memgate
    serve`` stops with one line saying how to install it, and the embedder raises
    ``MissingExtra`` with the same words; the default backend never imports them."""
    import subprocess
    import sys

    from gateway.config import ConfigError, load_settings
    from gateway.server import check_embedder
    from memory.embedder import TORCH_EXTRA

    torch = load_settings(None, {"MEMGATE_EMBEDDER_BACKEND": "torch"})
    with pytest.raises(ConfigError) as refused:
        check_embedder(torch, find=lambda name: None if name == "torch" else object())
    assert str(refused.value) == TORCH_EXTRA
    assert "pip install -c constraints.txt 'memgate[torch]'" in TORCH_EXTRA
    check_embedder(torch, find=lambda name: object())  # installed: nothing to say
    check_embedder(load_settings(None, {}), find=lambda name: None)  # onnx needs none of it
    # in a process where torch cannot be imported: the embedder's error, and the ONNX one works
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['sentence_transformers'] = None\n"
        "from memory.embedder import MissingExtra, OnnxEmbedder, SentenceTransformerEmbedder\n"
        "try:\n    SentenceTransformerEmbedder()\nexcept MissingExtra as exc:\n    print(exc)\n"
        f"e = OnnxEmbedder(cache_dir={str(tmp_path)!r}); print(e.embed(['hi']).shape)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers')"
        " if sys.modules.get(m) is not None))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [TORCH_EXTRA, "(1, 384)", "[]"]
