"""Namespace names: 1-128 characters of ``[A-Za-z0-9._:@-]``."""

from __future__ import annotations

import re

from gateway.errors import InvalidNamespace

_NAMESPACE = re.compile(r"[A-Za-z0-9._:@-]{1,128}")


def check_namespace(value: str | None, default: str, *, param: str = "namespace") -> str:
    """The namespace to use: ``value`` if given and valid, ``default`` if missing."""
    if value is None:
        return default
    if not _NAMESPACE.fullmatch(value):
        shown = value if len(value) <= 140 else value[:140] + "..."
        raise InvalidNamespace(
            f"invalid namespace {shown!r}: use 1-128 characters of A-Z a-z 0-9 . _ : @ -",
            param=param,
        )
    return value
