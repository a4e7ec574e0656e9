"""Exhausted resources and hostile clients against ``memgate serve`` on loopback (bounded):
a full disk, slow clients, a slow upstream, a client that leaves before its answer."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_until
from tests.e2e.conftest import GatewayProcess, start_gateway
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow


def chat(gw: GatewayProcess, ns: str, text: str, model: str = "fake-model", **kw: Any) -> Any:
    return httpx.post(
        f"{gw.url}/v1/memory/chat/completions",
        params={"namespace": ns},
        json={"model": model, "messages": [{"role": "user", "content": text}]},
        **{"timeout": 30, **kw},
    )


def listed(gw: GatewayProcess, ns: str) -> list[str]:
    page = httpx.get(f"{gw.url}/v1/memory/memories", params={"namespace": ns, "limit": 100})
    return [m["content"] for m in page.json()["data"]]


@contextlib.contextmanager
def small_disk(path: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of ``megabytes`` mounted at ``path`` (skips the test where mounting is not
    allowed)."""
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Fill the file system of ``path`` to the last byte; returns the filler file."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * size)
    return filler


def test_a_full_disk_is_said_and_writes_resume_when_space_returns(
    tmp_path: Path, upstream: tuple[FakeUpstream, str]
) -> None:
    with small_disk(tmp_path / "disk", 64) as disk:
        gw = start_gateway(disk / "data", upstream[1])
        try:
            ns = "disk-" + uuid.uuid4().hex[:6]
            filler = fill(disk)
            answers = [chat(gw, ns, f"fact number {i} to keep") for i in range(10)]
            assert all(r.status_code == 200 for r in answers)  # the answers go out
            assert all("was not remembered" in r.headers["x-memory-error"] for r in answers)
            ready = httpx.get(gw.url + "/readyz", timeout=10)
            assert ready.status_code == 503
            assert ready.json()["checks"]["queue"] == "failing: the disk is full"
            metrics = httpx.get(gw.url + "/metrics").text
            assert "memgate_remember_failures_total 10.0" in metrics
            filler.unlink()  # space comes back
            wait_until(lambda: httpx.get(gw.url + "/readyz").status_code == 200, timeout=30)
            r = chat(gw, ns, "a fact after the disk had room again")
            assert "x-memory-error" not in r.headers
            wait_until(lambda: "a fact after the disk had room again" in listed(gw, ns), 30)
            assert not any("fact number" in text for text in listed(gw, ns))
        finally:
            assert gw.stop() == 0, gw.log()


@pytest.fixture(scope="module")
def strict(
    tmp_path_factory: pytest.TempPathFactory, upstream: tuple[FakeUpstream, str]
) -> Iterator[GatewayProcess]:
    """A gateway with short limits: 1 s for the upstream's whole answer and for a request's
    head."""
    gw = start_gateway(
        tmp_path_factory.mktemp("strict") / "data",
        upstream[1],
        env={"MEMGATE_UPSTREAM_TIMEOUT": "1", "MEMGATE_SERVER_HEADER_TIMEOUT_SECONDS": "1"},
    )
    yield gw
    gw.stop()


def test_slow_clients_are_cut_and_others_still_served(strict: GatewayProcess) -> None:
    port = int(strict.url.rsplit(":", 1)[1])
    slow = []
    for _ in range(50):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # never finished
        slow.append(conn)
    assert httpx.get(strict.url + "/healthz").status_code == 200
    time.sleep(2.5)
    closed = 0
    for conn in slow:
        conn.settimeout(2)
        try:
            closed += conn.recv(1) == b""
        except OSError:
            closed += 1
        conn.close()
    assert closed == len(slow)


def test_a_request_http_cannot_parse_gets_an_openai_error(strict: GatewayProcess) -> None:
    """A malformed request line and a 90 KB URL are refused by the HTTP parser, before the
    app: still a JSON error body a client can read."""
    port = int(strict.url.rsplit(":", 1)[1])
    for request in (
        b"GET /v1/models\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/memory/memories?filter="
        + b"%E0%A0%80" * 10_000
        + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(request)
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ")
        assert b"content-type: application/json" in head.lower()
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "invalid_http"


def test_the_upstream_timeout_is_the_whole_answers(
    strict: GatewayProcess, upstream: tuple[FakeUpstream, str]
) -> None:
    started = time.monotonic()
    r = chat(strict, "slow", "hello", model="slow")  # the upstream takes 3 s
    assert r.status_code == 504
    assert time.monotonic() - started < 2.5
    # a stream whose chunks come every 0.3 s, 1.5 s in all: cut at 1 s, with an error event
    with httpx.stream(
        "POST",
        f"{strict.url}/v1/memory/chat/completions",
        params={"namespace": "drip"},
        json={"model": "drip", "stream": True, "messages": [{"role": "user", "content": "a b"}]},
        timeout=30,
    ) as response:
        text = response.read().decode()
    assert '"upstream_timeout"' in text
    assert "[DONE]" not in text
    assert listed(strict, "drip") == []


def test_an_answer_whose_client_left_is_not_remembered(
    tmp_path: Path, upstream: tuple[FakeUpstream, str]
) -> None:
    gw = start_gateway(tmp_path / "data", upstream[1])
    try:
        with pytest.raises(httpx.ReadTimeout):
            chat(gw, "gone", "remember this though I leave", model="slow", timeout=0.5)
        time.sleep(upstream[0].slow_seconds + 1.0)  # the upstream has answered by now
        assert listed(gw, "gone") == []
    finally:
        gw.stop()


def raw_request(gw: GatewayProcess, method: str, target: str, body: bytes = b"") -> tuple[int, Any]:
    """``method target`` sent as it is (no client normalizes the path: curl's --path-as-is);
    the status and the JSON body of the answer."""
    port = int(gw.url.rsplit(":", 1)[1])
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head.encode() + body)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = payload
    return int(status_line.split()[1]), parsed


TRAVERSALS = [
    ("DELETE", "/v1/../api/delete"),
    ("GET", "/v1/../../admin/secrets"),
    ("GET", "/v1/%2e%2e/%2e%2e/admin/secrets"),
    ("GET", "/v1/%2E%2E/admin/secrets"),
    ("GET", "/v1/.%2e/admin/secrets"),
    ("GET", "/v1/models/../../admin/secrets"),
    ("GET", "/v1/./../admin/secrets"),
    ("GET", "/v1/%252e%252e/%252e%252e/admin/secrets"),
    ("GET", "/v1/..%2Fadmin/secrets"),
    ("GET", "/v1/..%5cadmin/secrets"),
    ("GET", "/v1/..\\admin/secrets"),
    ("POST", "/v1/memory/ns/..%2F..%2Fapi%2Fpull/x"),
    ("POST", "/v1/memory/ns/../../api/pull/x"),
    ("POST", "/v1/memory/ns/alice/../../../api/pull"),
    ("POST", "/v1/memory/../../api/pull"),
    ("POST", "/v1/memory/%2e%2e/%2e%2e/api/pull"),
    ("GET", "/v1/memory/ns/alice/%2e%2e/%2e%2e/%2e%2e/admin"),
    ("GET", "/v1/http:%2F%2Fevil.example/admin"),
    ("GET", "/v1/http://evil.example/../admin"),
]


def test_the_pass_through_never_reaches_past_v1(
    gateway: GatewayProcess, upstream: tuple[FakeUpstream, str]
) -> None:
    """The traversal family, as raw request lines: each is refused with an OpenAI error, and
    the upstream receives no request outside its /v1 (with the gateway's upstream key)."""
    fake = upstream[0]
    before = len(fake.requests)
    for method, target in TRAVERSALS:
        status, body = raw_request(gateway, method, target, b'{"model": "fake-model"}')
        assert status in (400, 404), (target, status, body)
        assert set(body["error"]) == {"message", "type", "param", "code"}, (target, body)
    received = fake.requests[before:]
    outside = [r.path for r in received if not r.path.startswith("/v1/") or ".." in r.path]
    assert outside == []
    # a normal pass-through still passes, and the namespace parameter stays with the gateway
    status, _ = raw_request(
        gateway,
        "POST",
        "/v1/memory/ns/alice/embeddings?namespace=x&a=b%20c",
        b'{"model": "fake-model", "input": "hi"}',
    )
    assert status == 200
    assert fake.requests[-1].path == "/v1/embeddings"
    assert fake.requests[-1].query == "a=b%20c"


def test_forwarded_addresses_are_not_believed_by_default(keyed_gateway: GatewayProcess) -> None:
    """Wrong keys under 30 made-up X-Forwarded-For addresses are one client (the socket's):
    throttled after auth.failed_keys_per_minute (20), and the throttled address cannot get
    through by naming another (server.trusted_proxies is empty unless configured)."""
    codes = [
        httpx.get(
            f"{keyed_gateway.url}/v1/memory/memories",
            headers={"authorization": f"Bearer xffguess-{i}", "x-forwarded-for": f"10.0.0.{i}"},
        ).status_code
        for i in range(30)
    ]
    assert codes == [401] * 20 + [429] * 10
