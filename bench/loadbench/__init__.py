"""The parts of ``bench/load.py``, the load benchmark (run that file; this package has no
entry point of its own), and the settings they share.

- ``texts``: the generated memories, questions, replies and chat bodies;
- ``upstream``: the fake OpenAI-compatible upstream (``bench/load.py --serve-upstream PORT``);
- ``children``: the child processes (start, stop, wait until up) and their CPU meters;
- ``runner``: a phase's figures and the closed-loop load runner;
- ``config``: the counts of a run (``--quick`` or full);
- ``phases``: the HTTP phases against a running gateway (preload, interleaved rounds, the
  write path);
- ``inprocess``: the phases in this process once the gateway stopped (embedder, recall);
- ``report``: the targets and the Markdown report;
- ``proxy``: the pass-through comparison (``--proxy``).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "bench-load-10k"
MODEL = "fake-model"
READY_TIMEOUT = 180.0
STOP_TIMEOUT = 20.0
ADD_BATCH = 1000  # the memory API's most memories per call
TEXTS_PER_EXCHANGE = 3  # 1 recall query + the user turn and the reply, embedded by the writer
