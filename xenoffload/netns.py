"""Stand-in devices for demos and tests: network namespaces joined by veth pairs (``ip``).

A namespace plays a domain (dom0 or a guest); a veth pair plays a vif: its dom0 end named
like netback's device (``vif1.0``), its guest end like netfront's (``eth0``). Only namespaces
created here are touched, and :class:`Namespaces` removes them all on exit.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import attrs

__all__ = ["Namespaces", "NetnsError", "netns_available"]


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message carries its stderr."""


def netns_available() -> bool:
    """True when this process can create namespaces and veth devices (root, ``ip`` found)."""
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20,
                          check=False)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@attrs.define
class Namespaces:
    """Namespaces created by this object; ``with`` removes every one of them."""

    prefix: str
    created: list[str] = attrs.field(factory=list)

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove_all()

    def add(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        _ip("netns", "add", name)
        self.created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def veth(self, netns_a: str, name_a: str, netns_b: str, name_b: str) -> None:
        """Create a veth pair ``name_a`` (in ``netns_a``) ↔ ``name_b`` (in ``netns_b``), up."""
        _ip("-n", netns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b,
            "netns", netns_b)
        _ip("-n", netns_a, "link", "set", name_a, "up")
        _ip("-n", netns_b, "link", "set", name_b, "up")

    def remove_all(self) -> None:
        while self.created:
            name = self.created.pop()
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=20,
                           check=False)
