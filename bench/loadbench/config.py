"""The counts of one run: ``--quick`` (a smoke test) or the full run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Config:
    quick: bool
    seed: int
    preload: int
    warmup_c1: int
    warmup_c32: int
    count_c1: int
    count_c32: int
    rounds: int
    chunk_max_s: float
    stream_count: int
    write_seconds: float
    drain_limit_s: float
    embed_batches: int
    embed_singles: int
    recall_per_ns: int
    recall_other_ns: int
    recall_queries: int
    high_concurrency: int = 32

    @classmethod
    def make(cls, quick: bool, seed: int) -> Config:
        if quick:
            return cls(
                quick=True,
                seed=seed,
                preload=1000,
                warmup_c1=10,
                warmup_c32=64,
                count_c1=40,
                count_c32=200,
                rounds=2,
                chunk_max_s=20.0,
                stream_count=30,
                write_seconds=6.0,
                drain_limit_s=60.0,
                embed_batches=3,
                embed_singles=10,
                recall_per_ns=1000,
                recall_other_ns=4,
                recall_queries=100,
            )
        return cls(
            quick=False,
            seed=seed,
            preload=10_000,
            warmup_c1=30,
            warmup_c32=256,
            count_c1=300,
            count_c32=2000,
            rounds=5,
            chunk_max_s=25.0,
            stream_count=200,
            write_seconds=60.0,
            drain_limit_s=240.0,
            embed_batches=20,
            embed_singles=50,
            recall_per_ns=10_000,
            recall_other_ns=9,
            recall_queries=200,
        )
