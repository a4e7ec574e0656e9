"""The HTTP side of memgate: an OpenAI-compatible gateway with long-term memory."""

from __future__ import annotations

import os

# Before numpy is imported anywhere in the process: OpenBLAS's own threads (two here, spinning
# after each product) took a core from the event loop and the model on every dense search in
# memory (``memory.dense``), which cost a memory chat ~3.5 ms at c=1 (bench/ab.py); one thread
# scans 10,000 vectors in 0.6 ms. A value set in the environment is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
