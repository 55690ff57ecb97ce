"""A readable file descriptor that says "something happened": a non-blocking pipe rung (one
byte written) by whoever queues work and cleared (drained) by the one thread that takes it.

A store rings its doorbell when a watch event is queued or the connection is lost, so a
caller can sleep in one ``poll`` on it beside other descriptors (a signal's self-pipe) with no
timer at all. Ringing an already rung doorbell writes nothing, so a burst of events costs one
``write`` and one ``read``.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["Doorbell"]


class Doorbell:
    """A self-pipe: :meth:`ring` from any thread, :meth:`clear` then look for work from the
    waiting one (clear first: work queued after the look rings again)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._rung = False
        self._closed = False

    def fileno(self) -> int:
        """The descriptor to poll for reading."""
        return self._read

    @property
    def write_fd(self) -> int:
        """The writing end (e.g. for :func:`signal.set_wakeup_fd`)."""
        return self._write

    def ring(self) -> None:
        """Make the descriptor readable (once; a full pipe is readable already)."""
        if self._rung or self._closed:
            return
        self._rung = True
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write, b"\0")

    def clear(self) -> None:
        """Drain the pipe: the descriptor is no longer readable until the next ring."""
        self._rung = False
        if self._closed:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._read, 4096):
                pass

    def close(self) -> None:
        """Close both ends. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)
