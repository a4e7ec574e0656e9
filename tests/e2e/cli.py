"""Run the ``memgate`` command line as a subprocess, as a person or a script would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def memgate(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MEMGATE_", "OPENAI_"))}
    clean.update({"COLUMNS": "200", "NO_COLOR": "1", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        env=clean,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        timeout=timeout,
        check=False,
    )


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
