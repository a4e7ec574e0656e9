"""The records the memory layer stores and returns."""

from __future__ import annotations

import math
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
from numpy.typing import NDArray

Vectors = NDArray[np.float32]  # rows of vectors, each L2-normalised

MetadataValue = str | int | float | bool
Metadata = dict[str, MetadataValue]

# What a memory may hold: checked where memories come in (the memory API, chat, import), so
# that every part of the system can store, render and send back whatever was accepted.
MAX_CONTENT = 100_000  # characters of a memory's text (longer chat turns are cut, marked)
ROLE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")  # a word: no spaces, newlines or brackets
MAX_META_KEYS = 64
MAX_META_TEXT = 4096  # characters of a metadata string value
MAX_SAFE_INT = 2**53  # integers JSON readers (and Chroma's float path) keep exactly
MIN_CREATED = datetime(1, 1, 2, tzinfo=UTC).timestamp()  # a day inside datetime's range,
MAX_CREATED = datetime(9999, 12, 30, tzinfo=UTC).timestamp()  # whatever the time zone


class Memory(msgspec.Struct, frozen=True, kw_only=True):
    """One remembered piece of text in one namespace.

    ``created_at`` is seconds since the epoch (UTC); ``role`` is the chat role the text came
    from (``user``, ``assistant``) or a free-form kind (``fact``, ``note``) for memories added
    directly.
    """

    id: str
    namespace: str
    content: str
    role: str = "user"
    created_at: float = 0.0
    metadata: Metadata = msgspec.field(default_factory=dict)


class Hit(msgspec.Struct, frozen=True):
    """A memory found by a search. ``score`` orders hits (higher is better): the cosine
    similarity for a dense-only search, else the fused rank score of dense and lexical
    retrieval. ``similarity`` is the cosine similarity to the query, ``lexical`` whether the
    lexical index matched it."""

    memory: Memory
    score: float
    similarity: float | None = None
    lexical: bool = False

    @property
    def cosine(self) -> float:
        return self.score if self.similarity is None else self.similarity


class Exchange(msgspec.Struct, frozen=True, kw_only=True):
    """One completed chat turn: the user's new message and the assistant's reply."""

    namespace: str
    user: str
    assistant: str
    model: str = ""
    created_at: float = 0.0
    metadata: Metadata = msgspec.field(default_factory=dict)

    def memories(self) -> list[Memory]:
        """The memories this exchange is stored as: the user turn, then the reply."""
        meta: Metadata = {"source": "chat", **self.metadata}
        if self.model:
            meta["model"] = self.model
        out: list[Memory] = []
        for offset, (role, text) in enumerate((("user", self.user), ("assistant", self.assistant))):
            text = cut(text)  # noqa: PLW2901 - a turn longer than a memory may be is cut
            if text.strip():
                # The reply is stamped a millisecond later, so that ordering by time (and an
                # RFC 3339 timestamp with microseconds) keeps the pair in order.
                out.append(
                    Memory(
                        id=new_id(self.created_at + offset * 1e-3),
                        namespace=self.namespace,
                        content=text,
                        role=role,
                        created_at=self.created_at + offset * 1e-3,
                        metadata=dict(meta),
                    )
                )
        return out


# Memory ids carry their creation time: ``mem_``, 16 hex digits of microseconds since
# 0001-01-01 (UTC), then 16 random hex digits whose first is 0-7. So a page cursor (the last
# id of the previous page) still says where the page ended after that memory is deleted, on
# any gateway. Ids made before (``mem_`` and a uuid4's 32 hex digits, whose 17th digit is 8-b)
# carry no time.
_EPOCH_US = 62_135_596_800_000_000  # microseconds from 0001-01-01 to 1970-01-01
_ID_HEX = 32


def micros(created_at: float) -> int:
    """``created_at`` (seconds since the epoch) in whole microseconds: the listing order."""
    return round(created_at * 1_000_000)


def micros_later(created_at: float, steps: int) -> float:
    """``created_at`` plus ``steps`` whole microseconds, exactly: ``created_at + steps * 1e-6``
    in float seconds can land two consecutive steps on the same microsecond (about 4% of
    pairs), and memories of one time are then listed in the order of their ids' random part."""
    return (micros(created_at) + steps) / 1_000_000


# Roles a memory may not have: the instructions' own. A memory is quoted data in the injected
# message; it must not even claim to be an instruction (import drops such messages too).
RESERVED_ROLES = frozenset({"system", "developer"})


def role_problem(role: Any) -> str | None:
    """Why ``role`` cannot be a memory's role, or None."""
    if not isinstance(role, str) or not ROLE.fullmatch(role):
        return (
            f"role {role!r} is not allowed: 1-64 letters, digits, '_' or '-', starting with a "
            "letter (user, assistant, fact, ...)"
        )
    if role.lower() in RESERVED_ROLES:
        return (
            f"role {role!r} is not allowed for a memory: memories are quoted data, never "
            "instructions (use user, assistant, fact, note, ...)"
        )
    return None


def metadata_problem(metadata: Any) -> str | None:
    """Why ``metadata`` cannot be a memory's metadata, or None: flat, at most 64 keys of 1-128
    characters not starting with # or $, values strings (<= 4,096 characters), booleans,
    finite numbers, integers within +-2**53."""
    if not isinstance(metadata, dict):
        return f"metadata must be an object, got {type(metadata).__name__}"
    if len(metadata) > MAX_META_KEYS:
        return f"metadata has {len(metadata)} keys; the most is {MAX_META_KEYS}"
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or len(key) > 128 or key[0] in "#$":
            return (
                f"metadata key {key!r} is not allowed: 1-128 characters, not starting with # or $"
            )
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            if abs(value) > MAX_SAFE_INT:
                return (
                    f"metadata {key!r}: {value} is beyond +-2**53, which JSON readers and the "
                    "store cannot keep exactly: send it as a string"
                )
        elif isinstance(value, float):
            if not math.isfinite(value):
                return f"metadata {key!r} must be a finite number"
        elif isinstance(value, str):
            if len(value) > MAX_META_TEXT:
                return f"metadata {key!r} is longer than {MAX_META_TEXT:,} characters"
        else:
            return (
                f"metadata {key!r} must be a string, number or boolean, got "
                f"{type(value).__name__} (the memory store keeps flat metadata only)"
            )
    return None


def created_problem(created_at: float) -> str | None:
    """Why ``created_at`` (seconds since the epoch) cannot be a memory's time, or None."""
    if not math.isfinite(created_at) or not MIN_CREATED <= created_at <= MAX_CREATED:
        return "created_at must be between 0001-01-02 and 9999-12-30 (UTC)"
    return None


# A filter on memories: {key: value} (equal) or {key: {"$in": [values]}} (one of them), all
# keys to hold at once; a key is a metadata key, or "role".
Filter = dict[str, Any]
MAX_FILTER_KEYS = 16
MAX_IN = 100


def filter_problem(where: Any) -> str | None:
    """Why ``where`` is not a filter, or None."""
    if not isinstance(where, dict) or not where:
        return 'a filter is a non-empty object like {"conversation_id": "c1"}'
    if len(where) > MAX_FILTER_KEYS:
        return f"a filter has at most {MAX_FILTER_KEYS} keys"
    for key, cond in where.items():
        if isinstance(cond, dict):
            values = cond.get("$in")
            if set(cond) != {"$in"} or not isinstance(values, list) or not values:
                return f'filter {key!r}: a value, or {{"$in": [values]}} with 1-{MAX_IN} values'
            if len(values) > MAX_IN:
                return f"filter {key!r}: at most {MAX_IN} values"
        else:
            values = [cond]
        for value in values:
            problem = role_problem(value) if key == "role" else metadata_problem({key: value})
            if problem:
                return f"filter: {problem}"
    return None


def _same(a: Any, b: Any) -> bool:
    """Equal as metadata values: 1 is not True, and 1 is 1.0."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def matches(memory: Memory, where: Filter | None) -> bool:
    """Whether ``memory`` passes the filter ``where`` (None: every memory does)."""
    if not where:
        return True
    for key, cond in where.items():
        if key == "role":
            value: Any = memory.role
        elif key in memory.metadata:
            value = memory.metadata[key]
        else:
            return False
        wanted = cond["$in"] if isinstance(cond, dict) else [cond]
        if not any(_same(value, w) for w in wanted):
            return False
    return True


def cut(text: str, limit: int = MAX_CONTENT) -> str:
    """``text`` made to fit ``limit`` characters: the start kept, and a marker saying how
    much was left out (for chat turns, whose length the gateway does not choose)."""
    if len(text) <= limit:
        return text
    keep = limit - 80  # the marker takes fewer
    return text[:keep] + f"\n[... {len(text) - keep:,} more characters not remembered]"


def new_id(created_at: float | None = None) -> str:
    """A fresh memory id for a memory created at ``created_at`` (default: now)."""
    stamp = micros(time.time() if created_at is None else created_at) + _EPOCH_US
    return f"mem_{max(stamp, 0):016x}{secrets.randbits(63):016x}"


def id_micros(memory_id: str) -> int | None:
    """The creation time (``micros``) an id carries, or None for an id that carries none."""
    digits = memory_id[4:]
    if not memory_id.startswith("mem_") or len(digits) != _ID_HEX or digits[16] not in "01234567":
        return None
    try:
        return int(digits[:16], 16) - _EPOCH_US
    except ValueError:
        return None


def cursor_at(stamp: int) -> str:
    """A page cursor (an id no memory has) standing where the memories created at ``stamp``
    (``micros``) begin: a listing after it starts with those created before ``stamp`` (and
    only ids made before ids carried their time could come next at ``stamp`` itself)."""
    return f"mem_{max(stamp + _EPOCH_US, 0):016x}{0:016x}"


def created_in(memory: Memory, since: int | None, until: int | None) -> bool:
    """Whether ``memory`` was created in ``[since, until)`` (``micros``; None: unbounded)."""
    created = micros(memory.created_at)
    return (since is None or created >= since) and (until is None or created < until)


def sort_key(memory: Memory) -> tuple[int, str]:
    """Where a memory stands in a listing: by ``(micros(created_at), id)``, newest last."""
    return micros(memory.created_at), memory.id


def now() -> float:
    return time.time()


def to_rfc3339(ts: float) -> str:
    """Seconds since the epoch as an RFC 3339 UTC timestamp with microseconds. A time outside
    what a memory may hold (one stored before that was checked) is shown at the nearest end
    of that range, so that reading it never fails."""
    if not math.isfinite(ts) or not MIN_CREATED <= ts <= MAX_CREATED:
        ts = MIN_CREATED if not ts > MIN_CREATED else MAX_CREATED
    return (
        datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


def from_rfc3339(text: str) -> float:
    """Parse an RFC 3339 timestamp (``Z`` or an offset; a naive time is taken as UTC)."""
    value = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
