"""A gateway's data dir: one gateway process at a time, and the write queues of replaced ones.

What a gateway keeps there that matters is its write queue (``outbox.sqlite3``): exchanges
answered but not yet in the store. Everything else in it is derived (the local index of each
namespace) or, in embedded mode, the store itself.

- ``DataDir.claim`` takes an exclusive lock (``gateway.lock``): a second gateway started on
  the same folder stops at once with a message naming the first, instead of waiting on the
  queue's or Chroma's locks.
- Replicas behind a load balancer each need a queue of their own: a data dir given as a
  pattern with ``{hostname}`` (``/data/{hostname}``) gives each its own folder on one shared
  volume. A replica that was replaced leaves its folder behind, maybe with queued writes:
  ``orphans`` finds the sibling folders whose lock nobody holds, and the gateway moves their
  queued writes into its own queue (``Outbox.adopt``), so nothing answered is lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO

HOSTNAME = "{hostname}"
_LOCK = "gateway.lock"
_QUEUE = "outbox.sqlite3"


def resolve(template: str) -> Path:
    """The data dir a template names for this host (``{hostname}`` replaced)."""
    return Path(template.replace(HOSTNAME, socket.gethostname()))


class DataDirInUse(Exception):
    """Another live process holds the data dir."""


def _try_lock(path: Path) -> IO[str] | None:
    """The open lock file, locked; None when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - kept open: the lock lives as long as the file
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


class DataDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: IO[str] | None = None

    def claim(self) -> None:
        """Hold the data dir for this process (until ``release`` or the process ends)."""
        lock_path = self.path / _LOCK
        handle = _try_lock(lock_path)
        if handle is None:
            holder = ""
            with contextlib.suppress(OSError):
                holder = lock_path.read_text().strip()
            raise DataDirInUse(
                f"the data dir {self.path} is in use by another gateway process"
                + (f" ({holder})" if holder else "")
                + ": give each gateway its own store.data_dir (or use {hostname} in it)"
            )
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._lock = handle

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


@contextlib.contextmanager
def orphans(template: str, mine: Path) -> Iterator[list[Path]]:
    """The write queues of the sibling data dirs (same ``{hostname}`` pattern) that no live
    gateway holds, locked for the caller while the block runs. None without the pattern."""
    held: list[tuple[Path, IO[str]]] = []
    try:
        if HOSTNAME in template:
            pattern = glob.escape(template).replace(glob.escape(HOSTNAME), "*")
            for folder in sorted(Path(p) for p in glob.glob(pattern)):
                queue = folder / _QUEUE
                if folder.resolve() == mine.resolve() or not queue.exists():
                    continue
                handle = _try_lock(folder / _LOCK)
                if handle is not None:
                    held.append((queue, handle))
        yield [queue for queue, _ in held]
    finally:
        for _, handle in held:
            handle.close()
