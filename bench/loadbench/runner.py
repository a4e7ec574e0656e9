"""The load runner: a phase's figures (``Phase``), a target to send requests to (``Target``)
and the closed loop that drives it (``run_load``); the write queue's depth."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from stats import percentile


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x; 0 for fewer than 2 points."""
    if len(points) < 2:
        return 0.0
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    den = sum((x - mx) ** 2 for x, _ in points)
    if den == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / den


@dataclass
class Phase:
    """Accumulated figures of one (path, concurrency) over its interleaved rounds."""

    path: str
    concurrency: int
    values_ms: list[float] = field(default_factory=list)  # latency, or TTFB for streams
    totals_ms: list[float] = field(default_factory=list)  # whole stream, for streams
    errors: int = 0
    first_error: str = ""
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    recalled: list[int] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return len(self.values_ms)

    @property
    def rps(self) -> float:
        return self.ok / self.wall if self.wall > 0 else math.nan

    def p(self, q: float) -> float:
        return percentile(self.values_ms, q)

    def cpu_share(self) -> dict[str, float]:
        """CPU used per process, in % of one core, over this phase's wall time."""
        if self.wall <= 0:
            return {}
        return {name: 100.0 * sec / self.wall for name, sec in self.cpu.items()}

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "concurrency": self.concurrency,
            "ok": self.ok,
            "errors": self.errors,
            "first_error": self.first_error,
            "p50_ms": self.p(50),
            "p90_ms": self.p(90),
            "p99_ms": self.p(99),
            "max_ms": max(self.values_ms, default=math.nan),
            "total_p50_ms": percentile(self.totals_ms, 50),
            "wall_s": self.wall,
            "rps": self.rps,
            "cpu_seconds": self.cpu,
            "cpu_share_pct": self.cpu_share(),
            "mean_recalled": (sum(self.recalled) / len(self.recalled)) if self.recalled else None,
        }


# -- the load runner ---------------------------------------------------------------------------


class BadStatus(Exception):
    pass


# A request function: sends request ``i`` and returns (latency or TTFB ms, total ms, recalled).
Request = Callable[[int], Awaitable[tuple[float, float, int | None]]]


@dataclass
class Target:
    name: str
    client: httpx.AsyncClient
    url: str
    params: dict[str, str]
    bodies: list[bytes]
    stream: bool

    async def send(self, i: int) -> tuple[float, float, int | None]:
        body = self.bodies[i % len(self.bodies)]
        headers = {"content-type": "application/json"}
        start = time.perf_counter()
        if not self.stream:
            response = await self.client.post(
                self.url, params=self.params, content=body, headers=headers
            )
            elapsed = (time.perf_counter() - start) * 1000.0
            if response.status_code != 200:
                raise BadStatus(f"HTTP {response.status_code}: {response.text[:300]}")
            return elapsed, elapsed, _recalled(response)
        first: float | None = None
        async with self.client.stream(
            "POST", self.url, params=self.params, content=body, headers=headers
        ) as response:
            if response.status_code != 200:
                await response.aread()
                raise BadStatus(f"HTTP {response.status_code}: {response.text[:300]}")
            async for chunk in response.aiter_raw():
                if first is None and chunk:
                    first = time.perf_counter()
        end = time.perf_counter()
        if first is None:
            raise BadStatus("empty stream")
        return (first - start) * 1000.0, (end - start) * 1000.0, _recalled(response)


def _recalled(response: httpx.Response) -> int | None:
    value = response.headers.get("x-memory-recalled")
    return int(value) if value is not None and value.isdigit() else None


async def run_load(
    target: Target, phase: Phase, *, concurrency: int, count: int, max_seconds: float, first: int
) -> None:
    """``count`` requests (at most ``max_seconds``) from ``concurrency`` workers, closed loop."""
    issued = 0
    stop_at = time.perf_counter() + max_seconds

    async def worker() -> None:
        nonlocal issued
        while issued < count and time.perf_counter() < stop_at:
            i = first + issued
            issued += 1
            try:
                value, total, recalled = await target.send(i)
            except (httpx.HTTPError, BadStatus) as exc:
                phase.errors += 1
                if not phase.first_error:
                    phase.first_error = f"{type(exc).__name__}: {exc}"[:300]
                continue
            phase.values_ms.append(value)
            phase.totals_ms.append(total)
            if recalled is not None:
                phase.recalled.append(recalled)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.wall += time.perf_counter() - start


async def queue_depth(monitor: httpx.AsyncClient) -> int:
    response = await monitor.get("/readyz")
    return int(response.json()["queue_depth"])


async def wait_drained(monitor: httpx.AsyncClient, limit_s: float) -> tuple[float, int]:
    """Poll the write queue until it is empty (at most ``limit_s``): seconds and last depth."""
    start = time.perf_counter()
    depth = await queue_depth(monitor)
    while depth > 0 and time.perf_counter() - start < limit_s:
        await asyncio.sleep(0.2)
        depth = await queue_depth(monitor)
    return time.perf_counter() - start, depth
