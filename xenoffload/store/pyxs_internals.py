"""Every name of pyxs' internals that PyxsStore relies on, in one place, checked at import.

PyxsStore builds packets and awaits replies itself instead of going through ``pyxs.Client``'s
methods (that is how it contains pyxs' hazards, see :mod:`xenoffload.store.pyxs_store`), so it
touches names pyxs does not promise to keep: the private ``pyxs._internal.Packet`` and its
``_make``, the router's reply table, send lock, monitors, thread, terminator sockets and
connection, the Unix socket transport's socket, a reply
variable's condition and target, a monitor's event queue and a connection's transport. Each is
reached through a function of this module, and importing it checks every one of them against
the installed pyxs: a different pyxs fails at once with an ImportError naming the version this
code was written for, instead of misbehaving later.
"""

from __future__ import annotations

import importlib.metadata
import queue
import threading
from typing import Any

import pyxs.client
import pyxs.connection

__all__ = [
    "PYXS_VERSION",
    "Packet",
    "connection_transport",
    "make_packet",
    "monitor_events",
    "pending_replies",
    "reply_condition",
    "reply_packet",
    "router_connection",
    "router_monitors",
    "router_terminator",
    "router_waker",
    "send_lock",
    "set_monitor_events",
    "transport_socket",
    "router_thread",
    "wake_router",
]

#: The pyxs release whose internals this module was checked against.
PYXS_VERSION = "0.4.1"


def _installed_version() -> str:
    try:
        return importlib.metadata.version("pyxs")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _unsupported(missing: str) -> ImportError:
    return ImportError(
        f"xenoffload needs pyxs {PYXS_VERSION}: the installed pyxs ({_installed_version()}) "
        f"lacks {missing}, which xenoffload.store.pyxs_store relies on")


try:
    from pyxs._internal import Packet
except ImportError as err:  # pragma: no cover - depends on the installed pyxs
    raise _unsupported("pyxs._internal.Packet") from err


def _check() -> None:
    """Raise ImportError unless every internal name used below exists in the installed pyxs."""
    if not callable(getattr(Packet, "_make", None)):
        raise _unsupported("Packet._make")
    if not isinstance(getattr(pyxs.client.Router, "is_connected", None), property):
        raise _unsupported("Router.is_connected")
    router = pyxs.client.Router(None)  # builds its attributes; no thread starts, no I/O
    try:
        for name in ("rvars", "thread", "r_terminator", "w_terminator", "connection",
                     "send_lock", "monitors"):
            if not hasattr(router, name):
                raise _unsupported(f"Router.{name}")
        if not isinstance(router.rvars, dict) or not isinstance(router.thread, threading.Thread):
            raise _unsupported("Router.rvars as a dict and Router.thread as a Thread")
    finally:
        router.r_terminator.close()
        router.w_terminator.close()
    rvar = pyxs.client.RVar()
    if not hasattr(rvar, "condition") or not hasattr(rvar, "target"):
        raise _unsupported("RVar.condition and RVar.target")
    if not isinstance(getattr(pyxs.client.Monitor(None), "events", None), queue.Queue):
        raise _unsupported("Monitor.events as a queue.Queue")
    if not hasattr(pyxs.connection.UnixSocketConnection("/nonexistent"), "transport"):
        raise _unsupported("PacketConnection.transport")
    if not isinstance(getattr(pyxs.connection, "_UnixSocketTransport", None), type):
        raise _unsupported("connection._UnixSocketTransport")


_check()


def make_packet(op: int, req_id: int, tx_id: int, payload: bytes) -> Any:
    """Return a pyxs Packet without pyxs' validation (which refuses empty and non-printable
    values and the message types pyxs does not know)."""
    return Packet._make((op, req_id, tx_id, len(payload), payload))


def pending_replies(router: Any) -> dict[int, Any]:
    """The router's table of reply variables by request id (requests in flight)."""
    replies: dict[int, Any] = router.rvars
    return replies


def send_lock(router: Any) -> threading.Lock:
    """The lock the router holds while it registers a reply variable and writes a packet."""
    lock: threading.Lock = router.send_lock
    return lock


def router_terminator(router: Any) -> Any:
    """The reading end of the router's terminator socket pair (its loop selects on it)."""
    return router.r_terminator


def router_waker(router: Any) -> Any:
    """The writing end of the router's terminator socket pair."""
    return router.w_terminator


def router_monitors(router: Any) -> dict[bytes, list[Any]]:
    """The router's monitors by wire token (a defaultdict: read it with ``get``)."""
    monitors: dict[bytes, list[Any]] = router.monitors
    return monitors


def transport_socket(transport: Any) -> Any:
    """The socket of a Unix-socket transport, None for any other transport (XenBus)."""
    if isinstance(transport, pyxs.connection._UnixSocketTransport):
        return getattr(transport, "sock", None)
    return None


def router_thread(router: Any) -> threading.Thread:
    """The router's receiving thread (it dies when the connection is lost)."""
    thread: threading.Thread = router.thread
    return thread


def router_connection(router: Any) -> Any:
    """The connection the router owns."""
    return router.connection


def wake_router(router: Any) -> None:
    """Make the router thread leave its loop (its terminator socket). Raises OSError if the
    socket is already closed."""
    router.w_terminator.sendall(b"\0")


def reply_condition(rvar: Any) -> threading.Condition:
    """The condition a reply variable is notified on when its reply arrives."""
    condition: threading.Condition = rvar.condition
    return condition


def reply_packet(rvar: Any) -> Any:
    """The reply packet of a reply variable, None until it arrived."""
    return rvar.target


def monitor_events(monitor: Any) -> queue.Queue[Any]:
    """The queue the router puts a monitor's watch events on."""
    events: queue.Queue[Any] = monitor.events
    return events


def set_monitor_events(monitor: Any, events: Any) -> None:
    """Replace the queue the router puts a monitor's watch events on (before any watch): any
    object with pyxs' ``put``."""
    monitor.events = events


def connection_transport(connection: Any) -> Any:
    """The socket or device wrapper a pyxs connection reads from (None when closed)."""
    return connection.transport
