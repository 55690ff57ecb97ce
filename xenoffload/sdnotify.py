"""Tell the service manager how a daemon is doing: systemd's sd_notify protocol, no libsystemd.

A service started with ``Type=notify`` finds ``$NOTIFY_SOCKET`` in its environment: a Unix
datagram socket path, or an abstract socket name when it starts with ``@``. One datagram of
newline-separated ``KEY=VALUE`` assignments reports a state: ``READY=1`` once the service
serves, ``STOPPING=1`` when it begins to shut down, ``STATUS=...`` a line of free text for
``systemctl status``. Without ``$NOTIFY_SOCKET`` (not under systemd) nothing is sent.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping

__all__ = ["notify", "ready", "status", "stopping"]


def _address(name: str) -> str | bytes:
    """The socket address of ``$NOTIFY_SOCKET``: ``@name`` is the abstract socket ``\\0name``."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def notify(assignments: Mapping[str, str], environ: Mapping[str, str] | None = None) -> bool:
    """Send ``assignments`` (e.g. ``{"READY": "1"}``) to ``$NOTIFY_SOCKET``; return whether a
    datagram was sent (False without a notify socket, or when it cannot be reached: a daemon
    must not fail because its manager went away).

    Raises ValueError for a key or value holding a newline, or a key holding ``=``.
    """
    for key, value in assignments.items():
        if not key or "=" in key or "\n" in key or "\n" in value:
            raise ValueError(f"not a notify assignment: {key!r}={value!r}")
    env = os.environ if environ is None else environ
    name = env.get("NOTIFY_SOCKET")
    if not name or name in ("@",):
        return False
    message = "\n".join(f"{key}={value}" for key, value in assignments.items()).encode()
    with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)) as sock:
        try:
            sock.sendto(message, _address(name))
        except OSError:
            return False
    return True


def ready(status_text: str | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Report ``READY=1`` (with a ``STATUS=`` line if given); return whether it was sent."""
    assignments = {"READY": "1"}
    if status_text is not None:
        assignments["STATUS"] = status_text
    return notify(assignments, environ)


def stopping(status_text: str | None = None,
             environ: Mapping[str, str] | None = None) -> bool:
    """Report ``STOPPING=1`` (with a ``STATUS=`` line if given: systemd keeps the last one
    after the process ended, and ``systemctl status`` shows it); return whether it was sent."""
    assignments = {"STOPPING": "1"}
    if status_text is not None:
        assignments["STATUS"] = status_text
    return notify(assignments, environ)


def status(text: str, environ: Mapping[str, str] | None = None) -> bool:
    """Report a ``STATUS=`` line; return whether it was sent."""
    return notify({"STATUS": text}, environ)
