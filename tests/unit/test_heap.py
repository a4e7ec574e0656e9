from __future__ import annotations

import gc
import socket
import weakref
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from gateway import server
from gateway.config import load_settings
from memory.heap import freeze_heap
from memory.process_store import ProcessStore
from tests.fakes import FreezeCountStore


class Node:
    other: Any = None


def test_freezing_the_heap_collects_its_garbage_first() -> None:
    cycle = Node()
    cycle.other = cycle  # garbage once dropped, that only the collector frees
    dead = weakref.ref(cycle)
    del cycle
    before = gc.get_freeze_count()
    try:
        freeze_heap()
        assert dead() is None  # collected, not frozen for ever
        assert gc.get_freeze_count() > before
        assert gc.get_freeze_count() >= len(gc.get_objects())  # nothing left to walk but new
    finally:
        gc.unfreeze()


def test_the_served_app_freezes_its_heap_once_started(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[Any] = []

    def run(self: uvicorn.Server, sockets: list[socket.socket]) -> None:
        started.append(self)
        for sock in sockets:
            sock.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setattr(server, "setup_logging", lambda settings: None)  # pytest's stays
    settings = load_settings(
        None, {}, {"server": {"port": 0}, "store": {"data_dir": str(tmp_path)}}
    )
    server.serve(settings)
    (served,) = started
    assert freeze_heap in served.config.app.on_startup


def test_the_store_process_freezes_its_heap_once_the_store_is_open(tmp_path: Path) -> None:
    store = ProcessStore(FreezeCountStore, lock_path=tmp_path / "store.lock")
    try:
        assert store.count("any") > 1000  # its interpreter, the imports, the store
    finally:
        store.close()
