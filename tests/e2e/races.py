"""A PATCH raced against a DELETE or an erasure of the same memory, round after round, through
one gateway or two: whichever lands first, the memory is gone afterwards, everywhere (a delete
or an erasure wins every race; memory/service.py)."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.e2e.conftest import GatewayProcess


def race(
    patcher: GatewayProcess, deleter: GatewayProcess, rounds: int, *, erase: bool
) -> list[str]:
    """``rounds`` races: each adds a memory through ``patcher``, then sends a PATCH of it
    through ``patcher`` and a DELETE of it (or of its namespace, ``erase``) through
    ``deleter`` at once (the DELETE a little later each round, so that both orders come),
    then asks both gateways for it. Returns what went wrong, one line a failed round."""
    failures: list[str] = []
    start = threading.Barrier(2)
    with (
        httpx.Client(base_url=patcher.url, timeout=30) as p,
        httpx.Client(base_url=deleter.url, timeout=30) as d,
        ThreadPoolExecutor(2) as pool,
    ):
        for i in range(rounds):
            ns = f"race-{uuid.uuid4().hex[:8]}"
            secret = f"my secret number {i} is {uuid.uuid4().hex[:6]}"
            added = p.post(
                "/v1/memory/memories",
                params={"namespace": ns},
                json={"memories": [{"content": "the first version of a note"}]},
            )
            assert added.status_code == 200, added.text
            mid = added.json()["ids"][0]
            lag = (i % 10) * 0.002

            def patch(mid: str = mid, ns: str = ns, secret: str = secret) -> httpx.Response:
                start.wait()
                return p.patch(
                    f"/v1/memory/memories/{mid}", params={"namespace": ns}, json={"content": secret}
                )

            def delete(mid: str = mid, ns: str = ns, lag: float = lag) -> httpx.Response:
                start.wait()
                time.sleep(lag)
                if erase:
                    return d.delete(f"/v1/memory/namespaces/{ns}")
                return d.delete(f"/v1/memory/memories/{mid}", params={"namespace": ns})

            patched, deleted = pool.submit(patch), pool.submit(delete)
            patch_status, delete_status = patched.result().status_code, deleted.result().status_code
            problems = []
            if delete_status != 200:
                problems.append(f"delete answered {delete_status}")
            if patch_status not in (200, 404):
                problems.append(f"patch answered {patch_status}")
            for gw in (p, d):
                got = gw.get(f"/v1/memory/memories/{mid}", params={"namespace": ns})
                if got.status_code != 404:
                    problems.append(f"GET {gw.base_url} answered {got.status_code}: {got.text}")
                history = gw.get(f"/v1/memory/memories/{mid}/history", params={"namespace": ns})
                if history.status_code == 200 and history.json().get("data"):
                    problems.append(f"history kept after the delete: {history.text}")
                found = gw.post(
                    "/v1/memory/search",
                    params={"namespace": ns},
                    json={"query": secret, "k": 5},
                ).json()["data"]
                if found:
                    problems.append(f"search through {gw.base_url} found {found}")
            if problems:
                failures.append(f"round {i} (patch {patch_status}): " + "; ".join(problems))
    return failures
