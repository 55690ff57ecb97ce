"""XenbusState: the nine device states of Xen's io/xenbus.h and their strict parsing."""

from __future__ import annotations

import enum

__all__ = ["XenbusState", "parse_state"]


class XenbusState(enum.IntEnum):
    """A split driver's connection state, as each end writes it (decimal) into its ``state``."""

    UNKNOWN = 0
    INITIALISING = 1
    INIT_WAIT = 2
    INITIALISED = 3
    CONNECTED = 4
    CLOSING = 5
    CLOSED = 6
    RECONFIGURING = 7
    RECONFIGURED = 8

    @property
    def wire(self) -> bytes:
        """The node value for this state, e.g. ``b"4"``."""
        return str(int(self)).encode()

    def __str__(self) -> str:
        return _NAMES[self]


_NAMES = {
    XenbusState.UNKNOWN: "Unknown",
    XenbusState.INITIALISING: "Initialising",
    XenbusState.INIT_WAIT: "InitWait",
    XenbusState.INITIALISED: "Initialised",
    XenbusState.CONNECTED: "Connected",
    XenbusState.CLOSING: "Closing",
    XenbusState.CLOSED: "Closed",
    XenbusState.RECONFIGURING: "Reconfiguring",
    XenbusState.RECONFIGURED: "Reconfigured",
}

_BY_WIRE = {state.wire: state for state in XenbusState}


def parse_state(raw: bytes | None) -> XenbusState | None:
    """Return the state a ``state`` node holds, or None if it is not exactly one of the nine
    decimal values ("0".."8"). A missing node (``raw is None``) reads as UNKNOWN, as the Linux
    xenbus core treats it.

    Linux reads states with ``%d`` and so would accept "4\\n" or "04"; xenoffload does not: a
    value no stock driver writes is a malformed peer, handled by the caller as such.
    """
    if raw is None:
        return XenbusState.UNKNOWN
    return _BY_WIRE.get(raw)
