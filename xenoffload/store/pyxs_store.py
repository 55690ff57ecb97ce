"""XenStore over pyxs 0.4.1: :class:`PyxsStore` implements Store with a guard for every pyxs hazard.

pyxs provides the transport (Unix socket or /dev/xen/xenbus), the router thread that multiplexes
replies and events, and the packet type. Requests are built and awaited here rather than through
``pyxs.Client`` methods, which is how each hazard of docs/dependency-notes.md is contained:

1. Connection loss kills the router thread and ``RVar.get()`` would block forever: every call
   waits on the reply's condition with a deadline and watches the router thread; loss or a
   timeout raises :class:`~xenoffload.store.base.StoreUnavailable` and the store is closed for
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

DIRECTORY replies larger than one message fall back to DIRECTORY_PART, which pyxs lacks.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import queue
import stat
import struct
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from pyxs.client import Client, Monitor, Router
from pyxs.connection import UnixSocketConnection, XenBusConnection
from pyxs.exceptions import ConnectionError as PyxsConnectionError
from pyxs.exceptions import PyXSError

from xenoffload.store.base import (
    BoundOps,
    Perm,
    StoreUnavailable,
    WatchEvent,
    XenStoreError,
    parse_perm,
)
from xenoffload.xenstored.model import PAYLOAD_MAX
from xenoffload.xenstored.wire import HEADER, Op, op_name

try:  # pyxs' Packet lives in a private module; it is the only private name used here.
    from pyxs._internal import Packet
except ImportError as err:  # pragma: no cover - depends on the installed pyxs
    raise ImportError("pyxs 0.4.x is required (pyxs._internal.Packet not found)") from err

__all__ = [
    "DEFAULT_TIMEOUT",
    "PyxsStore",
    "PyxsTransaction",
    "connect_store",
    "default_store_path",
]

log = logging.getLogger(__name__)

#: Seconds a request may take before the store gives up on the connection.
DEFAULT_TIMEOUT = 10.0
_XENBUS_PATH = "/dev/xen/xenbus"
_SOCKET_PATH = "/var/run/xenstored/socket"
_POLL = 0.05


def default_store_path() -> str:
    """Return where XenStore is reached by default: ``$XENSTORED_PATH``, else
    /var/run/xenstored/socket if it exists, else /dev/xen/xenbus."""
    env = os.environ.get("XENSTORED_PATH")
    if env:
        return env
    if os.path.exists(_SOCKET_PATH) or not os.path.exists(_XENBUS_PATH):
        return _SOCKET_PATH
    return _XENBUS_PATH


def connect_store(path: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> PyxsStore:
    """Connect to XenStore at ``path`` (default :func:`default_store_path`) and return the store.

    A character device (or a path under /dev/) is opened as XenBus, anything else as a Unix
    socket. Raises StoreUnavailable when the connection cannot be made.
    """
    return PyxsStore(path, timeout=timeout)


class _AnyOpReceiver:
    """Receive side accepting every message type: pyxs' own ``recv`` builds a validated
    Packet and raises (killing the router) on types it does not know, such as the replies to
    DIRECTORY_PART and RESET_WATCHES."""

    transport: Any
    path: str
    if TYPE_CHECKING:  # provided by the pyxs connection class
        is_connected: bool

        def close(self, silent: bool = True) -> None: ...

    def recv(self) -> Any:
        if not self.is_connected:
            raise PyxsConnectionError("not connected")
        try:
            header = self.transport.recv(HEADER.size)
            op, req_id, tx_id, size = HEADER.unpack(header)
            payload = self.transport.recv(size) if size else b""
        except (OSError, struct.error) as err:
            self.close()
            raise PyxsConnectionError(f"error while reading from {self.path!r}: {err}") from err
        return Packet._make((op, req_id, tx_id, size, payload))


class _UnixConnection(_AnyOpReceiver, UnixSocketConnection):  # type: ignore[misc]
    """pyxs' Unix socket connection with :class:`_AnyOpReceiver`."""


class _XenBusConnection(_AnyOpReceiver, XenBusConnection):  # type: ignore[misc]
    """pyxs' XenBus connection with :class:`_AnyOpReceiver`."""


class _Router(Router):  # type: ignore[misc]
    """pyxs' router; its thread ends quietly (instead of dumping a traceback) when the
    connection is lost or the server breaks the protocol. Callers notice the dead thread."""

    def __call__(self) -> None:
        try:
            super().__call__()
        except (PyXSError, OSError, ValueError) as err:
            log.debug("pyxs router for %s stopped: %r", self.connection, err)


def _is_xenbus(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return path.startswith("/dev/")


def _encode_path(path: str) -> bytes:
    return path.encode("ascii", "replace")


class _Pending(NamedTuple):
    """A request sent and not yet answered."""

    rvar: Any
    req_id: int
    op: int
    tx_id: int
    path: str | None


class PyxsTransaction(BoundOps):
    """A transaction of a :class:`PyxsStore` (its own tx id; several may be open at once)."""

    def __init__(self, store: PyxsStore, tx_id: int) -> None:
        self._store = self._primitives = store
        self.tx_id = tx_id

    def commit(self) -> bool:
        """Commit; return False on EAGAIN (nothing was written)."""
        try:
            self._store._request(Op.TRANSACTION_END, b"T\0", self.tx_id)
        except XenStoreError as err:
            if err.errno_name == "EAGAIN":
                return False
            raise
        return True

    def abort(self) -> None:
        """Discard the transaction."""
        self._store._request(Op.TRANSACTION_END, b"F\0", self.tx_id)


class PyxsStore(BoundOps):
    """A XenStore connection through pyxs; implements :class:`~xenoffload.store.base.Store`.

    ``path`` is a Unix socket or the XenBus device (default :func:`default_store_path`);
    ``timeout`` bounds every request. Thread-safe. After StoreUnavailable the store stays
    unusable: build a new one to reconnect.
    """

    tx_id = 0

    def __init__(self, path: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 router: Router | None = None) -> None:
        self._primitives = self
        self.path = path if path is not None else default_store_path()
        self.timeout = timeout
        if router is None:
            connection = (_XenBusConnection(self.path) if _is_xenbus(self.path)
                          else _UnixConnection(self.path))
            router = _Router(connection)
        self._router = router
        client = Client(router=router)
        try:
            client.connect()
        except (PyXSError, OSError) as err:
            with contextlib.suppress(OSError):
                router.connection.close()
            raise StoreUnavailable(f"cannot connect to XenStore at {self.path}: {err}") from err
        # Hazard 6: Client.monitor() refuses XenBus; a Monitor over a copy works everywhere.
        self._monitor = Monitor(copy.copy(client))
        self._lock = threading.Lock()
        self._next_req_id = 0
        self._watch_serial = 0
        self._wire_tokens: dict[tuple[str, str], bytes] = {}
        self._watches: dict[bytes, tuple[str, str]] = {}
        self._broken: str | None = None

    def __repr__(self) -> str:
        return f"PyxsStore({self.path!r})"

    def __enter__(self) -> PyxsStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ Store API

    def transaction(self) -> PyxsTransaction:
        """Start a transaction."""
        reply = self._request(Op.TRANSACTION_START, b"\0", 0)
        return PyxsTransaction(self, int(reply.rstrip(b"\0") or b"0"))

    def watch(self, path: str, token: str) -> None:
        """Register a watch; EEXIST if this store already watches (path, token)."""
        with self._lock:
            if (path, token) in self._wire_tokens:
                raise XenStoreError("EEXIST", path, "WATCH")
            self._watch_serial += 1
            wire_token = f"{token}#{self._watch_serial}".encode("latin-1", "replace")
            self._wire_tokens[(path, token)] = wire_token
            self._watches[wire_token] = (path, token)
        # Subscribe first: the initial event may overtake the WATCH reply.
        self._router.subscribe(wire_token, self._monitor)
        try:
            self._request(Op.WATCH, _encode_path(path) + b"\0" + wire_token + b"\0", 0,
                          path=path)
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
            self._request(Op.UNWATCH, _encode_path(path) + b"\0" + wire_token + b"\0", 0,
                          path=path)
        finally:
            self._forget_watch(path, token)

    def next_event(self, timeout: float | None) -> WatchEvent | None:
        """Return the next event of a current watch, waiting at most ``timeout`` seconds; None
        on timeout. Raises StoreUnavailable when the connection is lost."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._check_alive()
            wait = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
            if wait <= 0:
                return None
            try:
                raw_path, raw_token = self._monitor.events.get(timeout=wait)
            except queue.Empty:
                continue
            with self._lock:
                watched = self._watches.get(raw_token)
            if watched is None:
                continue  # hazard 3: stale or foreign event, dropped here instead of spinning
            return WatchEvent(raw_path.decode("latin-1"), watched[1])

    def get_domain_path(self, domid: int) -> str:
        reply = self._request(Op.GET_DOMAIN_PATH, str(domid).encode("ascii") + b"\0", 0)
        return reply.rstrip(b"\0").decode("latin-1")

    def close(self) -> None:
        """Close the connection; further calls raise StoreUnavailable. Idempotent."""
        with self._lock:
            if self._broken is None:
                self._broken = "store closed"
        self._terminate_router()

    # ------------------------------------------------------------ extras

    def introduce_domain(self, domid: int, mfn: int = 0, port: int = 1) -> None:
        """INTRODUCE (hazard 7: sent regardless of /proc/xen/capabilities)."""
        payload = b"".join(str(n).encode("ascii") + b"\0" for n in (domid, mfn, port))
        self._request(Op.INTRODUCE, payload, 0)

    def release_domain(self, domid: int) -> None:
        """RELEASE ``domid``."""
        self._request(Op.RELEASE, str(domid).encode("ascii") + b"\0", 0)

    def is_domain_introduced(self, domid: int) -> bool:
        reply = self._request(Op.IS_DOMAIN_INTRODUCED, str(domid).encode("ascii") + b"\0", 0)
        return reply.rstrip(b"\0") == b"T"

    def set_target(self, domid: int, target: int) -> None:
        payload = str(domid).encode("ascii") + b"\0" + str(target).encode("ascii") + b"\0"
        self._request(Op.SET_TARGET, payload, 0)

    def reset_watches(self) -> None:
        """RESET_WATCHES: the server forgets every watch and transaction of this connection."""
        self._request(Op.RESET_WATCHES, b"", 0)
        with self._lock:
            watched = list(self._wire_tokens)
        for path, token in watched:
            self._forget_watch(path, token)

    def raw_request(self, op: int, payload: bytes, tx_id: int = 0) -> bytes:
        """Send any request (e.g. a hostile guest's bytes); return the reply payload.

        Raises XenStoreError for an ERROR reply, StoreUnavailable on connection loss."""
        return self._request(op, payload, tx_id)

    def set_request_id(self, next_req_id: int) -> None:
        """Set the next request id (tests of the 2**32 wrap)."""
        with self._lock:
            self._next_req_id = next_req_id % 2**32

    # ------------------------------------------------------------ internals

    def _check_alive(self) -> None:
        if self._broken is not None:
            raise StoreUnavailable(self._broken)
        if not self._router.thread.is_alive() or not self._router.is_connected:
            self._fail("connection to XenStore lost")

    def _fail(self, reason: str) -> NoReturn:
        with self._lock:
            if self._broken is None:
                self._broken = reason
        self._terminate_router()
        raise StoreUnavailable(reason)

    def _terminate_router(self) -> None:
        """Stop the router thread without risking pyxs' unbounded join."""
        router = self._router
        with contextlib.suppress(OSError):
            if router.is_connected and router.thread.is_alive():
                router.w_terminator.sendall(b"\0")
        if router.thread.is_alive() and router.thread is not threading.current_thread():
            router.thread.join(1.0)
        if router.thread.is_alive():
            with contextlib.suppress(OSError, AttributeError):
                router.connection.close()

    def _take_req_id(self) -> int:
        with self._lock:
            req_id = self._next_req_id
            while req_id in self._router.rvars:
                req_id = (req_id + 1) % 2**32
            self._next_req_id = (req_id + 1) % 2**32
            return req_id

    def _request(self, op: int, payload: bytes, tx_id: int, path: str | None = None) -> bytes:
        return self._wait(self._send(op, payload, tx_id, path))

    def _send(self, op: int, payload: bytes, tx_id: int, path: str | None = None) -> _Pending:
        """Send one request; return what :meth:`_wait` needs to collect its reply. Several
        may be outstanding at once (the router matches replies by request id)."""
        name = op_name(op)
        if len(payload) > PAYLOAD_MAX:
            raise XenStoreError("E2BIG", path, name)
        self._check_alive()
        req_id = self._take_req_id()
        packet = Packet._make((op, req_id, tx_id, len(payload), payload))
        try:
            rvar = self._router.send(packet)
        except (PyXSError, OSError) as err:
            self._router.rvars.pop(req_id, None)
            self._fail(f"connection to XenStore lost: {err}")
        return _Pending(rvar, req_id, op, tx_id, path)

    def _wait(self, pending: _Pending) -> bytes:
        """Wait (bounded by ``timeout``) for the reply to a sent request and return its
        payload. Raises XenStoreError for an error reply, StoreUnavailable when the
        connection is lost or the daemon does not answer in time."""
        rvar, req_id, op, tx_id, path = pending
        name = op_name(op)
        deadline = time.monotonic() + self.timeout
        with rvar.condition:
            while rvar.target is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._router.rvars.pop(req_id, None)
                    self._fail(f"XenStore did not answer {name} within {self.timeout} s")
                if not self._router.thread.is_alive():
                    self._fail("connection to XenStore lost")
                rvar.condition.wait(min(remaining, _POLL))
        reply = rvar.target
        if reply.op == Op.ERROR:
            errno_name = reply.payload.rstrip(b"\0").decode("ascii", "replace")
            raise XenStoreError(errno_name, path, name)
        if reply.op != op or reply.tx_id != tx_id:
            self._fail(f"unexpected reply {op_name(reply.op)} to {name}")
        return bytes(reply.payload)

    def _read_many(self, paths: Sequence[str], tx_id: int) -> list[bytes | None]:
        pendings = [self._send(Op.READ, _encode_path(path) + b"\0", tx_id, path=path)
                    for path in paths]
        values: list[bytes | None] = []
        first_error: XenStoreError | None = None
        for pending in pendings:
            try:
                values.append(self._wait(pending))
            except XenStoreError as err:
                values.append(None)
                if err.errno_name not in ("ENOENT", "EACCES") and first_error is None:
                    first_error = err
        if first_error is not None:
            raise first_error
        return values

    def _write_many(self, values: Sequence[tuple[str, bytes]], tx_id: int,
                    guard: str | None = None) -> bool:
        """Pipeline the writes (after a READ of ``guard``, if given); return whether the guard
        exists (True without one). Raises the first write error once all replies came."""
        guard_pending = (self._send(Op.READ, _encode_path(guard) + b"\0", tx_id, path=guard)
                         if guard is not None else None)
        pendings = [self._send(Op.WRITE, _encode_path(path) + b"\0" + bytes(value), tx_id,
                               path=path) for path, value in values]
        exists = True
        first_error: XenStoreError | None = None
        if guard_pending is not None:
            try:
                self._wait(guard_pending)
            except XenStoreError as err:
                if err.errno_name != "ENOENT":
                    first_error = err
                exists = False
        for pending in pendings:
            try:
                self._wait(pending)
            except XenStoreError as err:
                first_error = first_error or err
        if first_error is not None:
            raise first_error
        return exists

    def _mkdir(self, path: str, tx_id: int) -> None:
        self._ack(Op.MKDIR, path, tx_id)

    def _rm(self, path: str, tx_id: int) -> None:
        self._ack(Op.RM, path, tx_id)

    def _ack(self, op: int, path: str, tx_id: int) -> None:
        self._request(op, _encode_path(path) + b"\0", tx_id, path=path)

    def _read(self, path: str, tx_id: int) -> bytes:
        return self._request(Op.READ, _encode_path(path) + b"\0", tx_id, path=path)

    def _try_read(self, path: str, tx_id: int) -> bytes | None:
        try:
            return self._read(path, tx_id)
        except XenStoreError as err:
            if err.errno_name == "ENOENT":
                return None
            raise

    def _write(self, path: str, value: bytes, tx_id: int) -> None:
        # Hazard 5: empty and non-printable values go out unchanged.
        self._request(Op.WRITE, _encode_path(path) + b"\0" + bytes(value), tx_id, path=path)

    def _directory(self, path: str, tx_id: int) -> list[str]:
        try:
            reply = self._request(Op.DIRECTORY, _encode_path(path) + b"\0", tx_id, path=path)
        except XenStoreError as err:
            if err.errno_name != "E2BIG":
                raise
            return self._directory_parts(path, tx_id)
        return [name.decode("latin-1") for name in reply.split(b"\0")[:-1]]

    def _directory_parts(self, path: str, tx_id: int) -> list[str]:
        """Read a long child list with DIRECTORY_PART, restarting if the node changes."""
        for _ in range(16):
            names: list[bytes] = []
            generation: bytes | None = None
            offset = 0
            while True:
                payload = _encode_path(path) + b"\0" + str(offset).encode("ascii") + b"\0"
                reply = self._request(Op.DIRECTORY_PART, payload, tx_id, path=path)
                gen, _, body = reply.partition(b"\0")
                if generation is None:
                    generation = gen
                elif gen != generation:
                    break  # the directory changed between parts: start over
                complete = body == b"\0" or body.endswith(b"\0\0") or not body
                chunk = body[:-1] if complete else body
                names.extend(chunk.split(b"\0")[:-1])
                offset += len(chunk)
                if complete:
                    return [name.decode("latin-1") for name in names]
        raise XenStoreError("EAGAIN", path, "DIRECTORY_PART")

    def _get_perms(self, path: str, tx_id: int) -> tuple[Perm, ...]:
        reply = self._request(Op.GET_PERMS, _encode_path(path) + b"\0", tx_id, path=path)
        return tuple(parse_perm(text.decode("ascii")) for text in reply.split(b"\0")[:-1])

    def _set_perms(self, path: str, perms: Sequence[Perm], tx_id: int) -> None:
        payload = _encode_path(path) + b"\0" + b"".join(
            str(perm).encode("ascii") + b"\0" for perm in perms)
        self._request(Op.SET_PERMS, payload, tx_id, path=path)

    def _forget_watch(self, path: str, token: str) -> None:
        with self._lock:
            wire_token = self._wire_tokens.pop((path, token), None)
            if wire_token is not None:
                self._watches.pop(wire_token, None)
        if wire_token is not None:
            with contextlib.suppress(ValueError):
                self._router.unsubscribe(wire_token, self._monitor)
