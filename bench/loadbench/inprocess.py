"""The phases in this process, once the gateway stopped: the embedding model's throughput and
recall latency in the library at 10k vs 100k memories."""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stats import percentile

from loadbench import ADD_BATCH, TEXTS_PER_EXCHANGE
from loadbench.config import Config
from loadbench.processes import CpuMeter, gateway_env, log
from loadbench.texts import memory_texts, question_texts


def embedder_threads(extra_env: Sequence[str]) -> int:
    """The gateway's ``embedder.threads`` as set by ``--gateway-env`` (0: torch's default)."""
    for item in extra_env:
        key, _, value = item.partition("=")
        if key == "MEMGATE_EMBEDDER_THREADS" and value.strip().isdigit():
            return int(value)
    return 0


def gateway_embedder(extra_env: Sequence[str]) -> tuple[Any, str]:
    """The embedder the gateway builds from its settings (the same environment as the
    gateway's), and a label; ``SentenceTransformerEmbedder`` when that cannot be built here."""
    from memory.embedder import SentenceTransformerEmbedder

    try:
        from gateway.app import open_embedder
        from gateway.config import load_settings

        settings = load_settings(None, gateway_env(extra_env))
        embedder = open_embedder(settings)
        conf = settings.embedder
        threads = f"{conf.threads} thread{'s' * (conf.threads != 1)}" if conf.threads else ""
        label = f"{getattr(conf, 'backend', 'torch')}, {threads or 'default threads'}"
    except (ImportError, AttributeError, TypeError) as exc:
        log(f"the gateway's embedder cannot be built here ({exc}); using the torch one")
        embedder = SentenceTransformerEmbedder(threads=embedder_threads(extra_env))
        label = "torch"
    return embedder, label


def embedder_phase(cfg: Config, extra_env: Sequence[str]) -> dict[str, Any]:
    """Texts/s on batches of 64 short texts of the embedder the gateway uses, interleaved
    batch by batch with a comparison: the torch ``SentenceTransformerEmbedder`` with torch's
    default threads (or, when the gateway uses that one, with 1 thread)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    from memory.embedder import SentenceTransformerEmbedder

    default_threads = torch.get_num_threads()
    t0 = time.perf_counter()
    configured, label = gateway_embedder(extra_env)
    load_s = time.perf_counter() - t0
    torch_threads = torch.get_num_threads()  # as the gateway's settings left it
    torch.set_num_threads(default_threads)
    # (label, embedder, torch threads to set before each call or None)
    candidates: list[tuple[str, Any, int | None]]
    if isinstance(configured, SentenceTransformerEmbedder):
        alt = 1 if torch_threads != 1 else default_threads
        candidates = [(f"torch, {torch_threads} thread(s)", configured, torch_threads)]
        if alt != torch_threads:
            candidates.append((f"torch, {alt} thread(s)", configured, alt))
    else:
        candidates = [
            (label, configured, None),
            (f"torch, {default_threads} thread(s)", SentenceTransformerEmbedder(), default_threads),
        ]
    rng = random.Random(cfg.seed + 1)
    count = cfg.embed_batches + 2
    pool = memory_texts(64 * count, rng) + question_texts(64 * count, rng)
    rng.shuffle(pool)
    batches = [pool[i * 64 : (i + 1) * 64] for i in range(count)]
    singles_texts = question_texts(cfg.embed_singles, rng)
    times: list[list[float]] = [[] for _ in candidates]
    singles: list[list[float]] = [[] for _ in candidates]

    def call(j: int, texts: list[str]) -> float:
        _, embedder, threads = candidates[j]
        if threads is not None:
            torch.set_num_threads(threads)
        s0 = time.perf_counter()
        embedder.embed(texts)
        return time.perf_counter() - s0

    meter = CpuMeter({"bench": None})
    before = meter.snapshot()
    w0 = time.perf_counter()
    order = list(range(len(candidates)))
    try:
        for j in order:  # warm-up
            call(j, batches[0])
            call(j, batches[1])
        for i, batch in enumerate(batches[2:]):
            for j in order[i % len(order) :] + order[: i % len(order)]:
                times[j].append(call(j, batch))
        for i, text in enumerate(singles_texts):
            for j in order[i % len(order) :] + order[: i % len(order)]:
                singles[j].append(call(j, [text]) * 1000.0)
    finally:
        torch.set_num_threads(default_threads)
    other = CpuMeter.delta(before, meter.snapshot()).get("other", math.nan)
    other /= time.perf_counter() - w0
    two_calls = two_calls_rate(configured, batches[2:])
    rows: list[dict[str, Any]] = [
        {
            "embedder": name + (" (the gateway's)" if j == 0 else ""),
            "texts_per_second": 64 * len(times[j]) / sum(times[j]),
            "batch_ms_p50": percentile([t * 1000 for t in times[j]], 50),
            "single_text_ms_p50": percentile(singles[j], 50),
            "single_text_ms_p99": percentile(singles[j], 99),
        }
        for j, (name, _, _) in enumerate(candidates)
    ]
    texts_per_s = rows[0]["texts_per_second"]
    log(f"embedder ({label}): {texts_per_s:.0f} texts/s in batches of 64")
    return {
        "gateway_embedder": label,
        "torch_default_threads": default_threads,
        "load_seconds": load_s,
        "batch": 64,
        "batches": cfg.embed_batches,
        "rows": rows,
        "texts_per_second": texts_per_s,
        "limit_exchanges_per_second": texts_per_s / TEXTS_PER_EXCHANGE,
        # The gateway runs up to two model calls at once (queries, and texts being stored):
        # what two calls at once get through on this machine, for comparison.
        "two_calls_texts_per_second": two_calls,
        "two_calls_limit_exchanges_per_second": two_calls / TEXTS_PER_EXCHANGE,
        "other_cpu_pct": 100.0 * other,
    }


def two_calls_rate(embedder: Any, batches: Sequence[list[str]]) -> float:
    """Texts/s of ``embedder`` with two threads calling it at once, each on its own batches."""
    work = list(batches) * 2
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not work:
                    return
                batch = work.pop()
            embedder.embed(batch)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 64 * 2 * len(batches) / (time.perf_counter() - start)


def recall_phase(cfg: Config, root: Path) -> dict[str, Any]:
    """Recall latency in the library at 10k vs 100k total memories.

    As specified: one store, a namespace of ``recall_per_ns`` memories, ``recall_queries``
    searches (k=30); then ``recall_other_ns`` more namespaces of the same size, and the same
    searches again. Since the machine is noisy and time passes between the two measurements,
    a control is measured too: a second store holding only the same namespace (same vectors),
    searched alternately with the grown store, query by query."""
    import numpy as np

    from memory.chroma import ChromaStore
    from memory.records import Memory

    dim = 384
    rng = np.random.default_rng(cfg.seed)
    text_rng = random.Random(cfg.seed + 2)

    def unit(n: int) -> Any:
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors

    grown = ChromaStore(path=root / "recall-grown")
    control = ChromaStore(path=root / "recall-control")
    insert_seconds = 0.0
    inserted = 0

    def fill_namespace(namespace: str, stores: Sequence[ChromaStore]) -> None:
        nonlocal insert_seconds, inserted
        texts = memory_texts(cfg.recall_per_ns, text_rng)
        for offset in range(0, len(texts), ADD_BATCH):
            part = texts[offset : offset + ADD_BATCH]
            memories = [
                Memory(
                    id=f"{namespace}-{offset + i}",
                    namespace=namespace,
                    content=text,
                    role="user",
                    created_at=1_700_000_000.0 + offset + i,
                )
                for i, text in enumerate(part)
            ]
            vectors = unit(len(part))
            for store in stores:
                t0 = time.perf_counter()
                store.add(memories, vectors)
                if store is grown:
                    insert_seconds += time.perf_counter() - t0
                    inserted += len(part)

    queries = unit(cfg.recall_queries)

    def timed(store: ChromaStore, vector: Any) -> float:
        t0 = time.perf_counter()
        hits = store.search("recall-0", vector, 30)
        elapsed = (time.perf_counter() - t0) * 1000.0
        assert len(hits) == 30
        return elapsed

    def measure(stores: Sequence[ChromaStore]) -> list[list[float]]:
        """The searches on each store, alternating store order query by query."""
        for store in stores:
            for vector in queries[:20]:  # warm-up: the index is loaded on first use
                store.search("recall-0", vector, 30)
        out: list[list[float]] = [[] for _ in stores]
        for i, vector in enumerate(queries):
            order = list(range(len(stores)))
            if i % 2:
                order.reverse()
            for j in order:
                out[j].append(timed(stores[j], vector))
        return out

    meter = CpuMeter({"bench": None})
    before = meter.snapshot()
    w0 = time.perf_counter()
    try:
        fill_namespace("recall-0", [grown, control])
        (small,) = measure([grown])
        small_total = inserted
        log(f"recall: p50 {percentile(small, 50):.2f} ms at {small_total} memories; growing")
        for i in range(1, cfg.recall_other_ns + 1):
            fill_namespace(f"recall-{i}", [grown])
        large_total = inserted
        (large,) = measure([grown])
        control_ms, grown_ms = measure([control, grown])
    finally:
        grown.close()
        control.close()
    other = CpuMeter.delta(before, meter.snapshot()).get("other", math.nan)
    ratio = percentile(large, 50) / percentile(small, 50)
    ratio_control = percentile(grown_ms, 50) / percentile(control_ms, 50)
    log(
        f"recall: p50 {percentile(large, 50):.2f} ms at {large_total} memories (x{ratio:.2f}); "
        f"interleaved with a {small_total} store: x{ratio_control:.2f}"
    )
    return {
        "dim": dim,
        "k": 30,
        "searches": len(queries),
        "namespace_size": cfg.recall_per_ns,
        "small_total": small_total,
        "large_total": large_total,
        "small_p50_ms": percentile(small, 50),
        "small_p99_ms": percentile(small, 99),
        "large_p50_ms": percentile(large, 50),
        "large_p99_ms": percentile(large, 99),
        "ratio_p50_sequential": ratio,
        "control_p50_ms": percentile(control_ms, 50),
        "control_p99_ms": percentile(control_ms, 99),
        "grown_interleaved_p50_ms": percentile(grown_ms, 50),
        "grown_interleaved_p99_ms": percentile(grown_ms, 99),
        "ratio_p50": ratio_control,
        "insert_memories_per_second": inserted / insert_seconds if insert_seconds else math.nan,
        "other_cpu_pct": 100.0 * other / (time.perf_counter() - w0),
    }
