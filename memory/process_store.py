"""``ProcessStore``: a ``MemoryStore`` that runs in a child process of its own.

Why: embedded Chroma holds the GIL while it writes (an upsert of 64 memories holds it ~50 ms;
measured with a thread that sleeps 1 ms and wakes up 13-17 ms late during 12 ms upserts).
In the gateway's process that freezes the event loop, the model's threads and every request.
In a child process it freezes nothing but the store, and the store gets a core of its own.

The parent sends ``(call id, method, args)`` over a pipe; the child runs each call on a small
thread pool (a search need not wait for another search) and sends back the result or the
exception. Calls block their caller's thread, as ``MemoryStore`` calls do. If the child dies,
the calls in flight fail with ``StoreUnavailable`` and the next call starts a new child. The
child exits when the pipe closes (the parent exited, even by SIGKILL), after finishing the
calls it is running; a lock file keeps a new child from opening the store before an old one
has let go of it.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from memory.heap import freeze_heap
from memory.records import Filter, Hit, Memory, Vectors
from memory.store import Changes, MemoryStore, NamespaceCount, StoreUnavailable, Version

log = logging.getLogger("memgate.store")

StoreFactory = Callable[[], MemoryStore]

_CLOSE = "__close__"
_CALLS = frozenset(
    [
        "add",
        "replace",
        "search",
        "search_text",
        "nearest",
        "list",
        "get",
        "get_many",
        "existing",
        "vectors",
        "ids",
        "changes",
        "keep_version",
        "versions",
        "delete",
        "ids_where",
        "delete_many",
        "delete_namespace",
        "erasures",
        "count",
        "namespaces",
        "ping",
    ]
)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a ``StoreUnavailable`` that says what it was."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes, just made
    except Exception:
        return StoreUnavailable(f"{type(exc).__name__}: {exc}")
    return exc


_CHILD_MAIN = (
    "import sys; from memory.process_store import child_main; child_main(int(sys.argv[1]))"
)


def child_main(fd: int) -> None:
    """The child process: serve the store the parent sends the factory of, until the pipe
    closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this ends
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        factory, lock_path, threads = conn.recv()
    except (EOFError, OSError):
        return
    _serve(conn, factory, lock_path, threads)


def _serve(conn: Connection, factory: StoreFactory, lock_path: str, threads: int) -> None:
    """The child's main loop."""
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # wait for an older child to let go of the store
        try:
            store = factory()
        except BaseException as exc:
            conn.send((0, False, _portable(exc)))
            return
        freeze_heap()  # what opening the store made lives as long as this process
        conn.send((0, True, None))
        send_lock = threading.Lock()

        def run(call_id: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            try:
                reply: tuple[int, bool, Any] = (
                    call_id,
                    True,
                    getattr(store, method)(*args, **kwargs),
                )
            except BaseException as exc:
                reply = (call_id, False, _portable(exc))
            with send_lock:
                try:
                    conn.send(reply)
                except (OSError, ValueError):
                    pass  # the parent is gone
                except Exception as exc:  # an answer that cannot be pickled
                    conn.send((call_id, False, StoreUnavailable(f"{method}: {exc}")))

        pool = ThreadPoolExecutor(threads, thread_name_prefix="memgate-store")
        try:
            while True:
                try:
                    call_id, method, args, kwargs = conn.recv()
                except (EOFError, OSError):
                    break  # the parent is gone
                if method == _CLOSE:
                    break
                pool.submit(run, call_id, method, args, kwargs)
        finally:
            pool.shutdown(wait=True)  # finish what was asked before letting go of the store
            store.close()
            with contextlib.suppress(OSError):
                conn.send((0, True, None))


class _Child:
    """One child process and the calls waiting for its answers."""

    def __init__(
        self, factory: StoreFactory, lock_path: Path, threads: int, timeout: float
    ) -> None:
        # A plain ``python -c`` child, not multiprocessing's spawn: spawn re-imports the
        # parent's ``__main__``, which fails or misbehaves when the parent is not a script.
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        with ours, theirs:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-c", _CHILD_MAIN, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C or SIGTERM for the gateway is not for it
            )
            self.conn = Connection(ours.detach())
        self.waiting: dict[int, Future[Any]] = {}
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.closed = False
        try:
            self.conn.send((factory, str(lock_path), threads))
            if not self.conn.poll(timeout):
                raise StoreUnavailable(f"the store process did not start within {timeout:.0f} s")
            _, ok, value = self.conn.recv()
        except (EOFError, OSError) as exc:
            self._kill()
            raise StoreUnavailable("the store process exited while starting") from exc
        except BaseException:
            self._kill()
            raise
        if not ok:
            self._kill()
            if isinstance(value, StoreUnavailable | ValueError):
                raise value
            raise StoreUnavailable(f"cannot open the store: {value}")
        self.reader = threading.Thread(target=self._read, name="memgate-store-reader", daemon=True)
        self.reader.start()

    def _kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.conn.close()

    def alive(self) -> bool:
        return not self.closed and self.process.poll() is None

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self.lock:
            if self.closed:
                raise StoreUnavailable("the store process has exited")
            call_id = next(self.ids)
            self.waiting[call_id] = future
            try:
                self.conn.send((call_id, method, args, kwargs))
            except (OSError, ValueError) as exc:
                self.waiting.pop(call_id, None)
                raise StoreUnavailable(f"the store process is gone: {exc}") from exc
        return future

    def _read(self) -> None:
        while True:
            try:
                call_id, ok, value = self.conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # a garbled answer: this child cannot be trusted any more
                log.exception("unreadable answer from the store process: replacing it")
                self.process.kill()
                break
            with self.lock:
                future = self.waiting.pop(call_id, None)
            if future is None:
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        self._fail_all(StoreUnavailable("the store process exited"))

    def forget(self, future: Future[Any]) -> None:
        with self.lock:
            self.waiting = {k: f for k, f in self.waiting.items() if f is not future}

    def _fail_all(self, exc: StoreUnavailable) -> None:
        with self.lock:
            self.closed = True
            waiting, self.waiting = self.waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(exc)

    def close(self, timeout: float) -> None:
        with self.lock:
            if not self.closed:
                with contextlib.suppress(OSError, ValueError):
                    self.conn.send((0, _CLOSE, (), {}))
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the store process did not stop within %.0f s: killing it", timeout)
            self.process.kill()
            self.process.wait()
        self._fail_all(StoreUnavailable("the store is closed"))
        self.conn.close()


class ProcessStore:
    """A ``MemoryStore`` (made by ``factory``, which must be picklable: e.g. a
    ``functools.partial`` of a store class) served by a child process."""

    def __init__(
        self,
        factory: StoreFactory,
        *,
        lock_path: str | Path,
        threads: int = 4,
        start_timeout: float = 120.0,
        call_timeout: float = 300.0,
    ) -> None:
        self._factory = factory
        self._lock_path = Path(lock_path)
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        self._threads = threads
        self._start_timeout = start_timeout
        self._call_timeout = call_timeout
        self._start_lock = threading.Lock()
        self._child: _Child | None = None
        self._closed = False
        self._ensure()  # fail now, loudly, if the store cannot be opened

    def _ensure(self) -> _Child:
        child = self._child
        if child is not None and child.alive():
            return child
        with self._start_lock:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            child = self._child
            if child is not None and child.alive():
                return child
            if child is not None:
                code = child.process.poll()
                log.warning("the store process exited (code %s): starting a new one", code)
                child.close(5.0)
            self._child = _Child(self._factory, self._lock_path, self._threads, self._start_timeout)
            return self._child

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        assert method in _CALLS  # noqa: S101
        child = self._ensure()
        future = child.call(method, args, kwargs)
        try:
            return future.result(self._call_timeout)
        except TimeoutError as exc:
            child.forget(future)
            raise StoreUnavailable(
                f"the store did not answer {method} within {self._call_timeout:.0f} s"
            ) from exc

    # -- MemoryStore -------------------------------------------------------------------------

    def add(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        self._call("add", builtins.list(memories), vectors)

    def replace(self, memory: Memory, vectors: Vectors) -> bool:
        return bool(self._call("replace", memory, vectors))

    def search(
        self, namespace: str, vector: Vectors, k: int, where: Filter | None = None
    ) -> builtins.list[Hit]:
        result: builtins.list[Hit] = self._call("search", namespace, vector, k, where)
        return result

    def nearest(
        self, namespace: str, vector: Vectors, k: int, where: Filter | None = None
    ) -> builtins.list[tuple[str, float]]:
        result: builtins.list[tuple[str, float]] = self._call(
            "nearest", namespace, vector, k, where
        )
        return result

    def search_text(
        self, namespace: str, text: str, k: int, where: Filter | None = None
    ) -> builtins.list[tuple[Memory, float]]:
        result: builtins.list[tuple[Memory, float]] = self._call(
            "search_text", namespace, text, k, where
        )
        return result

    def list(
        self,
        namespace: str,
        *,
        limit: int,
        after: str | None = None,
        where: Filter | None = None,
    ) -> tuple[builtins.list[Memory], bool]:
        result: tuple[builtins.list[Memory], bool] = self._call(
            "list", namespace, limit=limit, after=after, where=where
        )
        return result

    def get(self, namespace: str, memory_id: str) -> Memory | None:
        result: Memory | None = self._call("get", namespace, memory_id)
        return result

    def get_many(self, namespace: str, memory_ids: Sequence[str]) -> builtins.list[Memory]:
        result: builtins.list[Memory] = self._call("get_many", namespace, builtins.list(memory_ids))
        return result

    def existing(self, namespace: str, memory_ids: Collection[str]) -> set[str]:
        result: set[str] = self._call("existing", namespace, builtins.list(memory_ids))
        return result

    def vectors(
        self, namespace: str, memory_ids: Sequence[str]
    ) -> builtins.list[tuple[str, str, Vectors]]:
        result: builtins.list[tuple[str, str, Vectors]] = self._call(
            "vectors", namespace, builtins.list(memory_ids)
        )
        return result

    def ids(self, namespace: str) -> set[str]:
        result: set[str] = self._call("ids", namespace)
        return result

    def changes(self, namespace: str, since: float | None) -> Changes:
        result: Changes = self._call("changes", namespace, since)
        return result

    def keep_version(self, memory: Memory, changed_at: float) -> None:
        self._call("keep_version", memory, changed_at)

    def versions(self, namespace: str, memory_id: str) -> builtins.list[Version]:
        result: builtins.list[Version] = self._call("versions", namespace, memory_id)
        return result

    def delete(self, namespace: str, memory_id: str) -> bool:
        return bool(self._call("delete", namespace, memory_id))

    def ids_where(
        self,
        namespace: str,
        where: Filter | None,
        *,
        since: int | None = None,
        until: int | None = None,
    ) -> set[str]:
        return set(self._call("ids_where", namespace, where, since=since, until=until))

    def delete_many(self, namespace: str, memory_ids: Collection[str]) -> int:
        return int(self._call("delete_many", namespace, builtins.list(memory_ids)))

    def delete_namespace(self, namespace: str) -> int:
        return int(self._call("delete_namespace", namespace))

    def erasures(self, namespaces: Collection[str]) -> dict[str, float]:
        result: dict[str, float] = self._call("erasures", builtins.list(namespaces))
        return result

    def count(self, namespace: str) -> int:
        return int(self._call("count", namespace))

    def namespaces(
        self, *, limit: int, offset: int = 0
    ) -> tuple[builtins.list[NamespaceCount], bool]:
        result: tuple[builtins.list[NamespaceCount], bool] = self._call(
            "namespaces", limit=limit, offset=offset
        )
        return result

    def ping(self) -> None:
        self._call("ping")

    def close(self) -> None:
        with self._start_lock:
            self._closed = True
            child, self._child = self._child, None
        if child is not None:
            child.close(30.0)
