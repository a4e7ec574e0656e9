"""Running the gateway: logging set-up, the bind check, and uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import sys

from gateway.config import ConfigError, Settings
from gateway.telemetry import JsonFormatter

log = logging.getLogger("memgate")


def setup_logging(settings: Settings) -> None:
    """JSON lines (``server.log_format = "json"``) or plain text, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.server.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.server.log_level.upper(), handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
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


def serve(settings: Settings) -> None:
    import uvicorn

    from gateway.app import create_app

    setup_logging(settings)
    check_bind(settings)
    check_data_dir(settings)
    if not settings.keys:
        log.warning(
            "no API keys configured: anyone who can reach %s:%d may use every namespace",
            settings.server.host,
            settings.server.port,
        )
    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level.lower(),
        log_config=None,
        timeout_graceful_shutdown=int(settings.server.shutdown_flush_seconds),
        access_log=False,
    )
