#!/usr/bin/env python3
"""Load benchmark for memgate: added latency, throughput, the write path, the embedder and
recall scaling, in one bounded run on loopback.

Usage::

    python bench/load.py [--quick] [--json OUT] [--seed N] [--gateway-env KEY=VALUE ...]
    python bench/load.py --proxy [--peer litellm] [--also NAME=DIR[@LEVEL] ...] [--quick]

``--proxy`` runs only the pass-through comparison: the fake upstream alone (direct), memgate's
``POST /v1/chat/completions``, any other memgate source trees (``--also``, e.g. a worktree of
an older commit, or the same tree at another log level) and LiteLLM's proxy (``--peer
litellm``, from a throwaway venv: never this project's), in interleaved rounds: c=1 latency
from this process, c=32 throughput from wrk, and each server's CPU per request.

What one run does (everything on 127.0.0.1, bounded in count and time, cleaned up at the end,
also on Ctrl-C or SIGTERM):

1. starts a minimal fast OpenAI-compatible upstream in its own process (this file run as
   ``--serve-upstream PORT``: a raw ASGI app under uvicorn with uvloop and httptools that
   answers a fixed small completion or a fixed short SSE stream and keeps no state);
2. starts ``python -m gateway.cli serve`` in its own process with a temporary data folder;
3. preloads one namespace with generated memories through ``POST /v1/memory/memories``;
4. with an async httpx client, measures direct-to-upstream vs pass-through vs memory chat at
   concurrency 1 and 32 (interleaved rounds, rotated order; the write queue is drained after
   every memory-chat round so that its backlog never lands on another path's round), the
   streaming time to first byte, a timed memory-chat run at concurrency 32 with the write
   queue sampled from ``/readyz``, and the drain rate once requests stop; the CPU time of
   client, gateway and upstream is read from ``/proc`` for every phase, to tell which process
   (or the whole machine) is the bottleneck;
5. stops gateway and upstream, then times the embedding model itself (batches of 64) and
   recall in the library (``memory.chroma.ChromaStore``) at 10k vs 100k total memories;
6. prints a Markdown report with the targets beside the figures (met / not met).

The machine's cores are shared by client, gateway and upstream: the report gives each
process's share of CPU in every phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from loadbench import READY_TIMEOUT, REPO
from loadbench.config import Config
from loadbench.inprocess import embedder_phase, recall_phase
from loadbench.phases import http_phases
from loadbench.processes import (
    Child,
    CpuMeter,
    free_port,
    gateway_env,
    log,
    start_child,
    stop_child,
    wait_http,
)
from loadbench.proxy import LITELLM, proxy_report, proxy_run
from loadbench.report import git_state, machine, no_nan, report, targets_table
from loadbench.upstream import serve_upstream, upstream_command


def run(
    cfg: Config, extra_env: Sequence[str], root: Path, gateway_src: Path | None
) -> dict[str, Any]:
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "config": {
            **cfg.__dict__,
            "gateway_env": list(extra_env),
            "gateway_src": str(gateway_src) if gateway_src else None,
        },
        "git": git_state(),
    }
    children: list[Child] = []
    try:
        up_port, gw_port = free_port(), free_port()
        while gw_port == up_port:
            gw_port = free_port()
        env = gateway_env(extra_env)
        gw_env = dict(env)
        if gateway_src is not None:
            gw_env["PYTHONPATH"] = str(gateway_src)
        upstream = start_child(
            "upstream",
            upstream_command(up_port),
            root / "upstream.log",
            env,
        )
        children.append(upstream)
        gateway = start_child(
            "gateway",
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(gw_port),
                "--data-dir",
                str(root / "gateway-data"),
                "--upstream-url",
                f"http://127.0.0.1:{up_port}/v1",
                "--upstream-api-key",
                "x",
                "--log-level",
                "warning",
            ],
            root / "gateway.log",
            gw_env,
            cwd=gateway_src or REPO,
        )
        children.append(gateway)
        upstream_url = f"http://127.0.0.1:{up_port}"
        gateway_url = f"http://127.0.0.1:{gw_port}"
        wait_http(f"{upstream_url}/v1/models", upstream, 30.0, want_ready=False)
        ready_s = wait_http(f"{gateway_url}/readyz", gateway, READY_TIMEOUT, want_ready=True)
        log(f"gateway ready after {ready_s:.1f} s")
        results["gateway_ready_seconds"] = ready_s
        meter = CpuMeter(
            {"client": None, "gateway": gateway.proc.pid, "upstream": upstream.proc.pid}
        )
        before = meter.snapshot()
        t0 = time.perf_counter()
        http = asyncio.run(http_phases(cfg, upstream_url, gateway_url, meter, children))
        whole = CpuMeter.delta(before, meter.snapshot())
        results["other_cpu_pct"] = 100.0 * whole.get("other", math.nan) / (time.perf_counter() - t0)
    finally:
        for child in reversed(children):
            stop_child(child)
    results["http"] = {
        "preload": http.preload,
        "phases": {k: v.as_json() for k, v in http.phases.items()},
        "streams": {k: v.as_json() for k, v in http.streams.items()},
        "write": http.write,
        "namespace_size": http.namespace_size,
        "drain_between_rounds_s": http.drain_between_rounds_s,
    }
    log("embedder throughput")
    results["embedder"] = embedder_phase(cfg, extra_env)
    log("recall in the library")
    results["recall"] = recall_phase(cfg, root)
    results["wall_seconds"] = time.perf_counter() - started
    results["targets"] = targets_table(results)
    return results


def _on_sigterm(signum: int, frame: object) -> None:
    del frame
    log("terminated: cleaning up")
    sys.exit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Load benchmark for memgate (added latency, throughput, write path, "
        "embedder, recall scaling); prints a Markdown report."
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write figures")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the generated texts")
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="MEMGATE_KEY=VALUE",
        help="a setting for the gateway, e.g. MEMGATE_EMBEDDER_THREADS=1 (repeatable)",
    )
    parser.add_argument(
        "--gateway-src",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the gateway from this source tree (a folder holding gateway/ and memory/), "
        "e.g. a patched copy; default: this repository",
    )
    proxy = parser.add_argument_group(
        "pass-through comparison (--proxy): direct vs memgate vs other trees vs a peer proxy"
    )
    proxy.add_argument(
        "--proxy", action="store_true", help="only the pass-through comparison (needs wrk)"
    )
    proxy.add_argument(
        "--peer", choices=("litellm",), default=None, help="add a peer proxy to the comparison"
    )
    proxy.add_argument(
        "--litellm",
        type=Path,
        default=LITELLM,
        metavar="EXE",
        help=f"the LiteLLM executable, from a throwaway venv (default {LITELLM})",
    )
    proxy.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=DIR[@LEVEL]",
        help="another memgate from the source tree DIR (e.g. a git worktree of an older "
        "commit), optionally at another log level (repeatable)",
    )
    proxy.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    proxy.add_argument(
        "--c1-count", type=int, default=200, help="c=1 requests a round and server (200)"
    )
    proxy.add_argument(
        "--c32-seconds", type=float, default=10.0, help="wrk seconds a round and server (10)"
    )
    proxy.add_argument(
        "--log-level", default="info", help="the gateways' log level (default info: access log on)"
    )
    parser.add_argument("--serve-upstream", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream is not None:
        serve_upstream(args.serve_upstream)
        return 0
    if args.proxy:
        if args.quick:
            args.rounds, args.c1_count, args.c32_seconds = 2, 50, 3.0
        signal.signal(signal.SIGTERM, _on_sigterm)
        root = Path(tempfile.mkdtemp(prefix="memgate-proxy-"))
        try:
            figures = proxy_run(args, root)
        except KeyboardInterrupt:
            log("interrupted")
            return 130
        except (RuntimeError, httpx.HTTPError, subprocess.SubprocessError) as exc:
            log(f"error: {exc}")
            return 1
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(proxy_report(figures))
        if args.json is not None:
            args.json.write_text(json.dumps(no_nan(figures), indent=2) + "\n")
        return 0

    # A SIGTERM unwinds like Ctrl-C, so that the processes and temp folders are cleaned up.
    signal.signal(signal.SIGTERM, _on_sigterm)
    cfg = Config.make(args.quick, args.seed)
    root = Path(tempfile.mkdtemp(prefix="memgate-load-"))
    try:
        results = run(cfg, args.gateway_env, root, args.gateway_src)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except (RuntimeError, httpx.HTTPError) as exc:
        log(f"error: {exc}")
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(report(results))
    if args.json is not None:
        args.json.write_text(json.dumps(no_nan(results), indent=2) + "\n")
        log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
