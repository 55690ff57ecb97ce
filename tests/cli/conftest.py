"""Fixtures of the command line tests: the end-to-end lab (embedded xenstored, libxl layouts)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.conftest import lab, netlab
from e2e.lab import AgentProcess

__all__ = ["Processes", "lab", "netlab", "processes"]  # lab, netlab: the end-to-end fixtures


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
