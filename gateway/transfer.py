"""Import and export: moving history into and out of a namespace of a running gateway.

Import is resumable: before sending anything it pages through the namespace's memories
(``GET /v1/memory/memories``) and collects their import keys (see ``gateway.history``); records
whose key is already there are skipped. The rest go in batches of at most 1,000 memories (and
about 2 MB) through ``POST /v1/memory/memories``. A batch the gateway rejects as bad input is
split to find the memories at fault; a batch that fails for another reason (store down, rate
limit) is counted as failed and a later run picks it up. A refused key or an unreachable
gateway stops the import; what was sent until then stays, and a re-run resumes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.client import ClientError, GatewayClient
from gateway.history import Record, existing_keys, export_line, keyed
from memory.records import to_rfc3339

MAX_BATCH = 1000  # the add endpoint's limit
MAX_BATCH_BYTES = 2_000_000  # well under the gateway's default 4 MiB body limit


@dataclass
class ImportSummary:
    total: int = 0
    imported: int = 0
    skipped: int = 0
    failed: int = 0
    ignored: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "imported": self.imported,
            "skipped": self.skipped,
            "failed": self.failed,
            "ignored": self.ignored,
            "errors": self.errors,
        }


def pending(
    client: GatewayClient, namespace: str, records: Sequence[Record]
) -> tuple[list[tuple[str, Record]], int]:
    """The records the namespace does not hold yet, with their keys, and how many it does."""
    present = existing_keys(reversed(list(client.iter_all(namespace))))
    todo = [(key, record) for key, record in keyed(records) if key not in present]
    return todo, len(records) - len(todo)


def batches(bodies: Sequence[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive batches of at most ``size`` memories and about ``MAX_BATCH_BYTES``."""
    batch: list[dict[str, Any]] = []
    weight = 0
    for body in bodies:
        cost = len(json.dumps(body, ensure_ascii=False).encode()) + 1
        if batch and (len(batch) >= size or weight + cost > MAX_BATCH_BYTES):
            yield batch
            batch, weight = [], 0
        batch.append(body)
        weight += cost
    if batch:
        yield batch


def import_records(
    client: GatewayClient,
    namespace: str,
    todo: Sequence[tuple[str, Record]],
    summary: ImportSummary,
    *,
    batch_size: int = 500,
    advance: Callable[[int], None] = lambda n: None,
) -> None:
    """Send ``todo`` to the namespace in batches, counting into ``summary``. Records without a
    time get the import's time, a microsecond apart, so that they keep their order."""
    start = time.time()
    bodies = []
    where: dict[int, str] = {}
    for index, (key, record) in enumerate(todo):
        body = record.body(key)
        if record.created_at is None:
            body["created_at"] = to_rfc3339(start + index * 1e-6)
        where[id(body)] = record.where
        bodies.append(body)
    for batch in batches(bodies, min(batch_size, MAX_BATCH)):
        _send(client, namespace, batch, summary, where)
        advance(len(batch))


def _send(
    client: GatewayClient,
    namespace: str,
    batch: list[dict[str, Any]],
    summary: ImportSummary,
    where: dict[int, str],
) -> None:
    try:
        client.add(namespace, batch)
    except ClientError as exc:
        if exc.status in (400, 413) and len(batch) > 1:  # find the memories at fault
            half = len(batch) // 2
            _send(client, namespace, batch[:half], summary, where)
            _send(client, namespace, batch[half:], summary, where)
            return
        if exc.status is None or exc.status in (401, 403):
            raise
        summary.failed += len(batch)
        place = where[id(batch[0])] if len(batch) == 1 else f"{len(batch)} memories"
        summary.errors.append(f"{place}: {exc}")
        return
    summary.imported += len(batch)


def export_lines(client: GatewayClient, namespace: str) -> list[str]:
    """The namespace's memories as export lines, oldest first."""
    memories = list(client.iter_all(namespace))
    memories.reverse()
    return [export_line(m) for m in memories]
