"""XenStore over pyxs 0.4.1: :class:`PyxsStore` implements Store with a guard for every pyxs hazard.

pyxs provides the transport (Unix socket or /dev/xen/xenbus), the router thread that multiplexes
replies and events, and the packet type. Requests are built and awaited here rather than through
``pyxs.Client`` methods, which is how each hazard of pyxs 0.4.1 (found exercising it against a
wire-exact server; docs/xenstored.md, "PyxsStore and pyxs' hazards") is contained:

1. Connection loss kills the router thread and ``RVar.get()`` would block forever: every call
   waits on the reply's condition with a deadline and watches the router thread; loss or a
   timeout raises :class:`~xenoffload.xs.errors.StoreUnavailable` and the store is closed for
   good (reconnect by building a new one: :func:`connect_store`).
2. A reply with an unknown request id kills the router: same detection as (1).
3. ``Monitor.wait()`` spins on foreign events: events are taken from the monitor's queue with a
   timeout and filtered here; every watch gets a unique wire token.
4. pyxs registers a watch before the server accepts it and leaks it on EEXIST: registration is
   ours, undone when the server refuses, and a duplicate (path, token) is refused locally.
5. pyxs refuses non-printable bytes and (0.4.1) empty values: packets are built here, so any
   bytes can be written, and any bytes the server returns are read back unchanged.
6. ``Client.monitor()`` refuses XenBus connections: a ``Monitor`` is built directly.
7. Privileged calls are refused by pyxs unless /proc/xen/capabilities says control_d: they are
   sent as plain requests; xenstored decides.
8. Request ids would overflow uint32 and the global counter has no lock: ids come from a locked
   per-store counter wrapping at 2**32 and skipping ids still in flight.
9. Not pyxs' but Linux's: /dev/xen/xenbus (drivers/xen/xenbus) queues a request with its body
   still in the file's one message buffer, and its xenbus thread copies it to the ring later, so
   a request written before the previous one went out overwrites that one's body (seen in the
   Xen lab: pipelined READs arrived at xenstored as truncated paths, answered ENOENT). Over a
   XenBus connection requests go one at a time: each is written only once the previous one is
   answered. Over a Unix socket they are pipelined.

Everything above the wire (node operations, transactions, batches, DIRECTORY_PART for long
child lists, which pyxs lacks) is :class:`~xenoffload.store.adapter.StoreAdapter`'s, shared
with the in-memory store; this module only sends requests and waits for replies. The names of
pyxs' internals it needs (the private ``Packet``, the router's reply table, thread, terminator
and connection, a reply variable's condition and target, a monitor's queue, a connection's
transport) are all reached through :mod:`xenoffload.store.pyxs_internals`, which checks them
when it is imported.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import errno
import logging
import os
import queue
import select
import stat
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from pyxs.client import Client, Monitor, Router
from pyxs.connection import UnixSocketConnection, XenBusConnection
from pyxs.exceptions import ConnectionError as PyxsConnectionError
from pyxs.exceptions import PyXSError

from xenoffload.store import pyxs_internals as internals
from xenoffload.store.adapter import StoreAdapter
from xenoffload.store.doorbell import Doorbell
from xenoffload.store.location import default_xenstore_path
from xenoffload.xs import requests
from xenoffload.xs.errors import StoreUnavailable, XenStoreError
from xenoffload.xs.requests import Request
from xenoffload.xs.values import WatchEvent
from xenoffload.xs.wire import HEADER, PAYLOAD_MAX, Op, op_name

__all__ = [
    "DEFAULT_TIMEOUT",
    "PyxsStore",
    "connect_store",
]

log = logging.getLogger(__name__)

#: Seconds a request may take before the store gives up on the connection.
DEFAULT_TIMEOUT = 10.0
_POLL = 0.05
#: Most bytes the router thread takes from a Unix socket at once.
_RECV_SIZE = 1 << 16


def connect_store(path: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> PyxsStore:
    """Connect to XenStore at ``path`` (default
    :func:`~xenoffload.store.location.default_xenstore_path`) and return the store.

    A character device (or a path under /dev/ or /proc/) is opened as XenBus, anything else as
    a Unix socket. Raises StoreUnavailable when the connection cannot be made.
    """
    return PyxsStore(path, timeout=timeout)


def _connect_problem(path: str, err: BaseException) -> str:
    """Why a connection to ``path`` failed, in words of the path itself where they say more
    than the error (a regular file or a directory is "not a socket", not "Connection
    refused")."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return error.strerror or str(error)
    if stat.S_ISDIR(mode):
        return "a directory, not a socket"
    if not stat.S_ISSOCK(mode) and not stat.S_ISCHR(mode):
        return "not a socket (nor the xenbus device)"
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror + (" (nothing listens there)"
                                     if cause.errno == errno.ECONNREFUSED else "")
        cause = cause.__cause__ or cause.__context__
    text = str(err)
    for number, name in ((errno.ECONNREFUSED, "Connection refused (nothing listens there)"),
                         (errno.EACCES, "Permission denied"), (errno.ENOENT,
                                                               "No such file or directory")):
        if f"({number}, " in text:
            return name
    return text


class _AnyOpReceiver:
    """Receive side accepting every message type: pyxs' own ``recv`` builds a validated
    Packet and raises (killing the router) on types it does not know, such as the replies to
    DIRECTORY_PART and RESET_WATCHES."""

    path: str
    if TYPE_CHECKING:  # provided by the pyxs connection class
        is_connected: bool

        def close(self, silent: bool = True) -> None: ...

    def recv(self) -> Any:
        if not self.is_connected:
            raise PyxsConnectionError("not connected")
        transport = internals.connection_transport(self)
        try:
            header = transport.recv(HEADER.size)
            op, req_id, tx_id, size = HEADER.unpack(header)
            payload = transport.recv(size) if size else b""
        except (OSError, struct.error) as err:
            self.close()
            raise PyxsConnectionError(f"error while reading from {self.path!r}: {err}") from err
        return internals.make_packet(op, req_id, tx_id, payload)

    def send(self, packet: Any) -> None:
        """Send one packet in one write (pyxs writes its header and body apart)."""
        self.send_frames(_frame(packet))

    def send_frames(self, data: bytes) -> None:
        """Write encoded messages (one or a pipelined batch) in one ``sendall``."""
        if not self.is_connected:
            raise PyxsConnectionError("not connected")
        try:
            internals.connection_transport(self).send(data)
        except OSError as err:
            if err.errno in (errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE):
                self.close()
            raise PyxsConnectionError(f"error while writing to {self.path!r}: {err}") from err


def _frame(packet: Any) -> bytes:
    """A packet's bytes on the wire: header and body."""
    payload: bytes = packet.payload
    return HEADER.pack(packet.op, packet.rq_id, packet.tx_id, len(payload)) + payload


class _UnixConnection(_AnyOpReceiver, UnixSocketConnection):  # type: ignore[misc]
    """pyxs' Unix socket connection with :class:`_AnyOpReceiver`."""


class _XenBusConnection(_AnyOpReceiver, XenBusConnection):  # type: ignore[misc]
    """pyxs' XenBus connection with :class:`_AnyOpReceiver`."""


class _Router(Router):  # type: ignore[misc]
    """pyxs' router; its thread ends quietly (instead of dumping a traceback) when the
    connection is lost or the server breaks the protocol. Callers notice the dead thread.

    Over a Unix socket its loop reads whatever the socket has (up to 64 KiB) in one ``recv``
    and dispatches every whole message in it, as pyxs' loop does one message at a time with a
    ``select`` and two ``recv`` calls each (a batch's replies and a burst of events come
    together). Over XenBus pyxs' own loop runs."""

    #: Called when the thread ends (the store rings its doorbell: a waiter sees the loss).
    on_exit: Callable[[], None] | None = None

    def __call__(self) -> None:
        try:
            sock = internals.transport_socket(
                internals.connection_transport(internals.router_connection(self)))
            if sock is None:
                super().__call__()
            else:
                self._loop(sock)
        except (PyXSError, OSError, ValueError) as err:
            log.debug("pyxs router for %s stopped: %r", internals.router_connection(self), err)
        finally:
            if self.on_exit is not None:
                self.on_exit()

    def _loop(self, sock: Any) -> None:
        """pyxs' loop (``Router.__call__``), reading many messages per ``recv``."""
        connection = internals.router_connection(self)
        terminator = internals.router_terminator(self)
        buffer = bytearray()
        try:
            while True:
                ready = select.select([sock, terminator], [], [])[0]
                if terminator in ready:
                    break
                chunk = sock.recv(_RECV_SIZE)
                if not chunk:
                    raise PyxsConnectionError(f"{connection.path!r} closed the connection")
                buffer += chunk
                offset, end = 0, len(buffer)
                while end - offset >= HEADER.size:
                    op, req_id, tx_id, size = HEADER.unpack_from(buffer, offset)
                    start = offset + HEADER.size
                    if end - start < size:
                        break
                    self._dispatch(op, req_id, tx_id, bytes(buffer[start:start + size]))
                    offset = start + size
                del buffer[:offset]
        finally:
            connection.close()
            internals.router_terminator(self).close()
            internals.router_waker(self).close()

    def send_batch(self, frames: bytes, ids: Sequence[int]) -> list[_Reply]:
        """Write ``frames`` (the encoded requests of ``ids``, in order) in one write (the
        connection's ``send_frames``); return their reply variables, registered first (a
        reply may overtake the write). They share one condition: a batch costs one."""
        condition = threading.Condition()
        replies = [_Reply(condition) for _ in ids]
        pending = internals.pending_replies(self)
        with internals.send_lock(self):
            for req_id, reply in zip(ids, replies, strict=True):
                pending[req_id] = reply
            internals.router_connection(self).send_frames(frames)
        return replies

    def _dispatch(self, op: int, req_id: int, tx_id: int, payload: bytes) -> None:
        """What pyxs' loop does with a message: an event to the monitors of its token, a
        reply to the request waiting for it (an unknown id ends the loop, as in pyxs)."""
        if op == Op.WATCH_EVENT:
            parts = payload.split(b"\0")
            if len(parts) >= 2:
                event = (parts[0], parts[1])
                for monitor in internals.router_monitors(self).get(parts[1], ()):
                    internals.monitor_events(monitor).put(event)
            return
        rvar = internals.pending_replies(self).pop(req_id, None)
        if rvar is None:
            raise PyxsConnectionError(f"reply to unknown request id {req_id}")
        rvar.set(internals.make_packet(op, req_id, tx_id, payload))

class _Reply:
    """A reply variable as pyxs' router fills it (``set``; ``condition`` and ``target`` as
    pyxs' ``RVar``), sharing its condition with the rest of its batch. ``set`` notifies only
    when the waiting thread said it waits for this one (``wake``, set under the condition):
    a batch's earlier replies do not wake the thread that waits for its last."""

    __slots__ = ("condition", "target", "wake")

    def __init__(self, condition: threading.Condition) -> None:
        self.condition = condition
        self.target: Any = None
        self.wake = False

    def set(self, target: Any) -> None:
        with self.condition:
            self.target = target
            if self.wake:
                self.condition.notify_all()


class _RingingQueue:
    """A monitor's event queue (what pyxs' router puts a monitor's events on) that rings the
    store's doorbell on every event (a rung doorbell is not written again). A deque: the
    router thread appends, the store's reader pops, and neither takes a lock (pyxs' Queue
    took one and notified a condition per event)."""

    def __init__(self, doorbell: Doorbell) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._doorbell = doorbell

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self._items.append(item)
        self._doorbell.ring()

    def get_nowait(self) -> Any:
        """The oldest event. Raises queue.Empty when there is none."""
        try:
            return self._items.popleft()
        except IndexError:
            raise queue.Empty from None


def _is_xenbus(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return path.startswith(("/dev/", "/proc/"))


class _Pending(NamedTuple):
    """A request sent and not yet answered."""

    rvar: Any
    req_id: int
    request: Request


class PyxsStore(StoreAdapter):
    """A XenStore connection through pyxs; implements :class:`~xenoffload.store.base.Store`.

    ``path`` is a Unix socket or the XenBus device (default
    :func:`~xenoffload.store.location.default_xenstore_path`); ``timeout`` bounds every
    request. Thread-safe. After StoreUnavailable the store stays unusable: build a new one to
    reconnect.
    """

    def __init__(self, path: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 router: Router | None = None) -> None:
        super().__init__()
        self.path = path if path is not None else default_xenstore_path()
        self.timeout = timeout
        if router is None:
            connection = (_XenBusConnection(self.path) if _is_xenbus(self.path)
                          else _UnixConnection(self.path))
            router = _Router(connection)
        self._doorbell = Doorbell()
        if isinstance(router, _Router):
            router.on_exit = self._doorbell.ring
        self._router = router
        client = Client(router=router)
        try:
            client.connect()
        except (PyXSError, OSError) as err:
            with contextlib.suppress(OSError):
                internals.router_connection(router).close()
            raise StoreUnavailable(f"cannot connect to XenStore at {self.path}: "
                                   f"{_connect_problem(self.path, err)}") from err
        # Hazard 6: Client.monitor() refuses XenBus; a Monitor over a copy works everywhere.
        self._monitor = Monitor(copy.copy(client))
        self._events = _RingingQueue(self._doorbell)
        internals.set_monitor_events(self._monitor, self._events)
        self._in_flight = internals.pending_replies(router)
        self._router_thread = internals.router_thread(router)
        self._lock = threading.Lock()
        # Hazard 9: over XenBus, one request at a time (held from its write to its reply).
        self._one_at_a_time = threading.Lock() if isinstance(
            internals.router_connection(router), XenBusConnection) else None
        self._next_req_id = 0
        self._watch_serial = 0
        self._wire_tokens: dict[tuple[str, str], str] = {}
        self._watches: dict[bytes, tuple[str, str]] = {}
        self._broken: str | None = None

    def __repr__(self) -> str:
        return f"PyxsStore({self.path!r})"

    def __enter__(self) -> PyxsStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ the adapter's part

    def exchange(self, batch: Sequence[Request]) -> list[bytes | XenStoreError]:
        """Send every request, then wait for each reply, every wait bounded by ``timeout``:
        pipelined (none waits for a reply) over a Unix socket, one at a time over XenBus
        (hazard 9). Raises StoreUnavailable on connection loss, a timeout or a reply that does
        not match its request."""
        if not batch:
            return []
        if self._one_at_a_time is not None:
            replies: list[bytes | XenStoreError] = []
            for request in batch:
                with self._one_at_a_time:
                    replies.append(self._wait(self._send(request)))
            return replies
        if isinstance(self._router, _Router):
            pendings = self._send_batch(batch)
        else:
            pendings = [self._send(request) for request in batch]
        # xenstored answers in order: once the last reply is in, so are the others (one
        # wake-up per batch instead of one per reply; any order is still handled).
        last = self._wait(pendings[-1])
        replies = [self._wait(pending) for pending in pendings[:-1]]
        replies.append(last)
        return replies

    def watch(self, path: str, token: str) -> None:
        """Register a watch; EEXIST if this store already watches (path, token)."""
        with self._lock:
            if (path, token) in self._wire_tokens:
                raise XenStoreError("EEXIST", path, "WATCH")
            self._watch_serial += 1
            wire_token = f"{token}#{self._watch_serial}"
            wire_key = requests.encode_string(wire_token)  # what events carry back
            self._wire_tokens[(path, token)] = wire_token
            self._watches[wire_key] = (path, token)
        # Subscribe first: the initial event may overtake the WATCH reply.
        self._router.subscribe(wire_key, self._monitor)
        try:
            self.call(requests.watch(path, wire_token))
        except BaseException:
            self._forget_watch(path, token)  # hazard 4: no leaked registration
            raise

    def unwatch(self, path: str, token: str) -> None:
        """Remove a watch (ENOENT if this store has none for (path, token))."""
        with self._lock:
            wire_token = self._wire_tokens.get((path, token))
        if wire_token is None:
            raise XenStoreError("ENOENT", path, "UNWATCH")
        try:
            self.call(requests.unwatch(path, wire_token))
        finally:
            self._forget_watch(path, token)

    def event_fd(self) -> int:
        """A descriptor readable when an event is queued or the connection is lost: poll it,
        then take the events with ``next_events(0, ...)``."""
        return self._doorbell.fileno()

    def next_events(self, timeout: float | None, limit: int) -> list[WatchEvent]:
        """Wait at most ``timeout`` seconds for the first event of a current watch, then return
        it with every event already queued, up to ``limit``; an empty list on timeout. Raises
        StoreUnavailable when the connection is lost. The wait sleeps on the doorbell (rung by
        every event and by the router thread's end): no timer wakes it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events: list[WatchEvent] = []
        while True:
            self._doorbell.clear()  # first: an event queued after the look below rings again
            self._check_alive()
            while len(events) < limit:
                try:
                    raw_path, raw_token = self._events.get_nowait()
                except queue.Empty:
                    break
                with self._lock:
                    watched = self._watches.get(raw_token)
                if watched is not None:  # hazard 3: stale or foreign events are dropped here
                    events.append(WatchEvent(raw_path.decode("latin-1"), watched[1]))
            if events or len(events) >= limit:
                return events
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return events
            select.select([self._doorbell], [], [], wait)

    def close(self) -> None:
        """Close the connection; further calls raise StoreUnavailable. Idempotent."""
        with self._lock:
            if self._broken is None:
                self._broken = "store closed"
        self._terminate_router()
        if not self._router_thread.is_alive():
            self._doorbell.close()

    # ------------------------------------------------------------ extras

    def reset_watches(self) -> None:
        """RESET_WATCHES: the server forgets every watch and transaction of this connection."""
        super().reset_watches()
        with self._lock:
            watched = list(self._wire_tokens)
        for path, token in watched:
            self._forget_watch(path, token)

    def raw_request(self, op: int, payload: bytes, tx_id: int = 0) -> bytes:
        """Send any request (e.g. a hostile guest's bytes); return the reply payload.

        Raises XenStoreError for an ERROR reply (or E2BIG for a payload over 4096 bytes),
        StoreUnavailable on connection loss."""
        if len(payload) > PAYLOAD_MAX:
            raise XenStoreError("E2BIG", None, op_name(op))
        return self.call(Request(op, tx_id, payload))

    # ------------------------------------------------------------ internals

    def _check_alive(self) -> None:
        if self._broken is not None:
            raise StoreUnavailable(self._broken)
        if not self._router_thread.is_alive() or not self._router.is_connected:
            self._fail("connection to XenStore lost")

    def _fail(self, reason: str) -> NoReturn:
        with self._lock:
            if self._broken is None:
                self._broken = reason
        self._terminate_router()
        raise StoreUnavailable(reason)

    def _terminate_router(self) -> None:
        """Stop the router thread without risking pyxs' unbounded join."""
        router, thread = self._router, self._router_thread
        with contextlib.suppress(OSError):
            if router.is_connected and thread.is_alive():
                internals.wake_router(router)
        if thread.is_alive() and thread is not threading.current_thread():
            thread.join(1.0)
        if thread.is_alive():
            with contextlib.suppress(OSError, AttributeError):
                internals.router_connection(router).close()

    def _take_req_id(self) -> int:
        with self._lock:
            req_id = self._next_req_id
            while req_id in self._in_flight:
                req_id = (req_id + 1) % 2**32
            self._next_req_id = (req_id + 1) % 2**32
            return req_id

    def _send(self, request: Request) -> _Pending:
        """Send one request; return what :meth:`_wait` needs to collect its reply."""
        self._check_alive()
        req_id = self._take_req_id()
        packet = internals.make_packet(request.op, req_id, request.tx_id, request.payload)
        try:
            rvar = self._router.send(packet)
        except (PyXSError, OSError) as err:
            self._in_flight.pop(req_id, None)
            self._fail(f"connection to XenStore lost: {err}")
        return _Pending(rvar, req_id, request)

    def _send_batch(self, batch: Sequence[Request]) -> list[_Pending]:
        """Send every request in one write; return what :meth:`_wait` needs for each."""
        self._check_alive()
        with self._lock:
            ids: list[int] = []
            req_id = self._next_req_id
            for _ in batch:  # ids wrap at 2**32 and skip those in flight (hazard 8)
                while req_id in self._in_flight:
                    req_id = (req_id + 1) % 2**32
                ids.append(req_id)
                req_id = (req_id + 1) % 2**32
            self._next_req_id = req_id
        pack = HEADER.pack
        frames = b"".join(pack(request.op, req_id, request.tx_id, len(request.payload)) +
                          request.payload for request, req_id in zip(batch, ids, strict=True))
        router = self._router
        assert isinstance(router, _Router)
        try:
            rvars = router.send_batch(frames, ids)
        except (PyXSError, OSError) as err:
            for req_id in ids:
                self._in_flight.pop(req_id, None)
            self._fail(f"connection to XenStore lost: {err}")
        return [_Pending(rvar, ident, request)
                for rvar, ident, request in zip(rvars, ids, batch, strict=True)]

    def _wait(self, pending: _Pending) -> bytes | XenStoreError:
        """Wait (bounded by ``timeout``) for the reply to a sent request; return its payload
        or the XenStoreError of an ERROR reply. Raises StoreUnavailable when the connection
        is lost or the daemon does not answer in time."""
        rvar, req_id, request = pending
        condition = internals.reply_condition(rvar)
        deadline = time.monotonic() + self.timeout
        with condition:
            while internals.reply_packet(rvar) is None:
                if isinstance(rvar, _Reply):
                    rvar.wake = True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._in_flight.pop(req_id, None)
                    self._fail(f"XenStore did not answer {request.name} within "
                               f"{self.timeout} s")
                if not self._router_thread.is_alive():
                    self._fail("connection to XenStore lost")
                condition.wait(min(remaining, _POLL))
        reply = internals.reply_packet(rvar)
        if reply.op == Op.ERROR:
            return request.error(requests.decode_error(reply.payload))
        if reply.op != request.op or reply.tx_id != request.tx_id:
            self._fail(f"unexpected reply {op_name(reply.op)} to {request.name}")
        return bytes(reply.payload)

    def _forget_watch(self, path: str, token: str) -> None:
        with self._lock:
            wire_token = self._wire_tokens.pop((path, token), None)
            wire_key = requests.encode_string(wire_token) if wire_token is not None else None
            if wire_key is not None:
                self._watches.pop(wire_key, None)
        if wire_key is not None:
            with contextlib.suppress(ValueError):
                self._router.unsubscribe(wire_key, self._monitor)
