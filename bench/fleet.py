#!/usr/bin/env python3
"""Fleet benchmark for memgate: several gateways on one Chroma server, and many tenants.

Usage::

    python bench/fleet.py [--quick] [--json OUT] [--memories 10000] [--namespaces 10000]

Two parts, everything on 127.0.0.1, bounded, cleaned up at the end (also on Ctrl-C):

1. **Fleet.** A Chroma server (``chroma run``), the fake upstream of ``bench/load.py`` and
   three gateways (``memgate serve --chroma-url``). One namespace is preloaded with
   ``--memories`` memories. Memory chat at concurrency 1, sequentially: first through
   gateway A alone (the only writer: its own exchanges), then round-robin over A, B and C
   (each exchange written through one gateway and recalled through the others: every
   request meets writes it did not make), then A alone again. Reported: p50/p99 of each and
   the fleet over single ratio (goal <= 1.5).
2. **Tenants.** One gateway on its embedded defaults. Memory chat on a random namespace
   with 10 namespaces of 10 memories, then with ``--namespaces`` namespaces of 10 memories:
   p50/p99 and their ratio (goal <= 1.5), and the RSS and open files of the gateway and of
   its store process (goal: together under 2 GiB, files bounded).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from loadbench import MODEL
from loadbench.processes import (
    Child,
    child_pids,
    free_port,
    gateway_env,
    log,
    scratch,
    start_child,
    stop_child,
    wait_http,
)
from loadbench.texts import memory_texts, question_texts
from stats import percentile

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CHROMA = str(Path(PYTHON).with_name("chroma"))


def chat(client: httpx.Client, url: str, namespace: str, question: str) -> float:
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}]}
    started = time.perf_counter()
    r = client.post(f"{url}/v1/memory/chat/completions", params={"namespace": namespace}, json=body)
    elapsed = time.perf_counter() - started
    if r.status_code != 200 or "x-memory-error" in r.headers:
        raise RuntimeError(f"memory chat failed: {r.status_code} {r.headers} {r.text[:300]}")
    return elapsed


def preload(client: httpx.Client, url: str, namespace: str, texts: Sequence[str]) -> None:
    for start in range(0, len(texts), 500):
        batch = texts[start : start + 500]
        r = client.post(
            f"{url}/v1/memory/memories",
            params={"namespace": namespace},
            json={"memories": [{"content": t} for t in batch]},
        )
        if r.status_code != 200:
            raise RuntimeError(f"preload failed: {r.status_code} {r.text[:300]}")


def wait_drained(client: httpx.Client, url: str) -> None:
    deadline = time.monotonic() + 120
    while client.get(f"{url}/readyz").json().get("queue_depth", 1):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: write queue not drained in 120 s")
        time.sleep(0.1)


def summary(times: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(times),
        "p50_ms": percentile(times, 50) * 1000,
        "p99_ms": percentile(times, 99) * 1000,
    }


def start_upstream(root: Path) -> tuple[Child, str]:
    """The fake upstream of ``bench/load.py`` in its own process; its ``/v1`` URL."""
    port = free_port()
    child = start_child(
        "upstream",
        [PYTHON, str(REPO / "bench" / "load.py"), "--serve-upstream", str(port)],
        root / "upstream.log",
        dict(os.environ),
    )
    url = f"http://127.0.0.1:{port}/v1"
    return _answering(child, url + "/models", 60, want_ready=False), url


def start_gateway(
    name: str, root: Path, upstream: str, *extra: str, tree: Path | None = None
) -> tuple[Child, str]:
    """A gateway on its embedded defaults, data in ``root / name``, once ready; its URL.
    ``tree``: run the ``gateway/`` and ``memory/`` of that folder (another commit's
    worktree) instead of this repository's."""
    port = free_port()
    data = root / name
    data.mkdir(parents=True, exist_ok=True)
    command = [
        PYTHON, "-m", "gateway.cli", "serve", "--port", str(port), "--data-dir", str(data),
        "--upstream-url", upstream, "--upstream-api-key", "sk-bench", *extra,
    ]  # fmt: skip
    env = gateway_env([])
    env["HF_HUB_OFFLINE"] = "1"
    if tree is not None:
        env["PYTHONPATH"] = str(tree.resolve())
    child = start_child(name, command, root / f"{name}.log", env, tree or REPO)
    url = f"http://127.0.0.1:{port}"
    return _answering(child, url + "/readyz", 300, want_ready=True), url


def _answering(child: Child, url: str, timeout: float, *, want_ready: bool) -> Child:
    """``child`` once ``url`` answers; stopped if it never does."""
    try:
        wait_http(url, child, timeout, want_ready=want_ready)
    except BaseException:
        stop_child(child)
        raise
    return child


def process_figures(pid: int) -> dict[str, float]:
    """RSS (MiB) and open files of a process."""
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return {"rss_mib": rss_kb / 1024, "open_files": len(os.listdir(f"/proc/{pid}/fd"))}


def fleet_part(root: Path, args: argparse.Namespace, upstream: str) -> dict[str, Any]:
    rng = random.Random(args.seed)
    port = free_port()
    chroma = start_child(
        "chroma",
        [CHROMA, "run", "--path", str(root / "chroma"), "--host", "127.0.0.1", "--port", str(port)],
        root / "chroma.log",
        dict(os.environ),
    )
    children = [chroma]
    try:
        wait_http(f"http://127.0.0.1:{port}/api/v2/heartbeat", chroma, 60, want_ready=False)
        urls = []
        for name in ("a", "b", "c"):
            child, url = start_gateway(
                f"gateway-{name}", root, upstream, "--chroma-url", f"http://127.0.0.1:{port}"
            )
            children.append(child)
            urls.append(url)
        ns = "fleet-tenant"
        with httpx.Client(timeout=60, trust_env=False) as client:
            log(f"preloading {args.memories} memories")
            started = time.perf_counter()
            preload(client, urls[0], ns, memory_texts(args.memories, rng))
            log(f"preloaded in {time.perf_counter() - started:.0f} s")
            questions = iter(question_texts(args.requests * 4 + 30, rng))
            for url in urls:  # each gateway's local copy of the namespace is made once
                for _ in range(5):
                    chat(client, url, ns, next(questions))
                wait_drained(client, url)
            phases: dict[str, list[float]] = {"single": [], "fleet": [], "single_again": []}
            for phase in ("single", "fleet", "single_again"):
                for i in range(args.requests):
                    url = urls[i % 3] if phase == "fleet" else urls[0]
                    phases[phase].append(chat(client, url, ns, next(questions)))
                for url in urls:
                    wait_drained(client, url)
                log(f"{phase}: {summary(phases[phase])}")
            # a page costs the page: the first page of one, and an export of everything, through B
            first_page = []
            for _ in range(50):
                started = time.perf_counter()
                r = client.get(
                    f"{urls[1]}/v1/memory/memories", params={"namespace": ns, "limit": 1}
                )
                first_page.append(time.perf_counter() - started)
                if r.status_code != 200 or len(r.json()["data"]) != 1:
                    raise RuntimeError(f"first page: {r.status_code} {r.text[:200]}")
            started = time.perf_counter()
            exported, after = 0, None
            while True:
                params: dict[str, Any] = {"namespace": ns, "limit": 100}
                if after:
                    params["after"] = after
                page = client.get(f"{urls[1]}/v1/memory/memories", params=params).json()
                exported += len(page["data"])
                if not page["has_more"]:
                    break
                after = page["data"][-1]["id"]
            export_seconds = time.perf_counter() - started
        single = phases["single"] + phases["single_again"]
        out: dict[str, Any] = {k: summary(v) for k, v in phases.items()}
        out["first_page"] = summary(first_page)
        out["export"] = {"memories": exported, "seconds": export_seconds}
        out["single_both"] = summary(single)
        out["ratio_p50"] = out["fleet"]["p50_ms"] / out["single_both"]["p50_ms"]
        out["ratio_p99"] = out["fleet"]["p99_ms"] / out["single_both"]["p99_ms"]
        out["memories"] = args.memories
        return out
    finally:
        for child in reversed(children):
            stop_child(child)


def tenants_part(root: Path, args: argparse.Namespace, upstream: str) -> dict[str, Any]:
    rng = random.Random(args.seed + 1)
    child, url = start_gateway("gateway-tenants", root, upstream)
    try:
        store_pids = child_pids(child.proc.pid)
        out: dict[str, Any] = {"namespaces": args.namespaces}
        questions = iter(question_texts(args.requests * 2 + 10, rng))
        with httpx.Client(timeout=60, trust_env=False) as client:

            def fill(first: int, last: int) -> None:
                for n in range(first, last):
                    preload(client, url, f"tenant-{n}", memory_texts(10, rng))
                    if n and n % 1000 == 0:
                        log(f"{n} namespaces")

            def measure(count: int) -> dict[str, float]:
                times = []
                for _ in range(args.requests):
                    ns = f"tenant-{rng.randrange(count)}"
                    times.append(chat(client, url, ns, next(questions)))
                    wait_drained(client, url)  # each request alone, as at c=1
                return summary(times)

            fill(0, 10)
            out["ten"] = measure(10)
            log(f"10 namespaces: {out['ten']}")
            started = time.perf_counter()
            fill(10, args.namespaces)
            out["fill_seconds"] = time.perf_counter() - started
            out["many"] = measure(args.namespaces)
            log(f"{args.namespaces} namespaces: {out['many']}")
            listing = []
            for offset in (0, max(0, args.namespaces - 100)) * 5:
                started = time.perf_counter()
                r = client.get(
                    f"{url}/v1/memory/namespaces", params={"limit": 100, "offset": offset}
                )
                listing.append(time.perf_counter() - started)
                if r.status_code != 200 or len(r.json()["data"]) != 100:
                    raise RuntimeError(f"namespaces page: {r.status_code} {r.text[:200]}")
            out["namespaces_page"] = summary(listing)
        out["ratio_p50"] = out["many"]["p50_ms"] / out["ten"]["p50_ms"]
        out["gateway"] = process_figures(child.proc.pid)
        store_pids = child_pids(child.proc.pid) or store_pids
        out["store"] = process_figures(store_pids[0]) if store_pids else {}
        out["total_rss_mib"] = out["gateway"]["rss_mib"] + out["store"].get("rss_mib", 0.0)
        out["nofile_limit"] = int(
            Path(f"/proc/{child.proc.pid}/limits").read_text().split("Max open files")[1].split()[0]
        )
        return out
    finally:
        stop_child(child)


def report(results: dict[str, Any]) -> str:
    lines = ["## Fleet", ""]
    fleet = results.get("fleet")
    if fleet:
        lines += [
            f"Three gateways on one Chroma server, a {fleet['memories']:,}-memory namespace, "
            "memory chat at c=1:",
            "",
            "| | requests | p50 | p99 |",
            "|---|---:|---:|---:|",
        ]
        for key, label in (
            ("single", "gateway A alone"),
            ("fleet", "round-robin over A, B, C (writes through all)"),
            ("single_again", "gateway A alone, again"),
        ):
            f = fleet[key]
            lines.append(f"| {label} | {f['n']} | {f['p50_ms']:.1f} ms | {f['p99_ms']:.1f} ms |")
        lines += [
            "",
            f"Fleet over single: p50 {fleet['ratio_p50']:.2f}x, p99 {fleet['ratio_p99']:.2f}x "
            "(goal <= 1.5x)",
            "",
            f"Through gateway B: `GET /v1/memory/memories?limit=1` p50 "
            f"{fleet['first_page']['p50_ms']:.1f} ms; all {fleet['export']['memories']:,} "
            f"memories in pages of 100 in {fleet['export']['seconds']:.1f} s.",
            "",
        ]
    tenants = results.get("tenants")
    if tenants:
        lines += [
            "## Tenants",
            "",
            "Embedded defaults; memory chat at c=1 on a random namespace of 10 memories:",
            "",
            "| namespaces | p50 | p99 |",
            "|---:|---:|---:|",
            f"| 10 | {tenants['ten']['p50_ms']:.1f} ms | {tenants['ten']['p99_ms']:.1f} ms |",
            f"| {tenants['namespaces']:,} | {tenants['many']['p50_ms']:.1f} ms | "
            f"{tenants['many']['p99_ms']:.1f} ms |",
            "",
            f"p50 ratio {tenants['ratio_p50']:.2f}x (goal <= 1.5x); filling took "
            f"{tenants['fill_seconds']:.0f} s. A page of 100 namespaces with their counts "
            f"(first and last page): p50 {tenants['namespaces_page']['p50_ms']:.1f} ms.",
            "",
            "| process | RSS | open files |",
            "|---|---:|---:|",
            f"| gateway | {tenants['gateway']['rss_mib']:.0f} MiB | "
            f"{tenants['gateway']['open_files']:.0f} |",
            f"| store process | {tenants['store'].get('rss_mib', 0):.0f} MiB | "
            f"{tenants['store'].get('open_files', 0):.0f} |",
            "",
            f"Together {tenants['total_rss_mib']:.0f} MiB (goal < 2048 MiB); open-files limit "
            f"{tenants['nofile_limit']}.",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument("--namespaces", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=300, help="memory chats a phase")
    parser.add_argument("--only", choices=("fleet", "tenants"), default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.memories, args.namespaces, args.requests = 1000, 200, 60
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results: dict[str, Any] = {"args": vars(args) | {"json": str(args.json)}}
    try:
        with scratch("memgate-fleet-") as (root, children):
            upstream, upstream_url = start_upstream(root)
            children.append(upstream)
            if args.only in (None, "fleet"):
                results["fleet"] = fleet_part(root, args, upstream_url)
            if args.only in (None, "tenants"):
                results["tenants"] = tenants_part(root, args, upstream_url)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except (RuntimeError, httpx.HTTPError) as exc:
        log(f"error: {exc}")
        return 1
    print(report(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
