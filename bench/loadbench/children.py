"""Child processes of a run (the gateway, the fake upstream, a peer proxy): start, stop, wait
until they answer, the environment a gateway gets; and the CPU meters that read ``/proc``."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from procs import stop_process, tail, wait_ready

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
