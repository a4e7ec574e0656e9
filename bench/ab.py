#!/usr/bin/env python3
"""Two gateways side by side: memory chat at c=1, alternating between them in blocks, so that
both meet the same host (a shared machine drifts more between runs than most changes move).

Usage::

    python bench/ab.py TREE_A TREE_B [--memories 10000] [--rounds 40] [--pause 0]
                       [--concurrency 1]

Each tree is a folder holding ``gateway/`` and ``memory/`` (this repository, or a checkout of
another commit: ``git worktree add /tmp/base COMMIT``). Both gateways run at once on their
embedded defaults with their own data folders, in front of the fake upstream of
``bench/load.py``; each gets the same ``--memories`` generated memories in one namespace. Then
``--rounds`` rounds of 10 memory chats each way (order alternating), each gateway's write
queue drained after its block (``--pause``: seconds between two chats, else none). With
``--concurrency N``, a block is 10 x N chats sent by N threads at once. Prints p50/p90/p99
(and the slowest chat) of each.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from fleet import chat, preload, start_gateway, start_upstream, wait_drained
from loadbench.processes import log, scratch
from loadbench.texts import memory_texts, question_texts
from stats import percentile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs=2, type=Path)
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.memories, args.rounds = 300, 2
    try:
        with scratch("memgate-ab-") as (root, children):
            upstream, upstream_url = start_upstream(root)
            children.append(upstream)
            urls = []
            for i, tree in enumerate(args.trees):
                child, url = start_gateway(f"data{i}", root, upstream_url, tree=tree)
                children.append(child)
                urls.append(url)
            rng = random.Random(args.seed)
            texts = memory_texts(args.memories, rng)
            width = max(args.concurrency, 1)
            questions = iter(question_texts(args.rounds * 20 * width + 10, rng))
            times: dict[str, list[float]] = {url: [] for url in urls}
            limits = httpx.Limits(max_connections=width, max_keepalive_connections=width)
            with (
                httpx.Client(timeout=60, trust_env=False, limits=limits) as client,
                ThreadPoolExecutor(width) as pool,
            ):
                for url in urls:
                    preload(client, url, "ab", texts)
                log("preloaded both")

                def sender(url: str, block: list[str]) -> list[float]:
                    got = []
                    for question in block:
                        got.append(chat(client, url, "ab", question))
                        time.sleep(args.pause)
                    return got

                for round_ in range(args.rounds):
                    for url in urls if round_ % 2 == 0 else urls[::-1]:
                        block = list(itertools.islice(questions, 10 * width))
                        shares = [block[i::width] for i in range(width)]
                        for got in pool.map(sender, [url] * width, shares):
                            times[url].extend(got)
                        wait_drained(client, url)
            for tree, url in zip(args.trees, urls, strict=True):
                got = times[url]
                print(
                    f"{tree}: {len(got)} memory chats, p50 {percentile(got, 50) * 1000:.1f} ms, "
                    f"p90 {percentile(got, 90) * 1000:.1f} ms, "
                    f"p99 {percentile(got, 99) * 1000:.1f} ms, slowest {max(got) * 1000:.1f} ms"
                )
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
