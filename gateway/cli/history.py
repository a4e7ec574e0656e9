"""History files: what ``memgate import`` reads and ``memgate export`` writes.

Read:
- JSONL, one object a line, each either a chat message ``{"role", "content", "created_at"?}``
  (user and assistant text is kept; system, developer and tool messages are ignored), an
  OpenAI-style ``{"messages": [...], "created_at"?}`` line, or a memory in the memory API's shape
  ``{"content", "role"?, "metadata"?, "created_at"?}`` (what export writes). Other keys
  (``id``, ``namespace``, ``name``...) are ignored.
- A JSON array of the same objects.
- A ChatGPT data export: the export's ``.zip``, the folder it unpacks to, or one of its
  conversation files. The conversations are in ``conversations.json`` or, in newer exports,
  split into shards ``conversations-000.json``, ``conversations-001.json``... (at the top or
  in a subfolder); ``sources`` finds them and they are read one at a time, in that order
  (``conversations.json`` first, then the shards by number). A conversation whose id an
  earlier file already held is read once. Each conversation's thread is the path from
  ``current_node`` up to the root, read root first; user and assistant text parts are kept
  with their ``create_time`` and the metadata
  ``{"source": "chatgpt", "conversation": title, "conversation_id": id}``.

Every record gets an import key: a hash of its content, role, created_at and metadata, with
``#2``, ``#3``... for repeats of the same record in the file (across all the files of an
export, in reading order: ``Keys``). ``import`` stores it in the
memory's metadata (``import_key``) and skips records whose key the namespace already holds, so
a re-run resumes; ``export`` leaves it out, so an export reads back unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memory.recall import content_text
from memory.records import (
    MAX_CONTENT,
    Metadata,
    created_problem,
    from_rfc3339,
    metadata_problem,
    micros_later,
    role_problem,
    to_rfc3339,
)

IMPORT_KEY = "import_key"
IGNORED_ROLES = frozenset({"system", "developer", "tool", "function"})
CHAT_ROLES = ("user", "assistant")


@dataclass(frozen=True)
class Record:
    """One memory to import, in the memory API's shape, and where it came from."""

    content: str
    role: str
    metadata: Metadata
    created_at: str | None
    where: str

    def body(self, key: str) -> dict[str, Any]:
        """The memory as the add endpoint takes it, carrying its import key."""
        out: dict[str, Any] = {
            "content": self.content,
            "role": self.role,
            "metadata": {**self.metadata, IMPORT_KEY: key},
        }
        if self.created_at is not None:
            out["created_at"] = self.created_at
        return out


@dataclass
class History:
    """What a file holds: records to import, problems found, and items ignored."""

    path: Path
    format: str
    records: list[Record] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    ignored: int = 0
    repeated: int = 0  # ChatGPT conversations skipped: an earlier file held them already

    def problem(self, where: str, reason: str) -> None:
        self.problems.append((where, reason))

    def describe_problems(self, limit: int = 20) -> list[str]:
        shown = [f"{self.path}: {where}: {reason}" for where, reason in self.problems[:limit]]
        if len(self.problems) > limit:
            shown.append(f"{self.path}: ... and {len(self.problems) - limit} more problems")
        return shown


class HistoryError(Exception):
    """The file cannot be read at all (missing, not text, not JSON, unknown shape)."""


SHARD = re.compile(r"conversations(?:-(\d+))?\.json")


@dataclass(frozen=True)
class Source:
    """One file to read: a file on disk, or a member of a zip (``archive``)."""

    path: Path  # as shown in messages: the file, or the zip's path joined with the member's
    archive: Path | None = None
    member: str = ""

    def read(self) -> bytes:
        try:
            if self.archive is None:
                return self.path.read_bytes()
            with zipfile.ZipFile(self.archive) as archive:
                return archive.read(self.member)
        except zipfile.BadZipFile as exc:
            raise HistoryError(f"{self.archive}: not a valid zip file: {exc}") from exc
        except IsADirectoryError as exc:
            raise HistoryError(f"{self.path}: is a folder, not a file") from exc
        except FileNotFoundError as exc:
            raise HistoryError(f"{self.path}: no such file") from exc
        except (OSError, KeyError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise HistoryError(f"{self.path}: cannot read it: {reason}") from exc


def conversation_files(names: Iterable[str]) -> list[str]:
    """The ChatGPT conversation files among ``names`` (paths with ``/``), in reading order:
    folder by folder, ``conversations.json`` first, then ``conversations-NNN.json`` by number."""
    found: list[tuple[str, int, str]] = []
    for name in names:
        folder, _, base = name.rpartition("/")
        if match := SHARD.fullmatch(base):
            found.append((folder, -1 if match[1] is None else int(match[1]), name))
    return [name for *_, name in sorted(found)]


_NO_CONVERSATIONS = (
    "no conversations.json or conversations-NNN.json in this {} (is it a ChatGPT data export?)"
)


def sources(path: Path) -> list[Source]:
    """What ``path`` holds to import, in reading order: the file itself; or, for a ChatGPT data
    export (its ``.zip``, or the folder it unpacks to), its conversation files."""
    if path.suffix.lower() == ".zip" and not path.is_dir():
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as exc:
            raise HistoryError(f"{path}: not a valid zip file: {exc}") from exc
        except FileNotFoundError as exc:
            raise HistoryError(f"{path}: no such file") from exc
        except OSError as exc:
            raise HistoryError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
        members = conversation_files(names)
        if not members:
            raise HistoryError(f"{path}: {_NO_CONVERSATIONS.format('zip')}")
        return [Source(path / member, path, member) for member in members]
    if path.is_dir():
        try:
            names = [p.relative_to(path).as_posix() for p in path.rglob("conversations*.json")]
        except OSError as exc:
            raise HistoryError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
        files = conversation_files(names)
        if not files:
            raise HistoryError(
                f"{path}: is a folder without conversations.json or conversations-NNN.json (an "
                "unpacked ChatGPT data export has them); to import another file, name the file"
            )
        return [Source(path / name) for name in files]
    return [Source(path)]


class Reader:
    """Reads the sources of one import, one at a time, remembering across them the ChatGPT
    conversations already read (an export may hold one in more than one file)."""

    def __init__(self) -> None:
        self.conversations: set[str] = set()

    def read(self, source: Source) -> History:
        return parse_history(source.path, source.read(), self.conversations)


def read_histories(path: Path) -> Iterator[History]:
    """The histories of ``path``'s sources (``sources``), read and parsed one at a time, so
    that an export split into shards never needs more memory than its largest shard."""
    reader = Reader()
    for source in sources(path):
        yield reader.read(source)


def read_history(path: Path) -> History:
    """Read a history file of any supported format, or every file of a ChatGPT export, into
    one ``History``; problems with single records are collected in ``History.problems`` (with
    their line or position, and the file of the export they are in), not raised."""
    parts = list(read_histories(path))
    if len(parts) == 1:
        return parts[0]
    formats = {part.format for part in parts}
    merged = History(path, "chatgpt" if "chatgpt" in formats else parts[0].format)
    for part in parts:
        merged.records.extend(part.records)
        merged.problems.extend((f"{part.path.name}, {w}", r) for w, r in part.problems)
        merged.ignored += part.ignored
        merged.repeated += part.repeated
    return merged


def parse_history(path: Path, raw: bytes, conversations: set[str] | None = None) -> History:
    """Parse one file's bytes. ``conversations``: the ids of ChatGPT conversations read
    already (skipped, then counted in ``History.repeated``); the ones read here are added."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise HistoryError(f"{path}: line {line}: not UTF-8 text ({exc.reason})") from exc
    if text.lstrip().startswith("["):
        return _parse_json_array(path, text, set() if conversations is None else conversations)
    return _parse_jsonl(path, text)


def _parse_json_array(path: Path, text: str, conversations: set[str]) -> History:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HistoryError(
            f"{path}: line {exc.lineno} column {exc.colno}: not valid JSON: {exc.msg}"
        ) from exc
    except RecursionError as exc:
        raise HistoryError(f"{path}: not valid JSON: {TOO_DEEP}") from exc
    if not isinstance(data, list):
        raise HistoryError(f"{path}: expected a JSON array or JSON lines")
    if data and all(isinstance(c, dict) and "mapping" in c for c in data):
        history = History(path, "chatgpt")
        for index, conversation in enumerate(data, 1):
            conversation_id = conversation.get("conversation_id") or conversation.get("id")
            if isinstance(conversation_id, str) and conversation_id:
                if conversation_id in conversations:
                    history.repeated += 1
                    continue
                conversations.add(conversation_id)
            _read_conversation(history, index, conversation)
        return history
    history = History(path, "json")
    for index, item in enumerate(data, 1):
        _read_item(history, f"item {index}", item)
    return history


TOO_DEEP = "nested too deeply"


def _parse_jsonl(path: Path, text: str) -> History:
    history = History(path, "jsonl")
    # Lines end at "\n" (or "\r\n") only: not at the other breaks ``str.splitlines`` knows
    # (U+2028, U+2029, U+0085, \x1c-\x1e), which a memory's text may hold.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            history.problem(f"line {number}", f"not valid JSON: {exc.msg} (column {exc.colno})")
            continue
        except RecursionError:
            history.problem(f"line {number}", f"not valid JSON: {TOO_DEEP}")
            continue
        _read_item(history, f"line {number}", item)
    if not history.records and not history.problems and not history.ignored:
        raise HistoryError(f"{path}: the file is empty")
    return history


def _read_item(history: History, where: str, item: Any) -> None:
    if not isinstance(item, dict):
        history.problem(where, f"expected a JSON object, got {_kind(item)}")
        return
    if "messages" in item:
        messages = item["messages"]
        if not isinstance(messages, list):
            history.problem(where, f'"messages" must be a list, got {_kind(messages)}')
            return
        base: float | None = None
        if item.get("created_at") is not None:
            try:
                base = from_rfc3339(normalize_time(item["created_at"]))
            except ValueError as exc:
                history.problem(where, str(exc))
                return
        for index, message in enumerate(messages, 1):
            inner = f"{where}, message {index}"
            if not isinstance(message, dict):
                history.problem(inner, f"expected a JSON object, got {_kind(message)}")
                continue
            if base is not None and message.get("created_at") is None:
                # The line's time, a microsecond apart a message, so that they keep their order.
                stamp = to_rfc3339(micros_later(base, index - 1))
                message = {**message, "created_at": stamp}  # noqa: PLW2901
            _read_record(history, inner, message)
        return
    if "content" not in item:
        history.problem(
            where,
            'not a message {"role", "content"}, a memory {"content", ...} or a '
            '{"messages": [...]} line: no "content"',
        )
        return
    _read_record(history, where, item)


def _read_record(history: History, where: str, item: Mapping[str, Any]) -> None:
    role = item.get("role", "user")
    if isinstance(role, str) and role in IGNORED_ROLES:
        history.ignored += 1
        return
    if problem := role_problem(role):
        history.problem(where, problem)
        return
    content = item.get("content")
    if content is None:  # e.g. an assistant message that only calls tools
        history.ignored += 1
        return
    text = content_text(content) if isinstance(content, str | list) else None
    if text is None:
        history.problem(
            where, f'"content" must be a string or a list of parts, got {_kind(content)}'
        )
        return
    if not text.strip():
        history.ignored += 1
        return
    if len(text) > MAX_CONTENT:
        history.problem(
            where, f"content is {len(text):,} characters long; the most is {MAX_CONTENT:,}"
        )
        return
    metadata = item.get("metadata", {})
    problem = metadata_problem(metadata)
    if problem:
        history.problem(where, problem)
        return
    created = item.get("created_at")
    created_at: str | None = None
    if created is not None:
        try:
            created_at = normalize_time(created)
        except ValueError as exc:
            history.problem(where, str(exc))
            return
    clean = {k: v for k, v in dict(metadata).items() if k != IMPORT_KEY}
    history.records.append(Record(text, role, clean, created_at, where))


def normalize_time(value: Any) -> str:
    """An RFC 3339 string or epoch seconds as the gateway's RFC 3339 form (UTC, microseconds)."""
    if isinstance(value, bool):
        raise ValueError(f"created_at {value!r} is not an RFC 3339 timestamp")
    if isinstance(value, int | float):
        if not math.isfinite(value) or created_problem(float(value)):
            raise ValueError(f"created_at {value!r} is not a plausible time in epoch seconds")
        return to_rfc3339(float(value))
    if isinstance(value, str):
        try:
            seconds = from_rfc3339(value)
        except (ValueError, OverflowError, OSError) as exc:
            raise ValueError(
                f"created_at {value!r} is not an RFC 3339 timestamp (like 2024-05-01T12:00:00Z)"
            ) from exc
        if problem := created_problem(seconds):
            raise ValueError(f"created_at {value!r}: {problem}")
        return to_rfc3339(seconds)
    raise ValueError(f"created_at must be an RFC 3339 string or epoch seconds, got {_kind(value)}")


# ChatGPT data export


def _read_conversation(history: History, index: int, conversation: dict[str, Any]) -> None:
    title = conversation.get("title")
    title = title if isinstance(title, str) and title.strip() else "Untitled"
    where = f"conversation {index} ({title!r})"
    mapping = conversation.get("mapping")
    if not isinstance(mapping, dict):
        history.problem(where, f'"mapping" must be an object, got {_kind(mapping)}')
        return
    conversation_id = conversation.get("conversation_id") or conversation.get("id")
    fallback_time = conversation.get("create_time")
    for node_id in thread(mapping, conversation.get("current_node")):
        node = mapping.get(node_id)
        message = node.get("message") if isinstance(node, dict) else None
        if not isinstance(message, dict):
            continue
        author = message.get("author")
        role = author.get("role") if isinstance(author, dict) else None
        content = message.get("content")
        meta = message.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        if (
            role not in CHAT_ROLES
            or not isinstance(content, dict)
            or content.get("content_type") not in ("text", "multimodal_text")
            or meta.get("is_visually_hidden_from_conversation")
        ):
            history.ignored += 1
            continue
        parts = content.get("parts")
        texts = (
            [p for p in parts if isinstance(p, str) and p.strip()]
            if isinstance(parts, list)
            else []
        )
        if not texts:
            history.ignored += 1
            continue
        metadata: Metadata = {"source": "chatgpt", "conversation": title}
        if isinstance(conversation_id, str) and conversation_id:
            metadata["conversation_id"] = conversation_id
        model = meta.get("model_slug")
        if role == "assistant" and isinstance(model, str) and model:
            metadata["model"] = model
        stamp = message.get("create_time") or fallback_time
        item: dict[str, Any] = {"role": role, "content": "\n".join(texts), "metadata": metadata}
        if isinstance(stamp, int | float) and not isinstance(stamp, bool):
            item["created_at"] = stamp
        _read_record(history, f"{where}, message {node_id}", item)


def thread(mapping: Mapping[str, Any], current: Any) -> list[str]:
    """The node ids from the root to ``current`` (the branch the user last saw). Without a
    usable ``current_node``, the newest leaf's branch."""
    if not isinstance(current, str) or current not in mapping:
        current = _newest_leaf(mapping)
    path: list[str] = []
    seen: set[str] = set()
    node: Any = current
    while isinstance(node, str) and node in mapping and node not in seen:
        seen.add(node)
        path.append(node)
        entry = mapping[node]
        node = entry.get("parent") if isinstance(entry, dict) else None
    path.reverse()
    return path


def _newest_leaf(mapping: Mapping[str, Any]) -> str | None:
    def stamp(node_id: str) -> float:
        entry = mapping[node_id]
        message = entry.get("message") if isinstance(entry, dict) else None
        value = message.get("create_time") if isinstance(message, dict) else None
        return float(value) if isinstance(value, int | float) else 0.0

    leaves = [
        node_id
        for node_id, entry in mapping.items()
        if isinstance(entry, dict) and not entry.get("children")
    ]
    return max(leaves, key=stamp) if leaves else None


# Import keys and the export format


def record_hash(
    content: str, role: str, created_at: str | None, metadata: Mapping[str, Any]
) -> str:
    """A stable hash of what a memory holds (its import key before de-duplication)."""
    canonical = json.dumps(
        {
            "content": content,
            "role": role,
            "created_at": created_at,
            "metadata": {k: v for k, v in metadata.items() if k != IMPORT_KEY},
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def with_repeats(hashes: Iterable[str]) -> Iterator[str]:
    """Each hash as a key; the n-th repeat of a hash gets ``#n`` (n from 2)."""
    seen: Counter[str] = Counter()
    for value in hashes:
        seen[value] += 1
        yield value if seen[value] == 1 else f"{value}#{seen[value]}"


class Keys:
    """Import keys for records that come in parts (the files of an export, in order): a
    repeat gets ``#n`` whether its first occurrence was in this part or an earlier one, so the
    keys are those of one file holding every part."""

    def __init__(self) -> None:
        self._seen: Counter[str] = Counter()

    def __call__(self, records: Iterable[Record]) -> list[tuple[str, Record]]:
        out = []
        for record in records:
            value = record_hash(record.content, record.role, record.created_at, record.metadata)
            self._seen[value] += 1
            n = self._seen[value]
            out.append((value if n == 1 else f"{value}#{n}", record))
        return out


def keyed(records: Iterable[Record]) -> list[tuple[str, Record]]:
    return Keys()(records)


def existing_keys(memories_oldest_first: Iterable[Mapping[str, Any]]) -> set[str]:
    """The keys a namespace already holds: each memory's stored ``import_key``, and the key
    its own content would get (so an export of memories made by chat re-imports as skipped)."""
    items = list(memories_oldest_first)
    keys = {
        str(m["metadata"][IMPORT_KEY])
        for m in items
        if isinstance(m.get("metadata"), dict) and IMPORT_KEY in m["metadata"]
    }
    hashes = (
        record_hash(m["content"], m["role"], m["created_at"], m.get("metadata") or {})
        for m in items
    )
    keys.update(with_repeats(hashes))
    return keys


def export_line(memory: Mapping[str, Any]) -> str:
    """One memory as an export line: the add endpoint's shape, without the import key, with
    metadata keys sorted (the store does not keep their order)."""
    metadata = {k: v for k, v in sorted((memory.get("metadata") or {}).items()) if k != IMPORT_KEY}
    return json.dumps(
        {
            "content": memory["content"],
            "role": memory["role"],
            "created_at": memory["created_at"],
            "metadata": metadata,
        },
        ensure_ascii=False,
    ).translate(_LINE_BREAKS)


# Characters that JSON leaves as they are inside strings but that many line readers (Python's
# ``str.splitlines`` among them) take for line breaks: escaped in export lines, so that each
# memory stays on one line for whatever reads the file.
_LINE_BREAKS = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\u0085\u2028\u2029"})


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)
