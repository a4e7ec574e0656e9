"""``memgate``: the command line. ``memgate serve`` runs the gateway with uvicorn;
``memgate memories``, ``import`` and ``export`` work on a running gateway over HTTP
(``gateway.cli.commands``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from gateway import __version__
from gateway.cli.client import DEFAULT_URL
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
    add_client_commands(sub)
    return parser


def _client_options(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The options every client command takes: where the gateway is, the key, the output."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=env.get("MEMGATE_URL") or DEFAULT_URL,
        help=f"the gateway's base URL (default: $MEMGATE_URL, else {DEFAULT_URL})",
    )
    common.add_argument(
        "--api-key",
        metavar="KEY",
        default=None,
        help="the gateway API key, sent as Authorization: Bearer (default: $MEMGATE_API_KEY)",
    )
    common.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for each answer (120)"
    )
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    return common


def _namespace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", "-n", required=True, metavar="NS", help="the namespace")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _page_limit(text: str) -> int:
    value = _positive(text)
    if value > 100:
        raise argparse.ArgumentTypeError("at most 100 memories a page; use --all for every one")
    return value


def add_client_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], env: Mapping[str, str] | None = None
) -> None:
    """``memories``, ``import`` and ``export``: commands against a running gateway."""
    common = _client_options(os.environ if env is None else env)
    memories = sub.add_parser(
        "memories",
        help="list, search, get, delete memories or erase a namespace on a running gateway",
        description="Inspect and manage the memories of a namespace on a running gateway.",
    )
    actions = memories.add_subparsers(dest="action", required=True)

    listing = actions.add_parser(
        "list",
        parents=[common],
        help="list memories, newest first",
        description="List "
        "memories, newest first, a page at a time (--after the last id shown) or --all.",
    )
    _namespace(listing)
    listing.add_argument("--limit", type=_page_limit, default=20, help="memories a page (1-100)")
    listing.add_argument(
        "--after", metavar="ID", default=None, help="the last id of the page before"
    )
    listing.add_argument("--all", action="store_true", help="every memory, page after page")
    listing.set_defaults(handler="list")

    search = actions.add_parser(
        "search",
        parents=[common],
        help="search memories as the chat recalls them",
        description="Search a namespace: exactly the recall the memory chat uses, best first.",
    )
    _namespace(search)
    search.add_argument("query", help="the text to search for")
    search.add_argument("--k", type=_page_limit, default=10, help="most hits (1-100, default 10)")
    search.set_defaults(handler="search")

    one = actions.add_parser("get", parents=[common], help="show one memory")
    _namespace(one)
    one.add_argument("id", help="the memory id (mem_...)")
    one.set_defaults(handler="get")

    deleting = actions.add_parser(
        "delete",
        parents=[common],
        help="delete one memory, or those of a conversation, a filter or a time range",
        description="Delete one memory by its id, or every memory of the namespace that "
        "matches all the conditions given (queued ones included): --conversation, --filter, "
        "--created-after, --created-before.",
    )
    _namespace(deleting)
    deleting.add_argument("id", nargs="?", default=None, help="the memory id (mem_...)")
    deleting.add_argument(
        "--conversation",
        metavar="ID",
        default=None,
        help="the memories of this conversation (metadata conversation_id)",
    )
    deleting.add_argument(
        "--filter",
        metavar="JSON",
        default=None,
        help='a metadata filter as for listing, e.g. \'{"source": "chatgpt"}\'',
    )
    deleting.add_argument(
        "--created-after", metavar="TIME", default=None, help="RFC 3339: created at or after it"
    )
    deleting.add_argument(
        "--created-before",
        metavar="TIME",
        default=None,
        help="RFC 3339: created strictly before it",
    )
    deleting.set_defaults(handler="delete")

    erase = actions.add_parser(
        "erase-namespace",
        parents=[common],
        help="erase every memory of a namespace",
        description="Erase every memory of a namespace, queued writes included. Asks first "
        "unless --yes.",
    )
    _namespace(erase)
    erase.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    erase.set_defaults(handler="erase-namespace")

    importing = sub.add_parser(
        "import",
        parents=[common],
        help="load history (JSONL, ChatGPT export) into a namespace",
        description='Load history into a namespace: JSONL of chat messages, of {"messages": '
        "[...]} lines or of memories (what export writes), or a ChatGPT data export (its "
        ".zip, the folder it unpacks to, or conversations.json; an export split into "
        "conversations-000.json, conversations-001.json... is read shard by shard, in order). "
        "Re-running skips what is already there; Ctrl-C stops once the memories on their way "
        "have landed (again: at once), and the same command then continues.",
    )
    _namespace(importing)
    importing.add_argument(
        "file", help="the file to import, or a ChatGPT export's .zip or unpacked folder"
    )
    importing.add_argument(
        "--batch-size",
        type=_positive,
        default=500,
        help="memories on their way to the gateway at once (at most 1000), sent as "
        "concurrent requests of up to 25",
    )
    importing.add_argument(
        "--skip-invalid",
        action="store_true",
        help="import the good records of a file with bad ones (reported as failed)",
    )
    importing.set_defaults(handler="import")

    export = sub.add_parser(
        "export",
        parents=[common],
        help="write a namespace's memories as JSONL, oldest first",
        description="Write every memory of a namespace as JSONL, oldest first, in the shape "
        "import reads back.",
    )
    _namespace(export)
    export.add_argument("-o", "--output", metavar="FILE", default=None, help="default: stdout")
    export.set_defaults(handler="export")


def settings_from_args(args: argparse.Namespace, env: dict[str, str]) -> Settings:
    overrides: dict[str, dict[str, Any]] = {
        "server": {"host": args.host, "port": args.port, "log_level": args.log_level},
        "store": {"data_dir": args.data_dir, "chroma_url": args.chroma_url},
        "upstream": {"url": args.upstream_url, "api_key": args.upstream_api_key},
    }
    return load_settings(args.config or env.get("MEMGATE_CONFIG") or None, env, overrides)


def serve(settings: Settings) -> None:
    from gateway.server import serve as run_server

    run_server(settings)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "serve":
        from gateway.cli.commands import run

        return run(args, os.environ)
    try:
        settings = settings_from_args(args, dict(os.environ))
    except ConfigError as exc:
        print(f"memgate: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        try:
            serve(settings)
        except ConfigError as exc:
            print(f"memgate: {exc}", file=sys.stderr)
            return 2
    return 0
