"""Turning recalled memories into the one system message injected into a request; pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from memory.records import Hit

HEADER = (
    "Memories from earlier conversations with this user, most relevant first. "
    "Use them when they help answer; they may be outdated or irrelevant."
)


def memory_message(hits: Sequence[Hit]) -> dict[str, Any]:
    lines = [HEADER]
    for hit in hits:
        memory = hit.memory
        day = datetime.fromtimestamp(memory.created_at, tz=UTC).strftime("%Y-%m-%d")
        text = " ".join(memory.content.split())
        lines.append(f"- [{day}, {memory.role}] {text}")
    return {"role": "system", "content": "\n".join(lines)}


def inject(messages: Sequence[Mapping[str, Any]], hits: Sequence[Hit]) -> list[Any]:
    """The messages with one memory message inserted after the client's leading system (or
    developer) messages; every message object is passed on untouched."""
    out = list(messages)
    if not hits:
        return out
    position = 0
    while position < len(out) and out[position].get("role") in {"system", "developer"}:
        position += 1
    out.insert(position, memory_message(hits))
    return out
