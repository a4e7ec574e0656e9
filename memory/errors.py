"""The memory library's exceptions that reach its callers (the gateway maps each to an HTTP
status in ``gateway.errors``): what the service raises. ``StoreUnavailable`` is the store
protocol's own (``memory.store``)."""

from __future__ import annotations


class EmbeddingTimeout(Exception):
    """The embedding model did not answer in time (a recall fails; the chat goes on)."""


class StillQueued(Exception):
    """The memory is in the write queue, not in the store yet."""
