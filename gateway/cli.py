"""``memgate``: the command line. ``memgate serve`` runs the gateway with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from gateway import __version__
from gateway.config import ConfigError, Settings, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memgate", description="An OpenAI-compatible chat gateway with long-term memory."
    )
    parser.add_argument("--version", action="version", version=f"memgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway. Flags override MEMGATE_* environment variables, which "
        "override the config file.",
    )
    serve.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="TOML config file (default: $MEMGATE_CONFIG, else built-in defaults)",
    )
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port to bind (default 11435)")
    serve.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help="folder for the embedded Chroma store and the write queue (default ./data)",
    )
    serve.add_argument(
        "--upstream-url",
        metavar="URL",
        default=None,
        help="OpenAI-compatible upstream base URL ending in /v1",
    )
    serve.add_argument(
        "--upstream-api-key",
        metavar="KEY",
        default=None,
        help="the upstream's API key (default: $OPENAI_API_KEY)",
    )
    serve.add_argument(
        "--chroma-url",
        metavar="URL",
        default=None,
        help="use a Chroma server at URL instead of the embedded store",
    )
    serve.add_argument("--log-level", default=None, help="debug, info, warning or error")
    return parser


def settings_from_args(args: argparse.Namespace, env: dict[str, str]) -> Settings:
    overrides: dict[str, dict[str, Any]] = {
        "server": {"host": args.host, "port": args.port, "log_level": args.log_level},
        "store": {"data_dir": args.data_dir, "chroma_url": args.chroma_url},
        "upstream": {"url": args.upstream_url, "api_key": args.upstream_api_key},
    }
    return load_settings(args.config or env.get("MEMGATE_CONFIG") or None, env, overrides)


def serve(settings: Settings) -> None:
    import uvicorn

    from gateway.app import create_app

    level = settings.server.log_level.upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level.lower(),
        timeout_graceful_shutdown=int(settings.server.shutdown_flush_seconds),
        access_log=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from_args(args, dict(os.environ))
    except ConfigError as exc:
        print(f"memgate: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
