"""What a long-running process does with its heap once it has started."""

from __future__ import annotations

import gc


def freeze_heap() -> None:
    """Collect once, then exempt every object made so far from Python's cyclic collector.

    A started gateway holds ~100,000 objects that live as long as it does (the imported
    libraries, the model, the app; the store process likewise with Chroma's). Each of the
    collector's full passes walked them all, every ~10 s under load: 50-120 ms at a
    time with the GIL held, so every request in flight stalled (``bench/ab.py`` with a
    collector hook, docs/performance.md). Frozen, they are left out of its walks; they are
    still freed as soon as nothing refers to them, and only a reference cycle among them
    would stay (``gc.freeze``). For a process that serves, not for one a library is used in.
    """
    gc.collect()
    gc.freeze()
