"""Several gateway processes on one Chroma server (``chroma run`` on loopback), as a SaaS
backend runs them behind a load balancer: what one writes, deletes or erases is seen that way
through the others, in their searches and in what their memory chats send upstream."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_until
from tests.e2e.conftest import GatewayProcess, start_gateway
from tests.e2e.races import race
from tests.fake_upstream import FakeUpstream
from tests.processes import ChromaServer

pytestmark = pytest.mark.slow

# The documented propagation bound: dense recall at once, lexical recall and listings within
# store.sync_interval_seconds (1 s) of a write reaching the store.
BOUND = 2.0


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, upstream: tuple[FakeUpstream, str]
) -> Iterator[list[GatewayProcess]]:
    root = tmp_path_factory.mktemp("fleet")
    server = ChromaServer(root / "chroma").start()
    gateways: list[GatewayProcess] = []
    try:
        for name in ("a", "b", "c"):
            gateways.append(
                start_gateway(
                    root / name,
                    upstream[1],
                    "--chroma-url",
                    server.url,
                    # B holds what it queues for a while: see the erase test
                    env={"MEMGATE_QUEUE_COALESCE_MS": "4000"} if name == "b" else None,
                )
            )
        yield gateways
    finally:
        for gw in gateways:
            gw.stop()
        server.stop()


def add(gw: GatewayProcess, ns: str, *texts: str) -> list[str]:
    r = httpx.post(
        f"{gw.url}/v1/memory/memories",
        params={"namespace": ns},
        json={"memories": [{"content": t} for t in texts]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return list(r.json()["ids"])


def search(gw: GatewayProcess, ns: str, query: str, k: int = 10) -> list[dict[str, Any]]:
    r = httpx.post(
        f"{gw.url}/v1/memory/search",
        params={"namespace": ns},
        json={"query": query, "k": k},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def contents(gw: GatewayProcess, ns: str, query: str) -> set[str]:
    return {hit["content"] for hit in search(gw, ns, query)}


def chat(gw: GatewayProcess, ns: str, text: str) -> httpx.Response:
    r = httpx.post(
        f"{gw.url}/v1/memory/chat/completions",
        params={"namespace": ns},
        json={"model": "fake-model", "messages": [{"role": "user", "content": text}]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r


def injected(upstream: FakeUpstream, question: str) -> str:
    """The memories the upstream received with ``question``: the injected system message."""
    for received in reversed(upstream.requests):
        messages = (received.body or {}).get("messages") or []
        if messages and messages[-1].get("content") == question:
            return "\n".join(str(m["content"]) for m in messages if m["role"] == "system")
    raise AssertionError(f"the upstream never received {question!r}")


def test_deletions_through_one_gateway_are_honoured_by_the_others(
    fleet: list[GatewayProcess], upstream: tuple[FakeUpstream, str]
) -> None:
    a, b, c = fleet
    ns = "tenant-" + uuid.uuid4().hex[:8]
    ids = add(
        a,
        ns,
        "My bank PIN hint is the walrus sticker",
        "I moved to Lisbon last spring",
        "My dog Rex loves the beach",
    )
    assert "My bank PIN hint is the walrus sticker" in contents(b, ns, "bank PIN hint walrus")
    r = httpx.delete(f"{a.url}/v1/memory/memories/{ids[0]}", params={"namespace": ns})
    assert r.status_code == 200
    add(a, ns, "I adopted a cat called Miso")
    # at once, through both others: searched or recalled, the deleted memory is gone
    for gw in (b, c):
        assert "My bank PIN hint is the walrus sticker" not in contents(gw, ns, "bank PIN walrus")
        question = f"what is my bank PIN hint? {uuid.uuid4().hex[:6]}"
        chat(gw, ns, question)
        assert "walrus sticker" not in injected(upstream[0], question)
    # and what A added is found through B: densely at once, lexically within the bound
    assert "I adopted a cat called Miso" in contents(b, ns, "Which pet did I adopt?")
    wait_until(lambda: "I adopted a cat called Miso" in contents(c, ns, "Miso"), timeout=BOUND)
    page = httpx.get(f"{c.url}/v1/memory/memories", params={"namespace": ns}).json()
    listed = {m["content"] for m in page["data"]}
    assert {
        "I moved to Lisbon last spring",
        "My dog Rex loves the beach",
        "I adopted a cat called Miso",
    } <= listed
    assert "My bank PIN hint is the walrus sticker" not in listed


def test_an_erasure_through_one_gateway_is_honoured_by_all(
    fleet: list[GatewayProcess], upstream: tuple[FakeUpstream, str]
) -> None:
    a, b, c = fleet
    ns = "tenant-" + uuid.uuid4().hex[:8]
    add(a, ns, "I moved to Lisbon last spring", "My sister lives in Porto")
    assert contents(c, ns, "Lisbon")
    # B answers a chat: its exchange is written at once; a second one stays queued in B
    # (coalesce 4 s) while A erases the namespace: the erasure covers it too
    chat(b, ns, "Remember that my locker code is 4471")
    chat(b, ns, "Also remember that my bike is blue")
    r = httpx.delete(f"{a.url}/v1/memory/namespaces/{ns}")
    assert r.status_code == 200, r.text
    for gw in (b, c):
        assert search(gw, ns, "Where do I live? locker code bike Lisbon Porto") == []
        question = f"where do I live? {uuid.uuid4().hex[:6]}"
        chat(gw, ns, question)
        assert "Lisbon" not in injected(upstream[0], question)
        assert "locker" not in injected(upstream[0], question)

    def drained() -> bool:
        return bool(httpx.get(b.url + "/readyz").json()["queue_depth"] == 0)

    wait_until(drained, timeout=15)
    remaining = httpx.get(f"{a.url}/v1/memory/memories", params={"namespace": ns}).json()["data"]
    texts = {m["content"] for m in remaining}
    queued_before = {"Remember that my locker code is 4471", "Also remember that my bike is blue"}
    assert not texts & queued_before


def listed(gw: GatewayProcess, ns: str) -> set[str]:
    page = httpx.get(f"{gw.url}/v1/memory/memories", params={"namespace": ns, "limit": 100})
    assert page.status_code == 200, page.text
    return {m["content"] for m in page.json()["data"]}


def test_a_delete_by_filter_through_one_gateway_is_honoured_by_the_others(
    fleet: list[GatewayProcess], upstream: tuple[FakeUpstream, str]
) -> None:
    """A conversation forgotten through A (what A's memory API added, and what C's memory
    chat remembered of it) is searched, listed and recalled by no gateway; nothing outside
    the namespace or the filter goes; a time range through C is honoured by A."""
    a, b, c = fleet
    ns, other = ("tenant-" + uuid.uuid4().hex[:8] for _ in range(2))
    trip = {"conversation_id": "trip"}
    memories = [
        {"content": "Trip: flights to Lisbon booked for May", "metadata": trip},
        {"content": "Trip: the hotel is near the Alfama walrus mural", "metadata": trip},
        {"content": "Work: the quarterly report is due Friday",
         "metadata": {"conversation_id": "work"}},
        {"content": "I am allergic to peanuts", "created_at": "2020-01-01T00:00:00Z"},
    ]  # fmt: skip
    for namespace in (ns, other):
        r = httpx.post(f"{a.url}/v1/memory/memories", params={"namespace": namespace},
                       json={"memories": memories}, timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
    said = "Trip: remember the ferry to Cacilhas leaves at nine"
    r = httpx.post(
        f"{c.url}/v1/memory/chat/completions",
        params={"namespace": ns},
        json={"model": "fake-model", "messages": [{"role": "user", "content": said}]},
        headers={"x-memory-conversation": "trip"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    wait_until(lambda: said in listed(a, ns), timeout=10)  # C's writer has stored it
    for gw in (b, c):
        wait_until(lambda gw=gw: "walrus mural" in " ".join(contents(gw, ns, "walrus mural")),
                   timeout=BOUND)  # fmt: skip

    r = httpx.delete(
        f"{a.url}/v1/memory/memories", params={"namespace": ns, "conversation_id": "trip"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["deleted"] == 4  # two added, and the exchange's user turn and reply

    kept = {"Work: the quarterly report is due Friday", "I am allergic to peanuts"}
    for gw in (a, b, c):
        assert {t for t in listed(gw, ns) if "walrus mural?" not in t} == kept  # (the chats)
        found = contents(gw, ns, "Trip Lisbon walrus mural ferry Cacilhas hotel flights")
        assert not any(text.startswith(("Trip", "echo: Trip")) for text in found), found
        question = f"where is the trip hotel, the walrus mural? {uuid.uuid4().hex[:6]}"
        chat(gw, ns, question)
        assert "Alfama" not in injected(upstream[0], question)
        assert "Cacilhas" not in injected(upstream[0], question)
        assert listed(gw, other) == {m["content"] for m in memories}  # another namespace

    # a time range alone, through C: honoured by A at once
    r = httpx.delete(
        f"{c.url}/v1/memory/memories", params={"namespace": ns, "created_before": "2021-01-01"}
    )
    assert r.json()["deleted"] == 1
    assert "I am allergic to peanuts" not in listed(a, ns)
    assert "peanuts" not in " ".join(contents(a, ns, "allergic to peanuts"))
    assert "Work: the quarterly report is due Friday" in listed(a, ns)


def test_paging_through_one_gateway_while_another_deletes_is_exact(
    fleet: list[GatewayProcess],
) -> None:
    a, b, _ = fleet
    ns = "tenant-" + uuid.uuid4().hex[:8]
    ids = add(a, ns, *[f"note number {i}" for i in range(120)])
    doomed = ids[::4]
    seen: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"namespace": ns, "limit": 10}
        if after:
            params["after"] = after
        page = httpx.get(f"{b.url}/v1/memory/memories", params=params).json()
        seen += [m["id"] for m in page["data"]]
        if page["data"]:
            # the cursor itself, and some memories still to come, are deleted meanwhile
            for mid in [page["data"][-1]["id"], *doomed[:3]]:
                httpx.delete(f"{a.url}/v1/memory/memories/{mid}", params={"namespace": ns})
                if mid in doomed:
                    doomed.remove(mid)
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    left = httpx.get(f"{a.url}/v1/memory/memories", params={"namespace": ns, "limit": 100}).json()[
        "data"
    ]
    assert {m["id"] for m in left} <= set(seen)  # nothing that survived was skipped
    assert len(seen) == len(set(seen))


def test_many_namespaces_cost_a_bounded_number_of_files(
    tmp_path: Path, upstream: tuple[FakeUpstream, str]
) -> None:
    """Embedded mode, 240 namespaces through a vector cache of 8 and 8 open local files: the
    HNSW files open in the store process and the index files open in the gateway stay
    bounded (Chroma's sharded cache keeps about 64 indexes at least), and every namespace
    still answers."""
    gw = start_gateway(
        tmp_path / "data",
        upstream[1],
        env={"MEMGATE_STORE_VECTOR_CACHE": "8", "MEMGATE_STORE_OPEN_NAMESPACES": "8"},
    )
    try:
        names = [f"user-{i}" for i in range(240)]
        for name in names:
            add(gw, name, f"{name} likes the colour number {name[5:]}", "An unrelated remark")
        for name in names:
            hits = search(gw, name, f"what colour does {name} like?", k=1)
            assert hits, name
            assert hits[0]["content"].startswith(name + " "), name
        hnsw = open_files(store_child(gw), "header.bin")
        local = open_files(gw.process.pid, ".sqlite3")
        # unbounded, these would be 240 (one a namespace used)
        assert hnsw <= 64 + 8 + 8, hnsw
        assert local <= 8 + 1, local  # and the write queue
    finally:
        assert gw.stop() == 0, gw.log()


def store_child(gw: GatewayProcess) -> int:
    tasks = Path(f"/proc/{gw.process.pid}/task").iterdir()
    children = [pid for task in tasks for pid in (task / "children").read_text().split()]
    assert len(children) == 1
    return int(children[0])


def open_files(pid: int, suffix: str) -> int:
    """How many of the process's open files have names ending with ``suffix``."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            count += fd.readlink().name.endswith(suffix)
    return count


def test_propagation_bound_is_short(fleet: list[GatewayProcess]) -> None:
    """What A writes is listed and lexically searchable through B within the bound."""
    a, b, _ = fleet
    ns = "tenant-" + uuid.uuid4().hex[:8]
    httpx.get(f"{b.url}/v1/memory/memories", params={"namespace": ns})  # B looked once
    started = time.monotonic()
    add(a, ns, "Zanzibar is where I proposed")

    def listed() -> bool:
        page = httpx.get(f"{b.url}/v1/memory/memories", params={"namespace": ns}).json()
        return any(m["content"] == "Zanzibar is where I proposed" for m in page["data"])

    wait_until(listed, timeout=BOUND)
    assert time.monotonic() - started < BOUND


def test_a_second_gateway_on_the_same_data_dir_stops_at_once(
    fleet: list[GatewayProcess], upstream: tuple[FakeUpstream, str]
) -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="in use by another gateway process") as info:
        start_gateway(fleet[0].data_dir, upstream[1])
    assert time.monotonic() - started < 30
    assert "Traceback" not in str(info.value)


def test_a_patch_through_one_gateway_never_outlives_a_delete_through_another(
    fleet: list[GatewayProcess],
) -> None:
    a, b, _ = fleet
    assert race(a, b, 100, erase=False) == []
    assert race(a, a, 100, erase=False) == []


def test_a_patch_through_one_gateway_never_outlives_an_erasure_through_another(
    fleet: list[GatewayProcess],
) -> None:
    a, b, _ = fleet
    assert race(a, b, 100, erase=True) == []
