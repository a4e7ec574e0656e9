"""The pass-through comparison (``--proxy``): the fake upstream alone, memgate's pass-through
(and other memgate trees) and optionally LiteLLM's proxy, in interleaved rounds: c=1 latency
from this process, c=32 throughput from wrk, each server's CPU per request."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from stats import percentile

from loadbench import MODEL, READY_TIMEOUT, REPO
from loadbench.processes import (
    Child,
    cpu_seconds,
    free_port,
    gateway_env,
    log,
    start_child,
    stop_child,
    wait_http,
)
from loadbench.report import fmt, git_state, machine
from loadbench.texts import chat_bodies, question_texts
from loadbench.upstream import upstream_command

LITELLM = Path("/tmp/litellm-venv/bin/litellm")  # noqa: S108 - a throwaway venv
PEER_READY_TIMEOUT = 180.0


@dataclass
class ProxyTarget:
    """One server answering ``/v1/chat/completions`` for the comparison: the fake upstream
    itself (``direct``), a memgate, or a peer proxy; ``pid`` is the process whose CPU counts."""

    name: str
    url: str
    pid: int
    c1_ms: list[float] = field(default_factory=list)
    c1_errors: int = 0
    c1_cpu: float = 0.0
    c32_requests: int = 0
    c32_errors: int = 0
    c32_seconds: float = 0.0
    c32_cpu: float = 0.0
    c32_latency_p50: list[float] = field(default_factory=list)
    c32_latency_p99: list[float] = field(default_factory=list)


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
bodies = {}
%s
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, bodies[(counter %% #bodies) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%.1f %%.1f\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_script(bodies: Sequence[bytes], folder: Path) -> Path:
    lines = "\n".join(f"bodies[{i + 1}] = {json.dumps(b.decode())}" for i, b in enumerate(bodies))
    path = folder / "bench.lua"
    path.write_text(WRK_SCRIPT % lines)
    return path


def run_wrk(
    url: str, script: Path, concurrency: int, seconds: float
) -> tuple[int, int, float, float, float]:
    """(requests, errors, seconds, p50 ms, p99 ms) of one wrk run, one thread."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"{url}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    match = re.search(r"RESULT (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    n, err, us, p50, p99 = match.groups()
    return int(n), int(err), int(us) / 1e6, float(p50) / 1000.0, float(p99) / 1000.0


async def c1_round(
    target: ProxyTarget, client: httpx.AsyncClient, bodies: Sequence[bytes], count: int, first: int
) -> None:
    headers = {"content-type": "application/json"}
    for i in range(first, first + count):
        start = time.perf_counter()
        try:
            response = await client.post(
                f"{target.url}/v1/chat/completions",
                content=bodies[i % len(bodies)],
                headers=headers,
            )
        except httpx.HTTPError:
            target.c1_errors += 1
            continue
        elapsed = (time.perf_counter() - start) * 1000.0
        if response.status_code == 200:
            target.c1_ms.append(elapsed)
        else:
            target.c1_errors += 1


def start_litellm(
    executable: Path, up_port: int, port: int, root: Path, env: dict[str, str]
) -> Child:
    config = root / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{up_port}/v1\n"
        "      api_key: x\n"
    )
    peer_env = {
        **env,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download at start
        "LITELLM_TELEMETRY": "False",
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",  # loopback, no key
    }
    return start_child(
        "litellm",
        [
            str(executable),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        root / "litellm.log",
        peer_env,
    )


def proxy_run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Direct vs memgate pass-through (vs other memgate trees, vs a peer proxy), interleaved
    rounds: c=1 latency from this process, c=32 throughput from wrk, CPU of each server."""
    if shutil.which("wrk") is None:
        raise RuntimeError("--proxy needs wrk (apt-get install wrk)")
    rng = random.Random(args.seed)
    bodies = chat_bodies(question_texts(200, rng), stream=False)
    script = wrk_script(bodies, root)
    env = gateway_env(args.gateway_env)
    children: list[Child] = []
    results: dict[str, Any] = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git": git_state(),
        "config": {
            "rounds": args.rounds,
            "c1_per_round": args.c1_count,
            "c32_seconds": args.c32_seconds,
            "log_level": args.log_level,
            "gateway_env": list(args.gateway_env),
        },
    }
    try:
        up_port = free_port()
        upstream = start_child(
            "upstream",
            upstream_command(up_port),
            root / "upstream.log",
            env,
        )
        children.append(upstream)
        wait_http(f"http://127.0.0.1:{up_port}/v1/models", upstream, 30.0, want_ready=False)
        targets = [ProxyTarget("direct", f"http://127.0.0.1:{up_port}", upstream.proc.pid)]
        trees = [("memgate", REPO, args.log_level)]
        for spec in args.also:
            name, _, rest = spec.partition("=")
            folder, _, level = rest.partition("@")
            trees.append((name, Path(folder).resolve(), level or args.log_level))
        for name, tree, level in trees:
            port = free_port()
            gw = start_child(
                name,
                [
                    sys.executable,
                    "-m",
                    "gateway.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(root / f"{name}-data"),
                    "--upstream-url",
                    f"http://127.0.0.1:{up_port}/v1",
                    "--upstream-api-key",
                    "x",
                    "--log-level",
                    level,
                ],
                root / f"{name}.log",
                {**env, "PYTHONPATH": str(tree)},
                cwd=tree,
            )
            children.append(gw)
            wait_http(f"http://127.0.0.1:{port}/readyz", gw, READY_TIMEOUT, want_ready=True)
            targets.append(ProxyTarget(name, f"http://127.0.0.1:{port}", gw.proc.pid))
        if args.peer == "litellm":
            if not args.litellm.exists():
                raise RuntimeError(
                    f"no LiteLLM at {args.litellm}: python -m venv VENV && "
                    "VENV/bin/pip install 'litellm[proxy]', then --litellm VENV/bin/litellm"
                )
            port = free_port()
            peer = start_litellm(args.litellm, up_port, port, root, env)
            children.append(peer)
            wait_http(
                f"http://127.0.0.1:{port}/health/liveliness",
                peer,
                PEER_READY_TIMEOUT,
                want_ready=False,
            )
            version = subprocess.run(
                [
                    str(args.litellm.parent / "python"),
                    "-c",
                    "import importlib.metadata as m; print(m.version('litellm'))",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            ).stdout.strip()
            results["peer_version"] = f"LiteLLM {version}"
            targets.append(ProxyTarget("litellm", f"http://127.0.0.1:{port}", peer.proc.pid))
        asyncio.run(proxy_phases(args, targets, bodies, script, children))
    finally:
        for child in reversed(children):
            stop_child(child)
    results["targets"] = {t.name: proxy_figures(t) for t in targets}
    return results


async def proxy_phases(
    args: argparse.Namespace,
    targets: list[ProxyTarget],
    bodies: Sequence[bytes],
    script: Path,
    children: list[Child],
) -> None:
    async with httpx.AsyncClient(timeout=30.0, trust_env=False) as client:
        log("warming up")
        for t in targets:
            await c1_round(t, client, bodies, 50, 0)
            t.c1_ms.clear()
            t.c1_errors = 0
            await asyncio.to_thread(run_wrk, t.url, script, 32, 3)
        counter = 0
        for r in range(args.rounds):
            order = targets[r % len(targets) :] + targets[: r % len(targets)]
            log(f"round {r + 1}/{args.rounds}: {', '.join(t.name for t in order)}")
            for t in order:
                for child in children:
                    child.check_alive()
                cpu0 = cpu_seconds(t.pid)
                await c1_round(t, client, bodies, args.c1_count, counter)
                t.c1_cpu += cpu_seconds(t.pid) - cpu0
                counter += args.c1_count
                cpu0 = cpu_seconds(t.pid)
                n, err, sec, p50, p99 = await asyncio.to_thread(
                    run_wrk, t.url, script, 32, args.c32_seconds
                )
                t.c32_cpu += cpu_seconds(t.pid) - cpu0
                t.c32_requests += n
                t.c32_errors += err
                t.c32_seconds += sec
                t.c32_latency_p50.append(p50)
                t.c32_latency_p99.append(p99)


def proxy_figures(t: ProxyTarget) -> dict[str, Any]:
    ok32 = t.c32_requests - t.c32_errors
    return {
        "c1_ok": len(t.c1_ms),
        "c1_errors": t.c1_errors,
        "c1_p50_ms": percentile(t.c1_ms, 50),
        "c1_p99_ms": percentile(t.c1_ms, 99),
        "c1_cpu_ms_per_request": 1000.0 * t.c1_cpu / max(1, len(t.c1_ms)),
        "c32_requests": t.c32_requests,
        "c32_errors": t.c32_errors,
        "c32_rps": ok32 / t.c32_seconds if t.c32_seconds else math.nan,
        "c32_cpu_ms_per_request": 1000.0 * t.c32_cpu / max(1, ok32),
        "c32_cpu_share_pct": 100.0 * t.c32_cpu / t.c32_seconds if t.c32_seconds else math.nan,
        "c32_p50_ms_median_of_rounds": percentile(t.c32_latency_p50, 50),
        "c32_p99_ms_median_of_rounds": percentile(t.c32_latency_p99, 50),
    }


def proxy_report(results: dict[str, Any]) -> str:
    m = results["machine"]
    cfg = results["config"]
    figures: dict[str, Any] = results["targets"]
    direct = figures["direct"]
    lines = [
        "# memgate pass-through vs direct" + (" vs a peer" if "litellm" in figures else ""),
        "",
        f"- machine: nproc {m['nproc']}, CPU {m['cpu_model']}, Python {m['python']}; load average "
        f"at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}",
        f"- run: {results['started']}, repo at {results['git']}, {cfg['rounds']} interleaved "
        f"rounds (rotated order) of {cfg['c1_per_round']} sequential requests (c=1, this "
        f"process, httpx) "
        f"and {cfg['c32_seconds']:g} s of wrk at c=32 (1 thread), per server; gateways at log "
        f"level {cfg['log_level']} unless named otherwise"
        + (f"; peer {results['peer_version']}" if results.get("peer_version") else ""),
        "- CPU: the server process's user+system time (memgate's store process included) over "
        "its phases, divided by the requests answered; `direct` is the fake upstream's own",
        "",
        "| server | c=1 p50 ms | c=1 p99 ms | added p50 | added p99 | c=32 req/s | x direct "
        "| CPU ms/request c=32 | CPU ms/request c=1 | c=32 p50 / p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in figures.items():
        is_direct = name == "direct"
        a50 = "" if is_direct else fmt(f["c1_p50_ms"] - direct["c1_p50_ms"], 2)
        a99 = "" if is_direct else fmt(f["c1_p99_ms"] - direct["c1_p99_ms"], 2)
        lines.append(
            f"| {name} | {fmt(f['c1_p50_ms'], 2)} | {fmt(f['c1_p99_ms'], 2)} | {a50} | {a99} "
            f"| {fmt(f['c32_rps'], 0)} | {fmt(f['c32_rps'] / direct['c32_rps'], 3)} "
            f"| {fmt(f['c32_cpu_ms_per_request'], 3)} | {fmt(f['c1_cpu_ms_per_request'], 3)} "
            f"| {fmt(f['c32_p50_ms_median_of_rounds'], 1)} "
            f"/ {fmt(f['c32_p99_ms_median_of_rounds'], 1)} "
            f"| {f['c1_errors'] + f['c32_errors']} |"
        )
    if "litellm" in figures:
        peer = figures["litellm"]
        lines.append("")
        for name, f in figures.items():
            if name in ("direct", "litellm"):
                continue
            lines.append(
                f"- {name} / LiteLLM, same run: c=32 throughput "
                f"{f['c32_rps'] / peer['c32_rps']:.1f}x, CPU per request "
                f"{peer['c32_cpu_ms_per_request'] / f['c32_cpu_ms_per_request']:.1f}x less, "
                f"added p50 at c=1 {fmt(f['c1_p50_ms'] - direct['c1_p50_ms'], 2)} vs "
                f"{fmt(peer['c1_p50_ms'] - direct['c1_p50_ms'], 2)} ms"
            )
    return "\n".join(lines)
