"""The client commands of ``memgate``: ``memories``, ``import`` and ``export``, run against a
gateway over HTTP. Tables for people by default (rich), ``--json`` for scripts; messages and
progress go to standard error, results to standard output."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gateway.client import EXIT_ERROR, EXIT_INPUT, ClientError, GatewayClient
from gateway.history import IMPORT_KEY, HistoryError, read_history
from gateway.transfer import ImportSummary, export_lines, import_records, pending


class Abort(Exception):
    """Stop the command with this message and exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Run a client command; returns the exit code. Errors are printed to standard error."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        api_key = args.api_key or env.get("MEMGATE_API_KEY") or None
        with GatewayClient(args.url, api_key=api_key, timeout=args.timeout) as client:
            return int(COMMANDS[args.handler](client, args, err))
    except ClientError as exc:
        err.print(f"[bold red]memgate:[/] {escape(str(exc))}")
        return exc.exit_code
    except Abort as exc:
        err.print(f"[bold red]memgate:[/] {escape(str(exc))}")
        return exc.exit_code


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def _date(value: str) -> str:
    """RFC 3339 as shown in tables: ``2024-05-01 12:34:56`` (UTC)."""
    return value.replace("T", " ")[:19]


def _meta(metadata: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in metadata.items())


def _memory_table(rows: list[dict[str, Any]], *, scores: bool = False) -> Table:
    """Memories as a table that stays readable in 80 columns: the id with its date and role
    under it, then the content with its metadata under it."""
    table = Table(box=box.SIMPLE_HEAD, expand=False, pad_edge=False)
    if scores:
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("Score", justify="right", no_wrap=True)
    table.add_column("ID / created (UTC) / role", no_wrap=True)
    table.add_column("Content", overflow="fold", min_width=24)
    for rank, row in enumerate(rows, 1):
        memory = (
            f"[cyan]{escape(str(row['id']))}[/]\n"
            f"[dim]{_date(str(row['created_at']))}  {escape(str(row['role']))}[/]"
        )
        content = escape(str(row["content"]))
        shown = {k: v for k, v in (row.get("metadata") or {}).items() if k != IMPORT_KEY}
        if shown:
            content += f"\n[dim]{escape(_meta(shown))}[/]"
        cells = [memory, content]
        if scores:
            cells = [str(rank), f"{float(row['score']):.3f}", *cells]
        table.add_row(*cells)
    return table


def cmd_list(client: GatewayClient, args: argparse.Namespace, err: Console) -> int:
    if args.all:
        data, has_more = list(client.iter_all(args.namespace)), False
    else:
        data, has_more = client.page(args.namespace, limit=args.limit, after=args.after)
    if args.json:
        _json({"object": "list", "data": data, "has_more": has_more})
        return 0
    if not data:
        err.print(
            f"No memories in namespace {escape(args.namespace)!r}"
            + (" after that id." if args.after else ".")
        )
        return 0
    _out().print(_memory_table(data))
    if has_more:
        err.print(
            f"More: memgate memories list --namespace {args.namespace} --after {data[-1]['id']}"
        )
    return 0


def cmd_search(client: GatewayClient, args: argparse.Namespace, err: Console) -> int:
    hits = client.search(args.namespace, args.query, k=args.k)
    if args.json:
        _json({"object": "list", "data": hits})
        return 0
    if not hits:
        err.print("No memory is close enough to recall for this query.")
        return 0
    _out().print(_memory_table(hits, scores=True))
    return 0


def cmd_get(client: GatewayClient, args: argparse.Namespace, err: Console) -> int:
    memory = client.get(args.namespace, args.id)
    if args.json:
        _json(memory)
        return 0
    table = Table(box=box.SIMPLE, show_header=False)
    table.add_column("Field", style="bold", no_wrap=True)
    table.add_column("Value", overflow="fold")
    for name in ("id", "namespace", "role", "created_at", "content"):
        table.add_row(name, escape(str(memory.get(name, ""))))
    for key, value in (memory.get("metadata") or {}).items():
        table.add_row(f"metadata.{escape(key)}", escape(json.dumps(value, ensure_ascii=False)))
    _out().print(table)
    return 0


def cmd_delete(client: GatewayClient, args: argparse.Namespace, err: Console) -> int:
    result = client.delete(args.namespace, args.id)
    if args.json:
        _json(result)
    else:
        _out().print(f"Deleted {escape(args.id)} from namespace {escape(args.namespace)}.")
    return 0


def confirm(prompt: str, stdin: TextIO) -> bool:
    if not stdin.isatty():
        line = stdin.readline()
        if not line:
            raise Abort("refusing to erase without confirmation: pass --yes", EXIT_INPUT)
    else:
        line = input(prompt)
    return line.strip().lower() in ("y", "yes")


def cmd_erase(client: GatewayClient, args: argparse.Namespace, err: Console) -> int:
    if not args.yes:
        err.print(
            f"This erases every memory of namespace {escape(args.namespace)!r} on "
            f"{escape(client.url)}, queued writes included. It cannot be undone."
        )
        err.file.flush()
        if not confirm("Erase it? [y/N] ", sys.stdin):
            err.print("Nothing erased.")
            return EXIT_ERROR
    result = client.erase(args.namespace)
    if args.json:
        _json(result)
    else:
        _out().print(
            f"Erased namespace {escape(str(result['namespace']))}: "
            f"{int(result['deleted'])} memories deleted."
        )
    return 0


def cmd_import(client: GatewayClient, args: argparse.Namespace, err: Console) -> int:
    path = Path(args.file)
    try:
        history = read_history(path)
    except HistoryError as exc:
        raise Abort(str(exc), EXIT_INPUT) from exc
    summary = ImportSummary(total=len(history.records) + len(history.problems))
    summary.ignored = history.ignored
    if history.problems:
        for line in history.describe_problems():
            err.print(f"[red]error:[/] {escape(line)}", soft_wrap=True)
        if not args.skip_invalid:
            raise Abort(
                f"{len(history.problems)} bad record(s) in {path}; nothing imported. Fix them, or "
                "pass --skip-invalid to import the rest.",
                EXIT_INPUT,
            )
        summary.failed += len(history.problems)
        summary.errors.extend(history.describe_problems(limit=len(history.problems)))
    todo, summary.skipped = pending(client, args.namespace, history.records)
    columns = (
        TextColumn("[bold]importing[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=err, transient=False, disable=not todo) as progress:
            task = progress.add_task("import", total=len(todo))
            import_records(
                client,
                args.namespace,
                todo,
                summary,
                batch_size=args.batch_size,
                advance=lambda n: progress.advance(task, n),
            )
    except ClientError as exc:
        _print_summary(summary, args, err, history.format)
        err.print("Stopped; what was sent is kept, and running the same import again resumes.")
        raise exc
    _print_summary(summary, args, err, history.format)
    return EXIT_ERROR if summary.failed else 0


def _print_summary(
    summary: ImportSummary, args: argparse.Namespace, err: Console, fmt: str
) -> None:
    if args.json:
        _json({"namespace": args.namespace, "format": fmt, **summary.as_dict()})
        return
    for line in summary.errors[len(summary.errors) - 20 if len(summary.errors) > 20 else 0 :]:
        if not line.startswith(str(args.file)):
            err.print(f"[red]failed:[/] {escape(line)}", soft_wrap=True)
    _out().print(
        f"Imported {summary.imported}, skipped {summary.skipped} (already there), "
        f"failed {summary.failed}; ignored {summary.ignored} (system or tool messages, no text) "
        f"[{fmt} into namespace {escape(args.namespace)}]"
    )


def cmd_export(client: GatewayClient, args: argparse.Namespace, err: Console) -> int:
    lines = export_lines(client, args.namespace)
    text = "".join(line + "\n" for line in lines)
    if args.output in (None, "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        out = Path(args.output)
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise Abort(f"{out}: cannot write it: {exc.strerror or exc}", EXIT_INPUT) from exc
    target = "standard output" if args.output in (None, "-") else args.output
    err.print(
        f"Exported {len(lines)} memories of namespace {escape(args.namespace)} to {escape(target)}."
    )
    return 0


COMMANDS = {
    "list": cmd_list,
    "search": cmd_search,
    "get": cmd_get,
    "delete": cmd_delete,
    "erase-namespace": cmd_erase,
    "import": cmd_import,
    "export": cmd_export,
}
