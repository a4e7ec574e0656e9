"""The records the memory layer stores and returns."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import msgspec

MetadataValue = str | int | float | bool
Metadata = dict[str, MetadataValue]


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

    def memories(self) -> list[Memory]:
        """The memories this exchange is stored as: the user turn, then the reply."""
        meta: Metadata = {"source": "chat"}
        if self.model:
            meta["model"] = self.model
        out: list[Memory] = []
        for offset, (role, text) in enumerate((("user", self.user), ("assistant", self.assistant))):
            if text.strip():
                # The reply is stamped a millisecond later, so that ordering by time (and an
                # RFC 3339 timestamp with microseconds) keeps the pair in order.
                out.append(
                    Memory(
                        id=new_id(),
                        namespace=self.namespace,
                        content=text,
                        role=role,
                        created_at=self.created_at + offset * 1e-3,
                        metadata=dict(meta),
                    )
                )
        return out


def new_id() -> str:
    """A fresh memory id: ``mem_`` and 32 hex digits."""
    return "mem_" + uuid.uuid4().hex


def now() -> float:
    return time.time()


def to_rfc3339(ts: float) -> str:
    """Seconds since the epoch as an RFC 3339 UTC timestamp with microseconds."""
    return (
        datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )


def from_rfc3339(text: str) -> float:
    """Parse an RFC 3339 timestamp (``Z`` or an offset; a naive time is taken as UTC)."""
    value = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
