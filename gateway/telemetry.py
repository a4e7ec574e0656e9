"""Telemetry: request ids, structured JSON logs, and Prometheus metrics.

Every request gets an id (the incoming ``x-request-id`` when it is sane, else a new one); it is
returned in ``x-request-id``, sent upstream, and stamped on every log record made while the
request is handled. ``render()`` gives the Prometheus text exposition for ``GET /metrics``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "memgate_request_id", default=None
)
_SANE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
access_log = logging.getLogger("memgate.access")

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def current_request_id() -> str | None:
    return request_id_var.get()


class Counter:
    def __init__(self, name: str, help_: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.labels = name, help_, tuple(labels)
        self._values: dict[tuple[str, ...], float] = defaultdict(float)
        self._lock = threading.Lock()

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[tuple(label_values)] += amount

    def value(self, *label_values: str) -> float:
        return self._values.get(tuple(label_values), 0.0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            items = sorted(self._values.items())
        out += [f"{self.name}{_labels(self.labels, k)} {v:g}" for k, v in items]
        return out


class Histogram:
    def __init__(self, name: str, help_: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.labels = name, help_, tuple(labels)
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = defaultdict(float)
        self._lock = threading.Lock()

    def observe(self, value: float, *label_values: str) -> None:
        key = tuple(label_values)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * (len(BUCKETS) + 1))
            for i, bound in enumerate(BUCKETS):
                if value <= bound:
                    counts[i] += 1
            counts[-1] += 1
            self._sums[key] += value

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            items = sorted((k, list(v), self._sums[k]) for k, v in self._counts.items())
        for key, counts, total in items:
            for bound, count in zip((*BUCKETS, float("inf")), counts, strict=True):
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                labels = _labels((*self.labels, "le"), (*key, le))
                out.append(f"{self.name}_bucket{labels} {count}")
            out.append(f"{self.name}_sum{_labels(self.labels, key)} {total:.6f}")
            out.append(f"{self.name}_count{_labels(self.labels, key)} {counts[-1]}")
        return out


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(
        f'{n}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for n, v in zip(names, values, strict=True)
    )
    return "{" + pairs + "}"


class Metrics:
    """The gateway's metrics; gauges are read at scrape time through ``gauges``."""

    def __init__(self) -> None:
        self.requests = Counter(
            "memgate_http_requests_total", "HTTP requests handled", ("route", "method", "status")
        )
        self.latency = Histogram(
            "memgate_http_request_duration_seconds",
            "Time from the request to the response's last byte, by route",
            ("route",),
        )
        self.recalls = Counter("memgate_recalls_total", "Memory recalls by outcome", ("outcome",))
        self.injected = Counter("memgate_memories_injected_total", "Memories injected")
        self.remembered = Counter("memgate_exchanges_remembered_total", "Exchanges queued")
        self.remember_failures = Counter(
            "memgate_remember_failures_total",
            "Exchanges answered that could not be queued (the client was told)",
        )
        self.upstream_errors = Counter(
            "memgate_upstream_errors_total",
            "Upstream answers >= 400 and failures (timeout, unreachable, cut)",
            ("upstream", "status"),
        )
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def gauge(self, name: str, help_: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_, read)

    def render(self) -> str:
        lines: list[str] = []
        for metric in (
            self.requests,
            self.latency,
            self.recalls,
            self.injected,
            self.remembered,
            self.remember_failures,
            self.upstream_errors,
        ):
            lines += metric.render()
        for name, (help_, read) in sorted(self.gauges.items()):
            try:
                value = float(read())
            except Exception:  # noqa: S112 - an unreadable gauge is left out of this scrape
                continue
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, message, request_id, and any ``extra``."""

    _STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            out["request_id"] = rid
        for key, value in vars(record).items():
            # uvicorn's color_message is the message again, with terminal escapes
            if key not in self._STANDARD and not key.startswith("_") and key != "color_message":
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def telemetry_middleware(metrics: Metrics) -> Callable[[ASGIApp], ASGIApp]:
    """Litestar middleware: request id, one access log record, and request metrics."""

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
            rid = incoming if _SANE_ID.fullmatch(incoming) else "req_" + uuid.uuid4().hex
            token = request_id_var.set(rid)
            started = time.perf_counter()
            status = 500

            async def send_wrapper(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers = [
                        (k, v) for k, v in message.get("headers", []) if k != b"x-request-id"
                    ]
                    headers.append((b"x-request-id", rid.encode()))
                    message["headers"] = headers
                await send(message)

            method = str(scope.get("method", ""))
            try:
                await app(scope, receive, send_wrapper)
            finally:
                elapsed = time.perf_counter() - started
                route = str(scope.get("path_template") or "unmatched")
                metrics.requests.inc(route, method, str(status))
                metrics.latency.observe(elapsed, route)
                access_log.info(
                    "%s %s %d",
                    method,
                    scope["path"],
                    status,
                    extra={
                        "method": method,
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )
                request_id_var.reset(token)

        return middleware

    return factory
