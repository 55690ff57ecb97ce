"""Fixtures of the end-to-end tests: a lab with or without real veth devices in namespaces."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_root, require_tool

from .lab import Lab, lab_context


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
    assert shutil.which("ip")
    with lab_context(tmp_path, with_netns=True) as world:
        yield world
