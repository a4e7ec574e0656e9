"""The one helper of the benchmarks for processes, ports and temporary folders: child
processes of a run (the gateway, the fake upstream, a peer proxy) started, stopped and waited
for until they answer, with what went wrong said from their logs; a free port; the
environment a gateway gets; a scratch folder whose children are stopped at the end; and the
CPU meters that read ``/proc``."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadbench import REPO, STOP_TIMEOUT


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the benchmark dies without cleaning up (Linux only)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    logfile: Path

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.proc.returncode}; its log:\n"
                f"{tail(self.logfile)}"
            )


def start_child(
    name: str, command: list[str], logfile: Path, env: dict[str, str], cwd: Path = REPO
) -> Child:
    log(f"starting {name}: {' '.join(command)}" + (f" (in {cwd})" if cwd != REPO else ""))
    with logfile.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only us; we stop it after cleaning up
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads run in this process yet
        )
    return Child(name, proc, logfile)


def stop_child(child: Child) -> None:
    stop_process(child.name, child.proc, child.logfile, timeout=STOP_TIMEOUT, log=log)


def wait_http(url: str, child: Child, timeout: float, *, want_ready: bool) -> float:
    """Poll ``url`` until it answers 200 while ``child`` lives; seconds waited."""
    return wait_ready(
        url,
        timeout,
        alive=child.check_alive,
        logfile=child.logfile,
        what="ready" if want_ready else "up",
    )


def gateway_env(extra: Sequence[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMGATE_")}
    env["MEMGATE_SERVER_SHUTDOWN_FLUSH_SECONDS"] = "5"  # a quick stop when interrupted
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("MEMGATE_"):
            raise SystemExit(f"--gateway-env wants MEMGATE_KEY=VALUE, got {item!r}")
        env[key] = value
    return env


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process (all its threads) and of its live child
    processes (the gateway's store process); ``None``: this process."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return own + sum(cpu_seconds(child) for child in child_pids(pid))


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    for tasks in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            out += [int(c) for c in tasks.read_text().split()]
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used (``/proc/stat``), summed over cores."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, *rest = values
    steal = rest[0] if rest else 0
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass
class CpuMeter:
    """CPU seconds of client, gateway and upstream, and of everything else on the machine
    (``other``: the machine is shared, and its noise is reported, not hidden)."""

    pids: dict[str, int | None]

    def snapshot(self) -> dict[str, float]:
        out = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        out["machine"] = machine_busy_seconds()
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        out = {name: after[name] - before[name] for name in before if name != "machine"}
        machine = after["machine"] - before["machine"]
        if math.isnan(machine):
            return out
        # All figures count 1/CLK_TCK ticks: over a short phase, ours may sum to a bit more
        # than the machine's; ``other`` is clamped at 0 then.
        out["other"] = max(0.0, machine - sum(out.values()))
        out["machine"] = machine
        return out


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


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[tuple[Path, list[Child]]]:
    """A temporary folder and the list of child processes a bench starts: at the end, the
    children are stopped (the last started first) and the folder removed."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    children: list[Child] = []
    try:
        yield root, children
    finally:
        for child in reversed(children):
            stop_child(child)
        shutil.rmtree(root, ignore_errors=True)
