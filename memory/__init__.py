"""Long-term memory for chat: records, embedding, a Chroma store, recall and a durable write queue.

No HTTP here: the package is usable as a library on its own.
"""

from __future__ import annotations
