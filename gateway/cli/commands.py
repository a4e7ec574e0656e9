"""The client commands of ``memgate``: ``memories``, ``import`` and ``export``, run against a
gateway over HTTP. Tables for people by default (rich), ``--json`` for scripts; messages and
progress go to standard error, results to standard output."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from gateway.cli.client import EXIT_ERROR, EXIT_INPUT, ClientError, GatewayClient
from gateway.cli.history import IMPORT_KEY, HistoryError, Keys, Reader, Source, sources
from gateway.cli.transfer import Importer, ImportSummary, export_lines, present_keys

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C


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
    except KeyboardInterrupt:
        err.print("[bold red]memgate:[/] interrupted")
        return EXIT_INTERRUPTED


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
    conditions = {
        param: value
        for param, value in (
            ("conversation_id", args.conversation),
            ("filter", args.filter),
            ("created_after", args.created_after),
            ("created_before", args.created_before),
        )
        if value is not None
    }
    if (args.id is None) == (not conditions):
        raise Abort(
            "give a memory id, or conditions (--conversation, --filter, --created-after, "
            "--created-before), not both; to erase a whole namespace: memgate memories "
            "erase-namespace",
            EXIT_INPUT,
        )
    if args.id is None:
        result = client.delete_where(args.namespace, conditions)
        if args.json:
            _json(result)
        else:
            shown = ", ".join(f"{k} {v}" for k, v in conditions.items())
            _out().print(
                f"Deleted {int(result['deleted'])} memories of namespace "
                f"{escape(args.namespace)} ({escape(shown)})."
            )
        return 0
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


class Interrupts:
    """Ctrl-C while an import sends: counted instead of raised, so that the first one stops
    the sending once the requests on their way have been answered (nothing left half-sent),
    and a second one quits at once. Outside the ``with``, Ctrl-C raises as usual."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


@dataclass
class Checked:
    """What reading every file of an import once found."""

    format: str
    records: int  # good ones
    ignored: int
    repeated: int
    problems: list[str]


def _check(found: list[Source], args: argparse.Namespace, err: Console) -> Checked:
    """Read every file once, one at a time, to count its records and find bad ones. Raises
    ``Abort`` if some are bad (unless ``--skip-invalid``)."""
    reader = Reader()
    formats: list[str] = []
    records = ignored = repeated = 0
    problems: list[str] = []
    for source in found:
        history = reader.read(source)
        formats.append(history.format)
        records += len(history.records)
        ignored += history.ignored
        repeated += history.repeated
        problems.extend(history.describe_problems(limit=len(history.problems)))
    if problems:
        for line in problems[:20]:
            err.print(f"[red]error:[/] {escape(line)}", soft_wrap=True)
        if len(problems) > 20:
            err.print(f"[red]error:[/] ... and {len(problems) - 20} more problems")
        if not args.skip_invalid:
            raise Abort(
                f"{len(problems)} bad record(s) in {args.file}; nothing imported. Fix them, or "
                "pass --skip-invalid to import the rest.",
                EXIT_INPUT,
            )
    fmt = "chatgpt" if "chatgpt" in formats else formats[0]
    return Checked(fmt, records, ignored, repeated, problems)


def cmd_import(client: GatewayClient, args: argparse.Namespace, err: Console) -> int:
    """Import a file, or every conversation file of a ChatGPT export, one file at a time:
    first read them all to find bad records (nothing is sent if there are any, unless
    ``--skip-invalid``), then list what the namespace holds, then read them again and send what
    it does not hold yet."""
    summary = ImportSummary()
    try:
        found = sources(Path(args.file))
        checked = _check(found, args, err)
        summary.total = checked.records + len(checked.problems)
        summary.ignored, summary.repeated = checked.ignored, checked.repeated
        summary.failed += len(checked.problems)
        summary.errors.extend(checked.problems)
        present = present_keys(client, args.namespace)
        return _send_all(
            client, args, err, found=found, present=present, summary=summary, checked=checked
        )
    except HistoryError as exc:
        raise Abort(str(exc), EXIT_INPUT) from exc
    except KeyboardInterrupt:  # before anything was sent
        _interrupted(err, summary, in_flight=0)
        return EXIT_INTERRUPTED


def _send_all(
    client: GatewayClient,
    args: argparse.Namespace,
    err: Console,
    *,
    found: list[Source],
    present: set[str],
    summary: ImportSummary,
    checked: Checked,
) -> int:
    records, fmt = checked.records, checked.format
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    keys, reader = Keys(), Reader()
    with (
        Progress(*columns, console=err, transient=False, disable=not records) as progress,
        Interrupts() as interrupts,
    ):
        task = progress.add_task("[bold]importing[/]", total=records)
        with Importer(
            client,
            args.namespace,
            summary,
            batch_size=args.batch_size,
            landed=lambda n: _moved(progress, task, n),
        ) as importer:
            try:
                for source in found:
                    keyed = keys(reader.read(source).records)
                    todo = [(key, record) for key, record in keyed if key not in present]
                    summary.skipped += len(keyed) - len(todo)
                    progress.advance(task, len(keyed) - len(todo))
                    if not importer.send(todo, stop=lambda: interrupts.count > 0):
                        break
                importer.wait(stop=lambda: interrupts.count > 0)
                if interrupts.count:
                    progress.update(
                        task,
                        description="[bold]stopping[/] once what is on its way has landed "
                        "(Ctrl-C again to quit now)",
                    )
                    importer.wait(stop=lambda: interrupts.count > 1)
            except ClientError:
                progress.stop()
                _print_summary(summary, args, err, fmt)
                err.print(
                    "Stopped; what was sent is kept, and running the same import again resumes."
                )
                raise
    if interrupts.count:
        _interrupted(err, summary, in_flight=importer.in_flight)
        return EXIT_INTERRUPTED
    _print_summary(summary, args, err, fmt)
    return EXIT_ERROR if summary.failed else 0


def _moved(progress: Progress, task: TaskID, n: int) -> None:
    """A request landed: the line shows it now, not at the next timed refresh (a fast gateway
    lands a whole batch between two of those)."""
    progress.advance(task, n)
    progress.refresh()


def _interrupted(err: Console, summary: ImportSummary, *, in_flight: int) -> None:
    """The one line printed when Ctrl-C stopped an import."""
    of = f" of {summary.total:,}" if summary.total else ""
    done = f"imported {summary.imported:,}{of} records so far" + (
        f" ({summary.skipped:,} were there already)" if summary.skipped else ""
    )
    if in_flight:
        rest = (
            f"{in_flight:,} more were on their way and the gateway may still store them: "
            "running the same command again skips what is there by then, so wait for those to "
            "land first or they may be imported twice"
        )
    else:
        rest = (
            "running the same command again imports the rest: what is there already is "
            "skipped, so nothing is imported twice"
        )
    err.print(f"[bold red]memgate:[/] interrupted: {done}; {rest}.", soft_wrap=True)


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
        f"failed {summary.failed}; ignored {summary.ignored} (system or tool messages, no text)"
        + (
            f"; {summary.repeated} conversation(s) in more than one file of the export, read once"
            if summary.repeated
            else ""
        )
        + f" [{fmt} into namespace {escape(args.namespace)}]"
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
