"""The HTTP side of memgate: an OpenAI-compatible gateway with long-term memory."""

from __future__ import annotations

__version__ = "0.1.0"
