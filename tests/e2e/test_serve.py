"""Starting the gateway as a new user does: the install script, a port already in use, logs
on a terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import GatewayProcess
from tests.fake_upstream import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_install_runs_once_then_says_nothing() -> None:
    """``scripts/serve.sh`` runs ``scripts/install.sh`` at every start: after the first
    install it must neither run pip nor print anything."""
    first = subprocess.run(
        ["bash", "scripts/install.sh"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "BuildBackendWarning" not in first.stderr
    started = time.monotonic()
    again = subprocess.run(
        ["bash", "scripts/install.sh"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert time.monotonic() - started < 5
    assert again.stdout == ""
    assert again.stderr == ""


def test_a_port_in_use_is_one_clear_line_and_no_ready(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    port = gateway.url.rsplit(":", 1)[1]
    out = subprocess.run(
        [
            sys.executable, "-m", "gateway.cli", "serve", "--port", port,
            "--data-dir", str(tmp_path / "data"), "--upstream-url", "http://127.0.0.1:9/v1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: the address is in use" in out.stderr
    assert "memgate ready" not in out.stderr
    assert "Traceback" not in out.stderr


def test_logs_on_a_terminal_are_for_people(tmp_path: Path) -> None:
    """On a TTY: plain lines, no JSON and no terminal escapes; the ready line once bound."""
    main, child = pty.openpty()
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "gateway.cli", "serve", "--port", str(port),
            "--data-dir", str(tmp_path / "data"), "--upstream-url", "http://127.0.0.1:9/v1",
        ],
        stdin=child,
        stdout=child,
        stderr=child,
        env={k: v for k, v in os.environ.items() if not k.startswith("MEMGATE_")},
    )  # fmt: skip
    os.close(child)
    output = b""
    try:
        deadline = time.monotonic() + 120
        while b"memgate ready" not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1.0)
            if ready:
                try:
                    output += os.read(main, 4096)
                except OSError:
                    break
    finally:
        process.terminate()
        process.wait(60)
        os.close(main)
    text = output.decode(errors="replace")
    assert "memgate ready on http://127.0.0.1:" in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert not any(line.lstrip().startswith("{") for line in lines), text
    assert "\x1b[" not in text
