"""Namespace names (1-128 characters of ``[A-Za-z0-9._:@-]``), and where a request's comes
from.

A request may name its namespace in several places; ``server.namespace_sources`` says which
count and in which order the first one present wins:

- ``path``: ``/v1/memory/ns/{namespace}/...`` (for clients that can only set a base URL);
- ``query``: ``?namespace=``;
- ``header``: ``x-memory-namespace`` (for clients that can add a header);
- ``user``: the chat body's OpenAI ``user`` field (for apps that already send their end
  user's id there): off by default, since apps often send it for other reasons.

Each is checked the same way. A request that names none uses ``server.default_namespace``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.errors import InvalidNamespace

log = logging.getLogger("memgate")

_NAMESPACE = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
SOURCES = ("path", "query", "header", "user")
HEADER = "x-memory-namespace"


def check_namespace(value: str | None, default: str, *, param: str = "namespace") -> str:
    """The namespace to use: ``value`` if given and valid, ``default`` if missing."""
    if value is None:
        return default
    if not isinstance(value, str) or not _NAMESPACE.fullmatch(value):
        shown = repr(value) if len(repr(value)) <= 142 else repr(value)[:140] + "..."
        raise InvalidNamespace(
            f"invalid namespace {shown}: use 1-128 characters of A-Z a-z 0-9 . _ : @ -",
            param=param,
        )
    return value


class NamespaceResolver:
    """Picks a request's namespace from its sources, in the configured order."""

    def __init__(self, sources: Sequence[str], default: str, *, keys: bool) -> None:
        unknown = [s for s in sources if s not in SOURCES]
        if unknown:
            raise ValueError(f"unknown namespace sources {unknown}: choose from {SOURCES}")
        self.sources = tuple(sources)
        self.default = default
        self._keys = keys
        self._warned = False

    def resolve(
        self,
        *,
        path: str | None = None,
        query: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> str:
        given: dict[str, Any] = {
            "path": path,
            "query": query,
            "header": (headers or {}).get(HEADER),
            "user": (body or {}).get("user"),
        }
        for source in self.sources:
            value = given[source]
            if value is not None and value != "":
                param = {"header": HEADER, "user": "user"}.get(source, "namespace")
                return check_namespace(value, self.default, param=param)
        if not self._keys and not self._warned:
            self._warned = True
            log.warning(
                "a request named no namespace: it uses the global one (%r), shared by every "
                "such request; name one (%s) so that users do not share memories",
                self.default,
                ", ".join(self.sources),
            )
        return self.default
