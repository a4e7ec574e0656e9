"""Shared fixtures. Heavy ones (the real embedding model, processes) are session-scoped."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import respx
from litestar.testing import TestClient

from gateway.app import create_app
from gateway.config import KeySettings, Settings, UpstreamSettings, load_settings
from tests.fakes import FakeEmbedder, MemStore

UPSTREAM = "http://upstream.test/v1"


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` with exactly ``labels`` in a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def make_settings(data_dir: Path, **sections: dict[str, Any]) -> Settings:
    overrides: dict[str, dict[str, Any]] = {
        "store": {"data_dir": str(data_dir)},
        # retries as configured, without the waits
        "upstream": {"url": UPSTREAM, "api_key": "sk-upstream", "retry_backoff_seconds": 0.001},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_settings(None, {}, overrides)


class AppHarness:
    """A gateway app on fakes: in-memory store, hashed-word embedder, respx upstream."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        keys: tuple[KeySettings, ...] = (),
        upstreams: tuple[UpstreamSettings, ...] = (),
        **sections: dict[str, Any],
    ) -> None:
        self.store = MemStore()
        self.embedder = FakeEmbedder()
        self.upstream = respx.MockRouter(base_url=UPSTREAM, assert_all_called=False)
        self.settings = msgspec.structs.replace(
            make_settings(tmp_path, **sections), keys=keys, upstreams=upstreams
        )
        self.app = create_app(
            self.settings,
            store=self.store,
            embedder=self.embedder,
            transport=httpx.MockTransport(self.upstream.async_handler),
        )

    def client(self) -> TestClient[Any]:
        return TestClient(self.app, raise_server_exceptions=False)


@pytest.fixture
def harness(tmp_path: Path) -> AppHarness:
    return AppHarness(tmp_path)


@pytest.fixture
def client(harness: AppHarness) -> Iterator[TestClient[Any]]:
    with harness.client() as c:
        yield c


def completion(text: str, model: str = "gpt-test") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
