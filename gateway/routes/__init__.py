"""Route handlers, one module per area: chat, memories, models, health."""

from __future__ import annotations
