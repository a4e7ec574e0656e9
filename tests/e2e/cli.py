"""Run the ``memgate`` command line as a subprocess, as a person or a script would."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from typing import Any


def _env(env: dict[str, str] | None) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MEMGATE_", "OPENAI_"))}
    clean.update({"COLUMNS": "200", "NO_COLOR": "1", **(env or {})})
    return clean


def _command(args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


def memgate(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(args),
        capture_output=True,
        text=True,
        env=_env(env),
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        timeout=timeout,
        check=False,
    )


def memgate_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``memgate`` started and left running (standard output and error piped), e.g. to be sent
    a signal."""
    return subprocess.Popen(
        _command(args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(env),
    )


def memgate_tty(*args: str, timeout: float = 180) -> tuple[int, str]:
    """``memgate`` with its standard output and error on a pseudo-terminal, as in a shell:
    its exit code and everything it wrote there, live updates included."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        _command(args),
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        env=_env({"TERM": "xterm"}),
    )
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the terminal closed: the process is gone
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        else:
            process.kill()
            raise TimeoutError(f"memgate {' '.join(args)} ran longer than {timeout} s")
        return process.wait(10), output.decode(errors="replace")
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait(10)


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
