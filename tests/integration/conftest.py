"""Integration fixtures: the real MiniLM model, real Chroma, real HTTP on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from memory.embedder import Embedder, SentenceTransformerEmbedder
from tests.fake_upstream import FakeUpstream, serve_in_thread
from tests.processes import ChromaServer


@pytest.fixture(scope="session")
def minilm() -> Embedder:
    """The product's default embedder (int8 ONNX MiniLM), made as the gateway makes it."""
    from gateway.app import open_embedder
    from gateway.config import Settings

    return open_embedder(Settings())


@pytest.fixture(scope="session")
def torch_minilm() -> SentenceTransformerEmbedder:
    """The full-precision model (``embedder.backend = "torch"``)."""
    return SentenceTransformerEmbedder()


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    server = ChromaServer(tmp_path_factory.mktemp("chroma-server") / "data").start()
    yield server
    server.stop()


@pytest.fixture
def fake_upstream() -> Iterator[tuple[FakeUpstream, str]]:
    app = FakeUpstream()
    with serve_in_thread(app) as url:
        yield app, url + "/v1"
