"""Telemetry: request ids, structured JSON logs, and Prometheus metrics.

Every request gets an id (the incoming ``x-request-id`` when it is sane, else a new one); it is
returned in ``x-request-id``, sent upstream, and stamped on every log record made while the
request is handled. ``render()`` gives the Prometheus text exposition for ``GET /metrics``.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec
import prometheus_client
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

# one sample a series: no *_created timestamps beside every counter
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "memgate_request_id", default=None
)
_SANE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
access_log = logging.getLogger("memgate.access")

_SERIES_CACHE = 4096  # (route, method, status) kept; routes are templates, so few
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def current_request_id() -> str | None:
    return request_id_var.get()


class Counter:
    """A labelled Prometheus counter (``prometheus_client``), incremented by label values."""

    def __init__(
        self, registry: CollectorRegistry, name: str, help_: str, labels: Sequence[str] = ()
    ) -> None:
        self._counter = prometheus_client.Counter(name, help_, labels, registry=registry)
        self._labelled = bool(labels)

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        if self._labelled:
            self._counter.labels(*label_values).inc(amount)
        else:
            self._counter.inc(amount)

    def child(self, *label_values: str) -> Any:
        """The series of these label values (increment it with ``inc()``)."""
        return self._counter.labels(*label_values) if self._labelled else self._counter

    def value(self, *label_values: str) -> float:
        child = self._counter.labels(*label_values) if self._labelled else self._counter
        return float(child._value.get())


class _Readings(Collector):
    """Values read at scrape time (queue depth, readiness, the writer's running total)."""

    def __init__(self) -> None:
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.counters: dict[str, tuple[str, Callable[[], float]]] = {}

    def collect(self) -> Iterator[Metric]:
        for name, (help_, read) in sorted(self.gauges.items()):
            value = _read(read)
            if value is not None:
                yield GaugeMetricFamily(name, help_, value=value)
        for name, (help_, read) in sorted(self.counters.items()):
            value = _read(read)
            if value is not None:
                yield CounterMetricFamily(name, help_, value=value)


def _read(read: Callable[[], float]) -> float | None:
    try:
        return float(read())
    except Exception:  # an unreadable value is left out of this scrape
        return None


class Metrics:
    """The gateway's metrics, in a registry of its own (so that several apps in one process,
    as in the tests, do not share them), with the process and GC collectors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        prometheus_client.GCCollector(registry=self.registry)
        self._readings = _Readings()
        self.registry.register(self._readings)
        r = self.registry
        self.requests = Counter(
            r, "memgate_http_requests", "HTTP requests handled", ("route", "method", "status")
        )
        self.latency = prometheus_client.Histogram(
            "memgate_http_request_duration_seconds",
            "Time from the request to the response's last byte, by route",
            ("route",),
            buckets=BUCKETS,
            registry=r,
        )
        self.recalls = Counter(r, "memgate_recalls", "Memory recalls by outcome", ("outcome",))
        self.injected = Counter(r, "memgate_memories_injected", "Memories injected")
        self.remembered = Counter(r, "memgate_exchanges_remembered", "Exchanges queued")
        self.remember_failures = Counter(
            r,
            "memgate_remember_failures",
            "Exchanges answered that could not be queued (the client was told)",
        )
        self.upstream_errors = Counter(
            r,
            "memgate_upstream_errors",
            "Upstream answers >= 400 and failures (timeout, unreachable, cut), every attempt",
            ("upstream", "status"),
        )
        self.upstream_retries = Counter(
            r,
            "memgate_upstream_retries",
            "Requests sent to an upstream again, by why (connect, timeout, or the status)",
            ("upstream", "reason"),
        )
        self.upstream_fallbacks = Counter(
            r,
            "memgate_upstream_fallbacks",
            "Requests sent to a fallback upstream after their upstream failed",
            ("upstream", "fallback"),
        )
        # Series by key, in a registry of their own: shown to admin keys only when
        # auth.protect_operations puts /metrics behind keys (``render``).
        self.per_key = CollectorRegistry(auto_describe=True)
        self.tokens = Counter(
            self.per_key,
            "memgate_tokens",
            "Tokens the upstreams reported (usage), by key, model and kind (prompt, completion)",
            ("key", "model", "kind"),
        )

    def gauge(self, name: str, help_: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time."""
        self._readings.gauges[name] = (help_, read)

    def counter_function(self, name: str, help_: str, read: Callable[[], float]) -> None:
        """A counter whose running total is read at scrape time (``name`` without _total)."""
        self._readings.counters[name] = (help_, read)

    def render(self, *, per_key: bool = True) -> bytes:
        text = prometheus_client.generate_latest(self.registry)
        if per_key:
            text += prometheus_client.generate_latest(self.per_key)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, message, request_id, and any ``extra``
    (values JSON cannot hold are written as their ``str``)."""

    _STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}
    _encode = msgspec.json.Encoder(enc_hook=str).encode

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")  # the last second formatted, and its text

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            cached = self._second = (second, stamp)
        out: dict[str, Any] = {
            "ts": f"{cached[1]}.{int(record.msecs):03d}Z",
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
        return self._encode(out).decode()


def telemetry_middleware(metrics: Metrics) -> Callable[[ASGIApp], ASGIApp]:
    """Litestar middleware: request id, one access log record, and request metrics."""

    # the metric children of each (route, method, status) seen
    children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            incoming = ""
            for key, value in scope["headers"]:
                if key == b"x-request-id":
                    incoming = value.decode("latin-1")
                    break
            rid = incoming if _SANE_ID.fullmatch(incoming) else "req_" + os.urandom(16).hex()
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
                series = children.get((route, method, status))
                if series is None:  # prometheus_client's labels() takes a lock and checks
                    if len(children) >= _SERIES_CACHE:
                        children.clear()
                    series = children[(route, method, status)] = (
                        metrics.requests.child(route, method, str(status)),
                        metrics.latency.labels(route),
                    )
                series[0].inc()
                series[1].observe(elapsed)
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
