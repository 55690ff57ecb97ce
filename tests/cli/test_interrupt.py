"""Ctrl-C in the commands that run a while: one line, exit 130, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from e2e.lab import wait_until

from xenoffload.cli import EXIT_INTERRUPTED


def _interrupt_when(args: list[str], started: Callable[[Path], bool], tmp: Path,
                    **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m xenoffload ARGS`` (its stdout to a file in ``tmp``, ``env`` added to
    its environment); once ``started(file)`` is true, Ctrl-C (SIGINT)."""
    out = tmp / "stdout"
    with open(out, "w") as stdout:
        process = subprocess.Popen([sys.executable, "-m", "xenoffload", *args], stdout=stdout,
                                   stderr=subprocess.PIPE, text=True,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1", **env))
        try:
            wait_until(lambda: started(out), 30, "the command under way")
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    return subprocess.CompletedProcess(args, process.returncode, out.read_text(), stderr)


def test_ctrl_c_in_conformance_exits_130_with_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    done = _interrupt_when(["conformance", "--role", "backend", "--scenario",
                            "R9-keys-before-state", "--impl",
                            f"touch {marker}; exec sleep 60"],
                           lambda _out: marker.exists(), tmp_path)
    assert done.returncode == EXIT_INTERRUPTED, done.stderr
    assert done.stderr.strip().splitlines() == ["xenoffload: interrupted"]


def test_ctrl_c_in_demo_exits_130_with_one_line() -> None:
    # A TMPDIR of its own, so that what is left there is the demo's whatever other tests run
    # beside it; short, since the demo's sockets go under it and pytest's tmp_path (under
    # pytest-xdist) leaves too little of AF_UNIX's 108 bytes.
    with tempfile.TemporaryDirectory(prefix="xo-") as short:
        tmpdir = Path(short) / "tmp"
        tmpdir.mkdir()
        done = _interrupt_when(["demo", "--dry-run"],
                               lambda out: "created vif 1/1" in out.read_text(), Path(short),
                               TMPDIR=str(tmpdir))
        left = list(tmpdir.iterdir())
    assert done.returncode == EXIT_INTERRUPTED, done.stderr
    # (the agents' own log lines may come before it)
    assert done.stderr.strip().splitlines()[-1] == "xenoffload: interrupted"
    assert "Traceback" not in done.stderr
    assert not left  # its xenoffload-demo-* directory removed
