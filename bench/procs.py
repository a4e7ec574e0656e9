"""Child processes of the benchmarks: the tail of a log, and a stop that says what went wrong."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(
    name: str,
    proc: subprocess.Popen[bytes],
    logfile: Path,
    *,
    timeout: float,
    log: Callable[[str], None],
    lines: int = 30,
) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s; an exit other than by SIGTERM is logged with
    the tail of the process's log."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{name} did not stop within {timeout:.0f} s of SIGTERM: killing it")
            proc.kill()
            proc.wait()
    if proc.returncode not in (0, -signal.SIGTERM):
        log(f"{name} exited with code {proc.returncode}; its log:\n{tail(logfile, lines)}")
