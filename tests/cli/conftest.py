"""Fixtures of the command line tests: the end-to-end lab (embedded xenstored, libxl layouts)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_root, require_tool
from e2e.lab import AgentProcess, Lab, lab_context


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """Embedded xenstored (dom0 + guests 1-3 sockets) and a toolstack; no kernel devices."""
    with lab_context(tmp_path, with_netns=False) as world:
        yield world


@pytest.fixture
def netlab(tmp_path: Path) -> Iterator[Lab]:
    """The same with a namespace per domain and a veth pair per vif (root, ip, ethtool)."""
    require_root()
    require_tool("ip", "iproute2")
    require_tool("ethtool", "ethtool")
    with lab_context(tmp_path, with_netns=True) as world:
        yield world


class Processes:
    """``xenoffload`` processes a test starts; every one is stopped when the test ends."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[AgentProcess] = []

    def start(self, name: str, *args: str) -> AgentProcess:
        process = AgentProcess(list(args), self.tmp / f"{name}.log")
        self.started.append(process)
        return process


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        for process in started.started:
            process.stop()
