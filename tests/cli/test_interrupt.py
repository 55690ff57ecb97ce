"""Ctrl-C in the commands that run a while: one line, exit 130, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from e2e.lab import wait_until

from xenoffload.cli import EXIT_INTERRUPTED


def _interrupt_when(args: list[str], started: object) -> subprocess.CompletedProcess[str]:
    """Run ``python -m xenoffload ARGS``; once ``started()`` is true, Ctrl-C (SIGINT)."""
    process = subprocess.Popen([sys.executable, "-m", "xenoffload", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        assert callable(started)
        wait_until(started, 30, "the command under way")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def test_ctrl_c_in_conformance_exits_130_with_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    done = _interrupt_when(["conformance", "--role", "backend", "--scenario",
                            "R9-keys-before-state", "--impl",
                            f"touch {marker}; exec sleep 60"], marker.exists)
    assert done.returncode == EXIT_INTERRUPTED, done.stderr
    assert done.stderr.strip().splitlines() == ["xenoffload: interrupted"]


def test_ctrl_c_in_demo_exits_130_with_one_line(tmp_path: Path) -> None:
    log = tmp_path / "out"
    deadline = time.monotonic() + 30
    before = set(Path(tempfile.gettempdir()).glob("xenoffload-demo-*"))

    def demo_started() -> bool:
        return log.exists() and "created vif 1/1" in log.read_text()

    process = subprocess.Popen([sys.executable, "-m", "xenoffload", "demo", "--dry-run"],
                               stdout=open(log, "w"), stderr=subprocess.PIPE, text=True,  # noqa: SIM115
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        wait_until(demo_started, max(1.0, deadline - time.monotonic()), "the demo under way")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == EXIT_INTERRUPTED, stderr
    # (the agents' own log lines may come before it)
    assert stderr.strip().splitlines()[-1] == "xenoffload: interrupted"
    assert "Traceback" not in stderr
    assert set(Path(tempfile.gettempdir()).glob("xenoffload-demo-*")) == before
