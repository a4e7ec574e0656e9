"""The HTTP phases against a running gateway: preload a namespace, then direct vs pass-through
vs memory chat in interleaved rounds (c=1, c=32, streaming), then the write path."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from stats import percentile

from loadbench import ADD_BATCH, NAMESPACE
from loadbench.config import Config
from loadbench.processes import Child, CpuMeter, log
from loadbench.runner import Phase, Target, queue_depth, run_load, slope, wait_drained
from loadbench.texts import chat_bodies, memory_texts, question_texts


@dataclass
class HttpResults:
    preload: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, Phase] = field(default_factory=dict)
    streams: dict[str, Phase] = field(default_factory=dict)
    write: dict[str, Any] = field(default_factory=dict)
    namespace_size: int = 0
    drain_between_rounds_s: float = 0.0


def _client(base_url: str, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(120.0, connect=10.0),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        trust_env=False,
    )


async def preload(client: httpx.AsyncClient, texts: Sequence[str]) -> dict[str, Any]:
    """Add the memories in batches of 1000, one call at a time; the load rate."""
    calls: list[float] = []
    start = time.perf_counter()
    for offset in range(0, len(texts), ADD_BATCH):
        batch = [{"content": t, "role": "user"} for t in texts[offset : offset + ADD_BATCH]]
        t0 = time.perf_counter()
        response = await client.post(
            "/v1/memory/memories", params={"namespace": NAMESPACE}, json={"memories": batch}
        )
        if response.status_code != 200:
            raise RuntimeError(f"preload failed: HTTP {response.status_code}: {response.text}")
        calls.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    log(f"preloaded {len(texts)} memories in {wall:.1f} s ({len(texts) / wall:.0f}/s)")
    return {
        "memories": len(texts),
        "calls": len(calls),
        "seconds": wall,
        "memories_per_second": len(texts) / wall,
        "call_seconds_p50": percentile(calls, 50),
    }


async def http_phases(
    cfg: Config, upstream_url: str, gateway_url: str, meter: CpuMeter, children: list[Child]
) -> HttpResults:
    rng = random.Random(cfg.seed)
    out = HttpResults()
    conns = cfg.high_concurrency * 2
    questions = question_texts(4000, rng)
    plain = chat_bodies(questions, stream=False)
    streamed = chat_bodies(questions, stream=True)
    direct_c = _client(upstream_url, conns)
    gateway_c = _client(gateway_url, conns)
    monitor = _client(gateway_url, 2)
    mem_params = {"namespace": NAMESPACE}
    targets = {
        "direct": Target("direct", direct_c, "/v1/chat/completions", {}, plain, False),
        "passthrough": Target("passthrough", gateway_c, "/v1/chat/completions", {}, plain, False),
        "memory": Target(
            "memory", gateway_c, "/v1/memory/chat/completions", mem_params, plain, False
        ),
    }
    stream_targets = {
        "direct": Target("direct", direct_c, "/v1/chat/completions", {}, streamed, True),
        "passthrough": Target("passthrough", gateway_c, "/v1/chat/completions", {}, streamed, True),
        "memory": Target(
            "memory", gateway_c, "/v1/memory/chat/completions", mem_params, streamed, True
        ),
    }
    exchanges = 0
    counter = 0

    def alive() -> None:
        for child in children:
            child.check_alive()

    async def chunk(target: Target, phase: Phase | None, concurrency: int, count: int) -> None:
        nonlocal exchanges, counter
        alive()
        sink = phase or Phase(target.name, concurrency)
        before = meter.snapshot()
        ok_before = sink.ok
        await run_load(
            target,
            sink,
            concurrency=concurrency,
            count=count,
            max_seconds=cfg.chunk_max_s,
            first=counter,
        )
        counter += count
        if phase is not None:
            for name, sec in CpuMeter.delta(before, meter.snapshot()).items():
                phase.cpu[name] = phase.cpu.get(name, 0.0) + sec
        if target.url.startswith("/v1/memory/"):
            exchanges += sink.ok - ok_before
            # The writer's backlog must not land on the next path's round.
            waited, depth = await wait_drained(monitor, cfg.drain_limit_s)
            out.drain_between_rounds_s += waited
            if depth:
                log(f"warning: write queue still {depth} deep after {waited:.0f} s")
        if phase is None and sink.errors:
            raise RuntimeError(f"warm-up of {target.name} failed: {sink.first_error}")

    try:
        out.preload = await preload(gateway_c, memory_texts(cfg.preload, rng))
        probe = await gateway_c.post(
            "/v1/memory/search", params=mem_params, json={"query": questions[0], "k": 30}
        )
        out.preload["probe_search_hits"] = len(probe.json().get("data", []))

        log("warming up")
        for target in targets.values():
            await chunk(target, None, 1, cfg.warmup_c1)
            await chunk(target, None, cfg.high_concurrency, cfg.warmup_c32)
        for target in stream_targets.values():
            await chunk(target, None, 1, cfg.warmup_c1)

        order = list(targets)
        for concurrency, total in ((1, cfg.count_c1), (cfg.high_concurrency, cfg.count_c32)):
            per_round = math.ceil(total / cfg.rounds)
            for name in order:
                out.phases[f"{name}@{concurrency}"] = Phase(name, concurrency)
            for r in range(cfg.rounds):
                rotated = order[r % len(order) :] + order[: r % len(order)]
                log(f"c={concurrency} round {r + 1}/{cfg.rounds}: {', '.join(rotated)}")
                for name in rotated:
                    phase = out.phases[f"{name}@{concurrency}"]
                    await chunk(targets[name], phase, concurrency, per_round)

        per_round = math.ceil(cfg.stream_count / cfg.rounds)
        for name in order:
            out.streams[name] = Phase(name, 1)
        for r in range(cfg.rounds):
            rotated = order[r % len(order) :] + order[: r % len(order)]
            log(f"streaming round {r + 1}/{cfg.rounds}: {', '.join(rotated)}")
            for name in rotated:
                await chunk(stream_targets[name], out.streams[name], 1, per_round)

        log(f"write path: memory chat at c={cfg.high_concurrency} for {cfg.write_seconds:.0f} s")
        out.write = await write_run(cfg, targets["memory"], monitor, meter)
        exchanges += int(out.write["exchanges"])
        out.namespace_size = cfg.preload + 2 * exchanges
    finally:
        for client in (direct_c, gateway_c, monitor):
            await client.aclose()
    return out


async def write_run(
    cfg: Config, target: Target, monitor: httpx.AsyncClient, meter: CpuMeter
) -> dict[str, Any]:
    """Memory chat at high concurrency for ``write_seconds`` while the write queue is sampled
    every 0.5 s; then the drain once requests stop."""
    phase = Phase("memory-write-run", cfg.high_concurrency)
    samples: list[tuple[float, int, float]] = []  # (t, depth, readyz ms)
    stop = asyncio.Event()
    t0 = time.perf_counter()

    async def sample() -> None:
        next_at = time.perf_counter()
        while not stop.is_set():
            s0 = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                depth = await queue_depth(monitor)
                samples.append((s0 - t0, depth, (time.perf_counter() - s0) * 1000.0))
            next_at += 0.5
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.perf_counter()))

    depth_start = await queue_depth(monitor)
    before = meter.snapshot()
    sampler = asyncio.create_task(sample())
    try:
        await run_load(
            target,
            phase,
            concurrency=cfg.high_concurrency,
            count=1_000_000,
            max_seconds=cfg.write_seconds,
            first=7_000_000,
        )
    finally:
        stop.set()
        await sampler
    load_wall = phase.wall
    phase.cpu = CpuMeter.delta(before, meter.snapshot())
    depth_stop = await queue_depth(monitor)
    drain_t0 = time.perf_counter()
    drain_samples: list[tuple[float, int]] = [(0.0, depth_stop)]
    depth = depth_stop
    while depth > 0 and time.perf_counter() - drain_t0 < cfg.drain_limit_s:
        await asyncio.sleep(0.1)
        depth = await queue_depth(monitor)
        drain_samples.append((time.perf_counter() - drain_t0, depth))
    drain_s = time.perf_counter() - drain_t0
    if depth:
        log(f"warning: write queue still {depth} deep after a {drain_s:.0f} s drain")

    n = phase.ok
    enqueued = 2 * n  # each exchange is stored as the user turn and the reply
    drained_during = enqueued - (depth_stop - depth_start)
    depths = [d for _, d, _ in samples]
    second_half = [(t, float(d)) for t, d, _ in samples if t >= load_wall / 2]
    growth = slope(second_half)
    enqueue_rate = enqueued / load_wall if load_wall > 0 else 0.0
    # Bounded: no sustained growth over the run's second half (a writer that keeps up leaves
    # the depth oscillating around its batch size).
    bounded = growth <= max(1.0, 0.05 * enqueue_rate)
    drained_after = depth_stop - depth
    return {
        "seconds": load_wall,
        "exchanges": n,
        "errors": phase.errors,
        "first_error": phase.first_error,
        "exchanges_per_second": n / load_wall if load_wall else math.nan,
        "p50_ms": phase.p(50),
        "p99_ms": phase.p(99),
        "mean_recalled": (sum(phase.recalled) / len(phase.recalled)) if phase.recalled else None,
        "memories_enqueued_per_second": enqueue_rate,
        "writer_memories_per_second_during_load": drained_during / load_wall,
        "writer_exchanges_per_second_during_load": drained_during / 2 / load_wall,
        "depth_start": depth_start,
        "depth_max": max(depths, default=0),
        "depth_at_stop": depth_stop,
        "depth_growth_second_half_per_s": growth,
        "bounded": bounded,
        "samples": len(samples),
        "readyz_p50_ms": percentile([ms for _, _, ms in samples], 50),
        "readyz_max_ms": max((ms for _, _, ms in samples), default=math.nan),
        "depth_series": [[round(t, 2), d] for t, d, _ in samples],
        "drain_seconds": drain_s,
        "drain_left": depth,
        "drain_memories_per_second": (drained_after / drain_s) if drained_after else math.nan,
        "drain_exchanges_per_second": (drained_after / 2 / drain_s) if drained_after else math.nan,
        "drain_series": [[round(t, 2), d] for t, d in drain_samples],
        # Everything the run asked for, writes included, over the time it took to finish it.
        "sustained_exchanges_per_second": n / (load_wall + (drain_s if drained_after else 0.0)),
        "cpu_seconds": phase.cpu,
        "cpu_share_pct": phase.cpu_share(),
    }
