"""The data dir: one gateway process at a time; queues of replaced gateways adopted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from memory.datadir import DataDir, DataDirInUse, orphans, resolve
from memory.outbox import Outbox
from memory.records import Memory


def mem(mid: str, ns: str = "a") -> Memory:
    return Memory(id=mid, namespace=ns, content=f"text {mid}", created_at=1.0)


def test_a_second_claim_is_refused_with_a_message(tmp_path: Path) -> None:
    first = DataDir(tmp_path / "d")
    first.claim()
    # another process tries the same folder
    probe = (
        "import sys; from pathlib import Path; from memory.datadir import DataDir\n"
        "try:\n    DataDir(Path(sys.argv[1])).claim()\nexcept Exception as e:\n"
        "    print(type(e).__name__, e); sys.exit(3)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "d")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 3
    assert "DataDirInUse" in out.stdout
    assert "in use by another gateway process (pid" in out.stdout
    first.release()
    again = DataDir(tmp_path / "d")
    again.claim()  # free again
    again.release()


def test_the_queue_of_a_gone_gateway_is_adopted_once(tmp_path: Path) -> None:
    template = str(tmp_path / "data" / "{hostname}")
    gone = tmp_path / "data" / "replica-old"
    alive = tmp_path / "data" / "replica-alive"
    for folder, ids in ((gone, ["1", "2"]), (alive, ["3"])):
        box = Outbox(folder / "outbox.sqlite3")
        box.put([mem(i) for i in ids], [100.0] * len(ids))
        box.close()
    holder = DataDir(alive)
    holder.claim()  # a live replica: its queue is its own
    mine = resolve(template)
    me = DataDir(mine)
    me.claim()
    box = Outbox(mine / "outbox.sqlite3")
    box.put([mem("1")])  # already here (moved before a crash): not duplicated
    with orphans(template, mine) as queues:
        assert queues == [gone / "outbox.sqlite3"]
        assert box.adopt(queues[0]) == 2
    assert not (gone / "outbox.sqlite3").exists()
    assert sorted(item.memory.id for item in box.take(10)) == ["1", "2"]
    assert [item.enqueued_at for item in box.take(10) if item.memory.id == "2"] == [100.0]
    with orphans(template, mine) as queues:
        assert queues == []
    with orphans(str(mine), mine) as queues:  # no pattern: nothing to adopt
        assert queues == []
    holder.release()
    me.release()
    box.close()


def test_the_gateway_stops_at_once_on_a_data_dir_in_use(tmp_path: Path) -> None:
    from litestar.testing import TestClient

    from gateway.app import create_app
    from tests.conftest import make_settings
    from tests.fakes import FakeEmbedder, MemStore

    settings = make_settings(tmp_path / "shared")
    first = create_app(settings, store=MemStore(), embedder=FakeEmbedder())
    second = create_app(settings, store=MemStore(), embedder=FakeEmbedder())
    with TestClient(first):
        with pytest.raises(ExceptionGroup) as info, TestClient(second):
            pass
        assert info.group_contains(DataDirInUse, match="in use by another gateway process")
