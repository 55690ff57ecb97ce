"""Giving up a caller's standard streams: what a forked daemon or background child does so
that it holds no terminal and no caller's pipe open (a hotplug runner, a shell's `$(...)`,
waits until every writer of its pipe has closed it)."""

from __future__ import annotations

import os

__all__ = ["detach_stdio"]


def detach_stdio(log_path: str | None) -> None:
    """Point stdin at /dev/null and stdout/stderr at ``log_path`` (appended, created 0640) or,
    without one, at /dev/null."""
    null = os.open(os.devnull, os.O_RDWR)
    target = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640) \
        if log_path else null
    os.dup2(null, 0)
    os.dup2(target, 1)
    os.dup2(target, 2)
    for fd in {null, target}:
        os.close(fd)
