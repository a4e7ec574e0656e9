"""Child processes of the benchmarks: a free port, the wait until one is ready, the tail of a
log, and a stop that says what went wrong (the one copy every bench script uses)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(
    url: str,
    timeout: float,
    *,
    alive: Callable[[], None] | None = None,
    logfile: Path | None = None,
    what: str = "ready",
    trust_env: bool = False,
) -> float:
    """Poll ``url`` until it answers 200; seconds waited. ``alive`` raises if the process
    that should answer has died (then there is no point waiting)."""
    start = time.perf_counter()
    last = "no answer"
    with httpx.Client(timeout=10.0, trust_env=trust_env) as client:
        while True:
            if alive is not None:
                alive()
            try:
                response = client.get(url)
                if response.status_code == 200:
                    return time.perf_counter() - start
                last = f"HTTP {response.status_code}: {response.text[:300]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            if time.perf_counter() - start > timeout:
                extra = f"; log:\n{tail(logfile)}" if logfile else ""
                raise RuntimeError(f"{url} not {what} after {timeout:.0f} s ({last}){extra}")
            time.sleep(0.25)


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
