#!/usr/bin/env python3
"""Import rate through the memory API, beside the embedding model's own batched rate.

Usage::

    python bench/import_rate.py [--total 8000] [--batch 25] [--in-flight 20] [--long]

Starts ``memgate serve`` on a temporary data folder (no upstream needed), sends ``--total``
generated memories into one namespace with ``POST /v1/memory/memories`` in requests of
``--batch`` (``--in-flight`` at once: what ``memgate import`` does by default), and prints the
sustained memories/s; then times the default embedder on the same texts, alone (batches of 64,
one thread) and on both of the gateway's model lanes (``BatchingEmbedder.embed_bulk``): the
bound the import cannot pass. ``--long``: turns of 20-90 words, like a ChatGPT export's,
instead of the load bench's one-sentence memories.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from loadbench.processes import free_port, stop_process, wait_ready
from loadbench.texts import memory_texts

WORDS = [
    "the",
    "a",
    "trip",
    "to",
    "Rome",
    "cat",
    "called",
    "Miso",
    "train",
    "at",
    "seven",
    "plays",
    "cello",
    "allergic",
    "peanuts",
    "Lisbon",
    "moved",
    "spring",
    "food",
    "tour",
    "Trastevere",
    "Colosseum",
    "kayak",
    "red",
    "book",
    "reading",
    "python",
    "code",
    "deploy",
    "server",
    "memory",
    "gateway",
    "weather",
    "tomorrow",
    "coffee",
    "tea",
    "garden",
]


def long_texts(count: int, rng: random.Random) -> list[str]:
    return [
        f"{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 90)))
        for i in range(count)
    ]


async def send_all(url: str, texts: list[str], batch: int, in_flight: int) -> float:
    gate = asyncio.Semaphore(in_flight)
    async with httpx.AsyncClient(base_url=url, timeout=600, trust_env=False) as client:

        async def send(chunk: list[str]) -> None:
            async with gate:
                response = await client.post(
                    "/v1/memory/memories",
                    params={"namespace": "import-rate"},
                    json={"memories": [{"content": t} for t in chunk]},
                )
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(send(texts[i : i + batch]) for i in range(0, len(texts), batch)))
        return time.perf_counter() - started


def embedder_rates(texts: list[str]) -> tuple[float, float]:
    from gateway.app import open_embedder
    from gateway.config import Settings
    from memory.embedder import BatchingEmbedder

    model = open_embedder(Settings())
    model.embed(texts[:64])  # warm
    sample = texts[:640]
    started = time.perf_counter()
    for i in range(0, len(sample), 64):
        model.embed(sample[i : i + 64])
    alone = len(sample) / (time.perf_counter() - started)

    async def both() -> float:
        lanes = BatchingEmbedder(model)
        started = time.perf_counter()
        await lanes.embed_bulk(sample)
        lanes.close()
        return len(sample) / (time.perf_counter() - started)

    return alone, asyncio.run(both())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--in-flight", type=int, default=20)
    parser.add_argument("--long", action="store_true", help="ChatGPT-like turns of 20-90 words")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.total = 300
    rng = random.Random(1)
    texts = long_texts(args.total, rng) if args.long else memory_texts(args.total, rng)
    root = Path(tempfile.mkdtemp(prefix="memgate-import-rate-"))
    logfile = root / "gateway.log"
    port = free_port()
    with logfile.open("wb") as out:
        proc = subprocess.Popen(
            [
                *([sys.executable, "-m", "gateway.cli"]),
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(root / "data"),
                "--upstream-url",
                "http://127.0.0.1:9/v1",
                "--log-level",
                "warning",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/readyz", 180, logfile=logfile)
        elapsed = asyncio.run(send_all(url, texts, args.batch, args.in_flight))
    finally:
        stop_process("memgate", proc, logfile, timeout=30, log=print)
    rate = len(texts) / elapsed
    alone, both = embedder_rates(texts)
    kind = "long turns (20-90 words)" if args.long else "one-sentence memories"
    print(
        f"{len(texts)} {kind} into one namespace, requests of {args.batch}, "
        f"{args.in_flight} in flight: {rate:.0f} memories/s ({elapsed:.1f} s)\n"
        f"embedder alone on the same texts: {alone:.0f} texts/s one thread, {both:.0f} texts/s "
        f"on both lanes: the import runs at {rate / both:.2f}x of the model's bound"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
