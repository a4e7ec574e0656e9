"""Import and export: moving history into and out of a namespace of a running gateway.

Import is resumable: before sending anything it pages through the namespace's memories
(``GET /v1/memory/memories``) and collects their import keys (see ``gateway.cli.history``); records
whose key is already there are skipped. The rest go through ``POST /v1/memory/memories`` as
requests of at most ``PART`` memories (and about 2 MB), several at once over their own
connections, up to a batch (``batch_size``, at most 1,000) of memories on their way at a time:
the gateway embeds what concurrent requests bring together, so this is as fast as sending the
batch in one request, and each request that lands moves the progress. A request the gateway
rejects as bad input is split to find the memories at fault; one that fails for another reason
(store down, rate limit) is counted as failed and a later run picks it up. A refused key or an
unreachable gateway stops the import; what was sent until then stays, and a re-run resumes.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.cli.client import ClientError, GatewayClient
from gateway.cli.history import Record, existing_keys, export_line
from memory.records import micros_later, to_rfc3339

MAX_BATCH = 1000  # the add endpoint's limit
MAX_BATCH_BYTES = 2_000_000  # well under the gateway's default 4 MiB body limit
PART = 25  # memories a request: the progress moves by at most this much at a time


@dataclass
class ImportSummary:
    total: int = 0
    imported: int = 0
    skipped: int = 0
    failed: int = 0
    ignored: int = 0
    repeated: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "imported": self.imported,
            "skipped": self.skipped,
            "failed": self.failed,
            "ignored": self.ignored,
            "repeated": self.repeated,
            "errors": self.errors,
        }


def present_keys(client: GatewayClient, namespace: str) -> set[str]:
    """The import keys the namespace holds already (``history.existing_keys``)."""
    return existing_keys(reversed(list(client.iter_all(namespace))))


# A memory as the add endpoint takes it, and where it came from (for error messages).
Item = tuple[dict[str, Any], str]


def batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive batches of at most ``size`` memories and about ``MAX_BATCH_BYTES``."""
    batch: list[Item] = []
    weight = 0
    for item in items:
        cost = len(json.dumps(item[0], ensure_ascii=False).encode()) + 1
        if batch and (len(batch) >= size or weight + cost > MAX_BATCH_BYTES):
            yield batch
            batch, weight = [], 0
        batch.append(item)
        weight += cost
    if batch:
        yield batch


@dataclass
class _Landed:
    """What became of one request, told by the thread that sent it."""

    size: int
    tally: ImportSummary
    stop: ClientError | None = None  # the import cannot go on (refused key, unreachable)
    crash: BaseException | None = None  # a bug: re-raised by the importing thread


class Importer:
    """Sends keyed records to a namespace, counting into ``summary``: requests of at most
    ``part`` memories, several at once (each on a thread of its own, all sharing the client's
    connection pool), with at most ``batch_size`` memories on their way at a time. ``landed``
    is called with the number of memories of each request that has been answered (imported or
    failed), on the thread that calls ``send`` and ``wait``, which also updates ``summary``.

    Records without a time get the import's time, a microsecond apart, so that they keep their
    order, however the requests interleave. ``stop``, checked at least every 0.1 s, makes
    ``send`` and ``wait`` return early (``False``); what is on its way stays on its way
    (``in_flight``) until a later ``wait`` sees it land."""

    def __init__(
        self,
        client: GatewayClient,
        namespace: str,
        summary: ImportSummary,
        *,
        batch_size: int = 500,
        part: int = PART,
        landed: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.summary = summary
        self.window = max(1, min(batch_size, MAX_BATCH))
        self.part = max(1, min(part, self.window))
        self.landed = landed
        self.in_flight = 0  # memories sent whose request has not been answered yet
        self.error: ClientError | None = None
        # records without a time get the import's start, one microsecond apart, in file order
        self._start = time.time()
        self._index = 0
        self._requests: queue.SimpleQueue[list[Item] | None] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[_Landed] = queue.SimpleQueue()
        # Daemon threads: a second Ctrl-C quits at once, without waiting for their answers.
        self._threads = [
            threading.Thread(target=self._work, daemon=True)
            for _ in range(-(-self.window // self.part))
        ]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> Importer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Let the threads end once the requests on their way have been answered."""
        for _ in self._threads:
            self._requests.put(None)

    def send(
        self, todo: Iterable[tuple[str, Record]], stop: Callable[[], bool] = lambda: False
    ) -> bool:
        """Send ``todo``; returns once all of it is on its way (``True``), or when ``stop``
        says so first (``False``: the rest is not sent). Raises the ``ClientError`` that stops
        the import, once the requests already on their way have been answered."""
        for request in batches(self._items(todo), self.part):
            while self.in_flight and self.in_flight + len(request) > self.window:
                if stop():
                    return False
                self._collect()
            if stop():
                return False
            self._raise_error(stop)
            self._requests.put(request)
            self.in_flight += len(request)
        return True

    def wait(self, stop: Callable[[], bool] = lambda: False) -> bool:
        """Wait until every request sent has been answered (``True``), or ``stop`` says so
        first (``False``). Raises the ``ClientError`` that stopped the import, if one did."""
        while self.in_flight:
            if stop():
                return False
            self._collect()
        self._raise_error(stop)
        return True

    def _items(self, todo: Iterable[tuple[str, Record]]) -> Iterator[Item]:
        for key, record in todo:
            body = record.body(key)
            if record.created_at is None:
                body["created_at"] = to_rfc3339(micros_later(self._start, self._index))
            self._index += 1
            yield body, record.where

    def _collect(self, timeout: float = 0.1) -> None:
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            return
        self.in_flight -= answer.size
        if answer.crash is not None:
            raise answer.crash
        if answer.stop is not None and self.error is None:
            self.error = answer.stop
        tally = answer.tally
        self.summary.imported += tally.imported
        self.summary.failed += tally.failed
        self.summary.errors.extend(tally.errors)
        self.landed(answer.size)

    def _raise_error(self, stop: Callable[[], bool]) -> None:
        if self.error is None:
            return
        while self.in_flight and not stop():
            self._collect()
        raise self.error

    def _work(self) -> None:
        while (request := self._requests.get()) is not None:
            answer = _Landed(len(request), ImportSummary())
            try:
                if self.error is None:
                    _send(self.client, self.namespace, request, answer.tally)
                else:  # the import is stopping: do not send more
                    answer.tally.failed += len(request)
            except ClientError as exc:
                answer.stop = exc
            except BaseException as exc:  # handed to the importing thread
                answer.crash = exc
            self._answers.put(answer)


def _send(client: GatewayClient, namespace: str, request: list[Item], tally: ImportSummary) -> None:
    try:
        client.add(namespace, [body for body, _ in request])
    except ClientError as exc:
        if exc.status in (400, 413) and len(request) > 1:  # find the memories at fault
            half = len(request) // 2
            _send(client, namespace, request[:half], tally)
            _send(client, namespace, request[half:], tally)
            return
        if exc.status is None or exc.status in (401, 403):
            raise
        tally.failed += len(request)
        place = request[0][1] if len(request) == 1 else f"{len(request)} memories"
        tally.errors.append(f"{place}: {exc}")
        return
    tally.imported += len(request)


def export_lines(client: GatewayClient, namespace: str) -> list[str]:
    """The namespace's memories as export lines, oldest first."""
    memories = list(client.iter_all(namespace))
    memories.reverse()
    return [export_line(m) for m in memories]
