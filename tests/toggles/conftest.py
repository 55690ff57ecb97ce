"""Fixtures for the toggles tests: throwaway network namespaces with veth/tap devices.

Every namespace is named ``xo-test-<random>`` and deleted (with its devices) when the test
ends, pass or fail; the host's own interfaces are never touched.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator

import pytest
from conftest import require_root, require_system, require_tool

from xenoffload.toggles.netlink import NetlinkToggles

from .netns import Namespace


@pytest.fixture
def netns() -> Iterator[Namespace]:
    """A fresh namespace, deleted afterwards; skips (fails in CI) without root, ip, ethtool."""
    require_root()
    require_tool("ip", "iproute2")
    require_tool("ethtool", "ethtool")
    name = f"xo-test-{secrets.token_hex(4)}"
    created = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    require_system(created.returncode == 0, f"cannot create a network namespace: {created.stderr}")
    try:
        yield Namespace(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def toggles() -> Iterator[NetlinkToggles]:
    with NetlinkToggles() as netlink:
        yield netlink
