"""Each benchmark's ``--quick`` smoke run (small counts, bounded, on loopback): the scripts in
bench/ keep working as the code they measure changes. Figures are not checked here: they are
measured by hand (docs/performance.md, docs/recall.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# The LoCoMo development subset lies beside the project (never inside it: its license).
LOCOMO = next(
    (
        path
        for path in (
            ROOT.parent / "shared" / "locomo" / "locomo-dev.json",
            Path("/work/shared/locomo/locomo-dev.json"),
        )
        if path.is_file()
    ),
    None,
)

SCRIPTS = [
    ("load.py",),
    ("fleet.py",),
    ("ab.py", str(ROOT), str(ROOT)),
    ("chat_cpu.py",),
    ("import_rate.py",),
    ("history_check.py",),
    ("conversation_check.py",),
    ("locomo.py", "LOCOMO"),
    ("recall_offline.py", "LOCOMO", "--cache", "TMP"),
]


@pytest.mark.parametrize("command", SCRIPTS, ids=[c[0] for c in SCRIPTS])
def test_a_benchmark_runs_quick(command: tuple[str, ...], tmp_path: Path) -> None:
    if "LOCOMO" in command and LOCOMO is None:
        pytest.skip("the LoCoMo development subset is not on this machine")
    args = [str(LOCOMO) if a == "LOCOMO" else str(tmp_path) if a == "TMP" else a for a in command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMGATE_")}
    done = subprocess.run(
        [sys.executable, *args, "--quick"],
        cwd=ROOT / "bench",
        env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.strip(), done.stderr[-2000:]  # it printed its report
