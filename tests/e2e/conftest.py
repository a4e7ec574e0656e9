"""End-to-end fixtures: the gateway as a subprocess (``memgate serve``) on a free loopback
port, in front of the fake upstream served on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fake_upstream import FakeUpstream, free_port, serve_in_thread


@dataclass
class GatewayProcess:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        code = int(self.process.returncode)
        # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal
        return 0 if code == -signal.SIGTERM and "memgate stopped" in self.log() else code


def start_gateway(
    data_dir: Path,
    upstream_url: str,
    *extra: str,
    env: dict[str, str] | None = None,
    ready_headers: dict[str, str] | None = None,
) -> GatewayProcess:
    """``memgate serve`` on a free port, once its ``/readyz`` answers 200 (asked with
    ``ready_headers``: a key, under ``auth.protect_operations``)."""
    port = free_port()
    log_path = data_dir.parent / f"gateway-{port}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MEMGATE_", "OPENAI_"))}
    env = {**base, **(env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "gateway.cli", "serve",
                "--port", str(port),
                "--data-dir", str(data_dir),
                "--upstream-url", upstream_url,
                "--upstream-api-key", "sk-e2e-upstream",
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
    gw = GatewayProcess(f"http://127.0.0.1:{port}", data_dir, process, log_path)
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited early:\n{gw.log()}")
        try:
            if httpx.get(gw.url + "/readyz", headers=ready_headers, timeout=2).status_code == 200:
                return gw
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            gw.stop()
            raise RuntimeError(f"gateway not ready in time:\n{gw.log()}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def upstream() -> Iterator[tuple[FakeUpstream, str]]:
    app = FakeUpstream()
    with serve_in_thread(app) as url:
        yield app, url + "/v1"


@pytest.fixture(scope="session")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: tuple[FakeUpstream, str]
) -> Iterator[GatewayProcess]:
    gw = start_gateway(tmp_path_factory.mktemp("e2e") / "data", upstream[1])
    yield gw
    assert gw.stop() == 0, gw.log()


# Gateway API keys of ``keyed_gateway``: an admin, a key for the ``team-*`` namespaces that
# may use the memory API but not erase, and one for the same namespaces without the memory API
# (memory chat only).
ADMIN_KEY = "mg-e2e-admin-key"
TEAM_KEY = "mg-e2e-team-key"
CHAT_KEY = "mg-e2e-chat-key"


@pytest.fixture(scope="session")
def keyed_gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: tuple[FakeUpstream, str]
) -> Iterator[GatewayProcess]:
    """A second gateway process that requires API keys (configured by their SHA-256)."""
    import hashlib

    root = tmp_path_factory.mktemp("e2e-keys")
    config = root / "memgate.toml"
    admin, team, chat = (
        hashlib.sha256(k.encode()).hexdigest() for k in (ADMIN_KEY, TEAM_KEY, CHAT_KEY)
    )
    config.write_text(
        f'[[keys]]\nname = "admin"\nkey_sha256 = "{admin}"\nadmin = true\n\n'
        f'[[keys]]\nname = "team"\nkey_sha256 = "{team}"\nnamespaces = ["team-*"]\n'
        "memory_api = true\n\n"
        f'[[keys]]\nname = "chat"\nkey_sha256 = "{chat}"\nnamespaces = ["team-*"]\n'
    )
    gw = start_gateway(root / "data", upstream[1], "--config", str(config))
    yield gw
    assert gw.stop() == 0, gw.log()
