"""The official ``openai`` Node SDK (tests/node, pinned in its package-lock.json) against the
gateway: ``node tests/node/sdk.mjs`` with a path-form namespace base URL."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import GatewayProcess
from tests.fake_upstream import FakeUpstream

pytestmark = pytest.mark.slow

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "Node.js is not installed: install Node.js 18 or later (apt-get install nodejs)"
        )
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").is_file():
        pytest.fail(
            "the openai Node SDK is not installed: run `npm ci --prefix tests/node` "
            "(from the repository root)"
        )
    return node


def test_node_sdk_plain_and_streamed(
    gateway: GatewayProcess, upstream: tuple[FakeUpstream, str]
) -> None:
    fake, _ = upstream
    node = node_binary()
    name = "node-" + uuid.uuid4().hex[:8]
    before = len(fake.requests)
    result = subprocess.run(
        [node, str(NODE_DIR / "sdk.mjs"), f"{gateway.url}/v1/memory/ns/{name}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["plain"] == {
        "content": "echo: My dog is called Pixel.",
        "finish_reason": "stop",
        "namespace": name,
        "recalled": "0",
    }
    assert out["stream"]["content"] == "echo: What is my dog called?"
    assert out["stream"]["finish_reason"] == "stop"
    assert out["stream"]["chunks"] > 2  # relayed chunk by chunk

    plain, streamed = [r for r in fake.requests[before:] if r.path.endswith("/chat/completions")]
    assert plain.headers["authorization"] == "Bearer sk-e2e-upstream"  # the gateway's key
    assert plain.body["messages"] == [{"role": "user", "content": "My dog is called Pixel."}]
    assert streamed.body["stream"] is True
    memory, question = streamed.body["messages"]
    assert memory["role"] == "system"
    assert "My dog is called Pixel." in memory["content"]  # recalled from the first request
    assert question == {"role": "user", "content": "What is my dog called?"}
