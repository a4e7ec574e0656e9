#!/usr/bin/env python3
"""Where a memory chat's CPU goes: one gateway on its embedded defaults, a 10,000-memory
namespace, memory chats at c=1, and the CPU time each process and each of its threads spent
per chat (from /proc), beside the latency the client saw.

Usage::

    python bench/chat_cpu.py [TREE] [--chats 300] [--memories 10000] [--pause 0]
                             [--py-spy PATH]

``TREE``: a folder holding ``gateway/`` and ``memory/`` (default: this repository).
``--pause``: seconds between two chats (think time: the previous exchange's background work
then ends before the next chat). ``--py-spy``: a py-spy binary, to name the gateway's
threads (Python 3.11 leaves every thread of a process named ``python`` in /proc).
Linux only; everything on 127.0.0.1, bounded in count, cleaned up at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
from fleet import chat, preload, start_gateway, start_upstream, wait_drained
from loadbench.processes import child_pids, scratch
from loadbench.texts import memory_texts, question_texts
from stats import percentile

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def thread_seconds(pid: int) -> dict[tuple[int, int], float]:
    """CPU seconds of each thread of ``pid``, by (pid, tid)."""
    out: dict[tuple[int, int], float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        out[(pid, int(tid))] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def thread_names(py_spy: str | None, pid: int) -> dict[int, str]:
    """Python's names for the threads of ``pid`` (from ``py-spy dump``), if asked for."""
    if not py_spy:
        return {}
    dump = subprocess.run(
        [py_spy, "dump", "-p", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return {
        int(t): n
        for t, n in re.findall(r'Thread (?:0x[0-9a-f]+ )?(\d+) \([^)]*\): "([^"]+)"', dump)
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree", nargs="?", type=Path, default=REPO)
    parser.add_argument("--chats", type=int, default=300)
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--py-spy", default=None)
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.chats, args.memories = 20, 300
    try:
        with scratch("memgate-cpu-") as (root, children):
            upstream, upstream_url = start_upstream(root)
            children.append(upstream)
            gateway, url = start_gateway("gateway", root, upstream_url, tree=args.tree)
            children.append(gateway)
            rng = random.Random(args.seed)
            texts = memory_texts(args.memories, rng)
            questions = iter(question_texts(args.chats + 60, rng))
            with httpx.Client(timeout=60, trust_env=False) as client:
                preload(client, url, "cpu", texts)
                for _ in range(50):  # warm: the namespace's copy read, the model's first calls
                    chat(client, url, "cpu", next(questions))
                wait_drained(client, url)
                time.sleep(1.0)
                pids = [gateway.proc.pid, *child_pids(gateway.proc.pid)]
                names = thread_names(args.py_spy, gateway.proc.pid)

                def snapshot() -> dict[tuple[int, int], float]:
                    out: dict[tuple[int, int], float] = {}
                    for pid in pids:
                        out.update(thread_seconds(pid))
                    return out

                before, up_before = snapshot(), sum(thread_seconds(upstream.proc.pid).values())
                mine, started = os.times(), time.perf_counter()
                latencies = []
                for _ in range(args.chats):
                    latencies.append(chat(client, url, "cpu", next(questions)))
                    time.sleep(args.pause)
                wait_drained(client, url)  # the chats' writes count too
                wall = time.perf_counter() - started
                after, up_after = snapshot(), sum(thread_seconds(upstream.proc.pid).values())
                mine_after = os.times()
            n = args.chats
            spent = Counter({key: after[key] - before.get(key, 0.0) for key in after})
            own = sum(v for (pid, _), v in spent.items() if pid == gateway.proc.pid)
            store = sum(v for (pid, _), v in spent.items() if pid != gateway.proc.pid)
            client_s = (mine_after.user + mine_after.system) - (mine.user + mine.system)
            print(
                f"{args.tree}: {n} memory chats at c=1, pause {args.pause * 1000:.0f} ms: "
                f"latency p50 {percentile(latencies, 50) * 1000:.1f} ms, "
                f"p90 {percentile(latencies, 90) * 1000:.1f}, "
                f"p99 {percentile(latencies, 99) * 1000:.1f}"
            )
            print(
                f"CPU ms per chat: gateway {own / n * 1000:.2f}, "
                f"its store process {store / n * 1000:.2f}"
                f", upstream {(up_after - up_before) / n * 1000:.2f}, "
                f"client {client_s / n * 1000:.2f}"
                f" (wall {wall / n * 1000:.1f} ms per chat, writes drained)"
            )
            print("busiest threads (ms per chat):")
            for (pid, tid), seconds in spent.most_common(8):
                if seconds <= 0:
                    break
                where = "gateway" if pid == gateway.proc.pid else "store process"
                print(f"  {where} thread {tid} {names.get(tid, '')}: {seconds / n * 1000:.2f}")
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
