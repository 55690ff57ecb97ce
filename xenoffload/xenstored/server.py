"""The embedded xenstored's socket server: serves a XenStore model on Unix sockets (asyncio),
within the per-domain limits C xenstored applies to guests.

The main socket speaks for dom0 (privileged, like xenstored's own socket); each extra socket
given as ``domains={domid: path}`` (``--domain DOMID:PATH``) emulates a guest's xenbus ring: its
connections are unprivileged and bound to that domid. Every request and reply can be recorded in
memory (:attr:`XenstoredServer.request_log`) and traced to a file in ``xenstored -T`` format.

What no guest can do to the server or to other domains (docs/xenstored.md, "Limits"):

- Unread output is bounded. A connection's requests are taken one at a time, and not at all
  while it has :attr:`ServerLimits.connection_replies` replies unsent; a guest domain is not
  read while it has ``Quotas.outstanding`` replies unsent, or while its memory (nodes, watches,
  transactions and its queued output, charged to the model) is at ``Quotas.memory`` with
  output queued. Watch events that would take a guest past its memory quota are dropped, as
  are events identical to one still queued and, after ``watch_event_timeout``, events the guest
  never read: what C xenstored does since XSA-326.
- Connections are capped per guest socket (at most ``max_guest_connections``, and at most an
  equal share of the file descriptors guests may use), and file descriptors are kept in
  reserve for the privileged socket, so no guest can lock dom0 or another guest out. A refused
  connection is closed at once. Nothing a guest repeats fills the log: refusals, accept errors,
  broken framing and dropped events are logged once per minute per kind, with a count of what
  was held back.
- One connection gets at most :data:`FRAMES_PER_TURN` requests handled per turn of the event
  loop before the others get theirs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import errno
import logging
import os
import resource
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO

import attrs

from xenoffload.xs.dispatch import encode_event, handle_request
from xenoffload.xs.model import Connection, XenStoreModel
from xenoffload.xs.values import WatchEvent
from xenoffload.xs.wire import HEADER, Frame, FrameParser, Op, ProtocolError, op_name

__all__ = [
    "DEFAULT_SOCKET",
    "FRAMES_PER_TURN",
    "EventRecord",
    "RequestRecord",
    "ServerLimits",
    "XenstoredServer",
    "format_trace_line",
]

log = logging.getLogger(__name__)

#: Where C xenstored puts its socket.
DEFAULT_SOCKET = "/var/run/xenstored/socket"
#: Requests of one connection handled before the event loop turns to other connections.
FRAMES_PER_TURN = 16
#: Bytes read from a connection at a time (what its requests may occupy before they are
#: handled: reading stops while it is stalled).
_READ_CHUNK = 16384
#: Queued output handed to a connection's socket in one write.
_WRITE_CHUNK = 65536
#: Connections accepted per wake-up of a listening socket.
_ACCEPT_BATCH = 32
#: After an accept error (no file descriptor left), a listener waits this long.
_ACCEPT_RETRY = 0.1
#: Interval of the once-per-interval log lines (refusals, accept errors, dropped events).
_LOG_INTERVAL = 60.0
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@attrs.frozen
class ServerLimits:
    """What the server bounds beyond the model's per-domain quotas (see the module docstring).

    ``watch_event_timeout``: seconds a watch event may wait unread for a guest before it is
    dropped (C ``-w watch-event=``; 0: never). ``max_guest_connections``: connections per guest
    socket (0: no cap). ``reserved_fds``: file descriptors no guest connection may take, kept
    for the privileged socket. ``connection_replies``: replies any connection may have queued
    before its requests are not read.
    """

    watch_event_timeout: float = 20.0
    max_guest_connections: int = 32
    reserved_fds: int = 64
    connection_replies: int = 64


@attrs.frozen
class RequestRecord:
    """One request a client sent and the reply it got."""

    conn_id: int
    domid: int
    op: str
    req_id: int
    tx_id: int
    payload: bytes
    reply_op: str
    reply_payload: bytes
    time: float  # time.monotonic() when the request was handled


@attrs.frozen
class EventRecord:
    """One watch event sent to a client."""

    conn_id: int
    domid: int
    path: str
    token: str
    time: float


def _printable(payload: bytes) -> str:
    out = []
    for byte in payload:
        if byte == 0:
            out.append(" ")
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def format_trace_line(direction: str, conn_id: int, op: int, payload: bytes,
                      when: datetime.datetime | None = None) -> str:
    """Return one ``xenstored -T`` style line: ``IN|OUT <conn> <date> <time> <TYPE> (<payload>)``
    with NULs shown as spaces (other non-printable bytes as ``\\xNN``)."""
    when = when or datetime.datetime.now()
    return (f"{direction} 0x{conn_id:x} {when:%Y%m%d %H:%M:%S} {op_name(op)} "
            f"({_printable(payload)})")


class _OnceAWhile:
    """A log line at most once per interval per key, counting what it held back."""

    def __init__(self, interval: float = _LOG_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] += 1
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        suffix = f" ({held} more like it in the last {self.interval:.0f} s)" if held else ""
        log.warning(message + suffix, *args)


class _Queued:
    """One message queued for a connection, not yet handed to its socket."""

    __slots__ = ("event", "expires", "frame", "reply", "size")

    def __init__(self, frame: Frame, reply: bool, event: bytes | None,
                 expires: float | None) -> None:
        self.frame = frame
        self.reply = reply
        self.event = event  # the payload of a watch event (for duplicates), else None
        self.expires = expires
        self.size = HEADER.size + len(frame.payload)


class _Domain:
    """The I/O accounting of one guest domain across its connections."""

    __slots__ = ("clients", "domid", "outstanding", "stalled")

    def __init__(self, domid: int) -> None:
        self.domid = domid
        self.outstanding = 0  # replies queued and not yet handed to a socket
        self.clients: set[_Client] = set()
        self.stalled: set[_Client] = set()


class _Listener:
    """One listening socket: the privileged one or a guest's."""

    __slots__ = ("domid", "open", "path", "privileged", "sock")

    def __init__(self, path: str, domid: int, privileged: bool, sock: socket.socket) -> None:
        self.path = path
        self.domid = domid
        self.privileged = privileged
        self.sock = sock
        self.open = 0  # connections accepted and not yet closed


class _Client(asyncio.BufferedProtocol):
    """One connection: its parser, its output queue and its flow-control state."""

    def __init__(self, server: XenstoredServer, listener: _Listener) -> None:
        self.server = server
        self.listener = listener
        self.conn: Connection | None = None
        self.domain: _Domain | None = None
        self.transport: asyncio.Transport | None = None
        self.parser = FrameParser()
        self.buffer = bytearray(_READ_CHUNK)
        self.queue: collections.deque[_Queued] = collections.deque()
        self.queued_replies = 0
        self.queued_bytes = 0
        self.queued_events: collections.Counter[bytes] = collections.Counter()
        self.write_paused = False
        self.read_paused = False
        self.pump_scheduled = False
        self.events_scheduled = False
        self.closing = False

    # asyncio.BufferedProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._attach(self)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self.parser.receive(memoryview(self.buffer)[:nbytes])
        except ProtocolError:
            return
        self.server._pump(self)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._detach(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.server._on_writable(self)


def _claim_socket(path: str) -> None:
    """Remove a stale socket left by a dead xenstored; refuse a live one or a non-socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"a xenstored is already serving {path}")


def _listening_socket(path: str) -> socket.socket:
    """Return a non-blocking socket listening at ``path``. The path appears only once the
    socket listens (bound under a temporary name, then renamed), so a client that waits for
    the file to exist never finds it refusing connections."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    temporary = f"{path}.{os.getpid() % 0x10000:04x}~"
    try:
        try:
            sock.bind(temporary)
        except OSError:  # the longer name does not fit sun_path: bind in place
            try:
                sock.bind(path)
            except OSError as error:  # name the path ("AF_UNIX path too long" does not)
                raise OSError(error.errno or errno.ENAMETOOLONG, error.strerror or str(error),
                              path) from None
            temporary = path
        try:
            sock.listen(128)
            if temporary != path:
                os.rename(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _open_fds() -> int:
    """How many file descriptors this process has open (0 if it cannot tell)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


class XenstoredServer:
    """Serves one model on a privileged socket plus guest sockets, inside an asyncio loop.

    ``lock`` (if given) is held around each request and around taking queued events, for a
    model shared with other threads (:class:`~xenoffload.xs.locked.LockedModel`). Subclasses
    may override :meth:`answer` (fault injection).
    """

    def __init__(self, model: XenStoreModel, socket_path: str,
                 domains: Mapping[int, str] | None = None, *, trace_path: str | None = None,
                 record: bool = True, limits: ServerLimits | None = None,
                 lock: contextlib.AbstractContextManager[object] | None = None) -> None:
        self.model = model
        self.socket_path = socket_path
        self.domains = dict(domains or {})
        self.trace_path = trace_path
        self.record = record
        self.limits = limits if limits is not None else ServerLimits()
        self.request_log: list[RequestRecord] = []
        self.event_log: list[EventRecord] = []
        self.on_request: Callable[[RequestRecord], None] | None = None
        self._lock: contextlib.AbstractContextManager[object] = (
            lock if lock is not None else contextlib.nullcontext())
        self._listeners: list[_Listener] = []
        self._bound: list[str] = []
        self._clients: set[_Client] = set()
        self._domain_io: dict[int, _Domain] = {}
        self._guest_budget = 0
        self._guest_open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._trace: IO[str] | None = None
        self._notes = _OnceAWhile()

    async def start(self) -> None:
        """Bind every socket (removing stale ones) and start accepting."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self.trace_path is not None:
            self._trace = open(self.trace_path, "a", encoding="ascii",  # noqa: SIM115
                               errors="backslashreplace", buffering=1)
        with self._lock:
            for domid in self.domains:
                self.model.add_domain(domid)
        wanted: list[tuple[str, int, bool]] = [(self.socket_path, 0, True)]
        wanted += [(path, domid, False) for domid, path in self.domains.items()]
        try:
            for path, domid, privileged in wanted:
                _claim_socket(path)
                sock = _listening_socket(path)
                self._bound.append(path)
                listener = _Listener(path, domid, privileged, sock)
                self._listeners.append(listener)
                self._loop.add_reader(sock, self._accept, listener)
                log.info("listening on %s as dom%d (%s)", path, domid,
                         "privileged" if privileged else "guest")
        except BaseException:
            await self.close(remove_sockets=True, abort=True)
            raise
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft_limit == resource.RLIM_INFINITY:
            soft_limit = 2**20
        self._guest_budget = max(0, soft_limit - self.limits.reserved_fds - _open_fds())

    async def close(self, remove_sockets: bool = True, abort: bool = False) -> None:
        """Stop accepting and end every connection; ``abort`` resets them (a crash) and
        ``remove_sockets`` unlinks the socket files (a clean exit)."""
        for listener in self._listeners:
            if self._loop is not None:
                self._loop.remove_reader(listener.sock)
            listener.sock.close()
        self._listeners.clear()
        for client in list(self._clients):
            client.closing = True
            if client.transport is not None:
                if abort:
                    client.transport.abort()
                else:
                    client.transport.close()
        if remove_sockets:  # only what this server bound: never a live daemon's socket
            for path in self._bound:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self._bound.clear()
        for _ in range(3):  # let the transports report connection_lost
            await asyncio.sleep(0)
        if self._trace is not None:
            self._trace.close()
            self._trace = None

    # ------------------------------------------------------------ answering (overridable)

    def answer(self, conn: Connection, frame: Frame) -> Frame | None:
        """Return the reply to one request of ``conn`` (None: send none). Runs with the
        model's lock held."""
        reply_op, reply = handle_request(self.model, conn, frame.op, frame.tx_id, frame.payload)
        return Frame(reply_op, frame.req_id, frame.tx_id, reply)

    # ------------------------------------------------------------ accepting

    def _accept(self, listener: _Listener) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _ = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                self._notes.warning(f"accept {listener.path}",
                                    "cannot accept connections on %s: %s", listener.path, err)
                if err.errno in _RESOURCE_ERRORS:
                    self._pause_accepting(listener)
                return
            if not listener.privileged and not self._guest_slot_free(listener):
                sock.close()
                continue
            listener.open += 1
            if not listener.privileged:
                self._guest_open += 1
            sock.setblocking(False)
            assert self._loop is not None
            self._loop.create_task(self._connect(listener, sock))

    def _guest_slot_free(self, listener: _Listener) -> bool:
        """Whether a guest socket may take one more connection: below its cap, below its
        share of the descriptors guests may use (no guest starves the others), and leaving
        the reserve to dom0."""
        guest_sockets = sum(1 for other in self._listeners if not other.privileged)
        share = max(1, self._guest_budget // max(1, guest_sockets))
        cap = self.limits.max_guest_connections
        limit = min(cap, share) if cap else share
        if listener.open >= limit:
            self._notes.warning(f"cap {listener.path}",
                                "refusing a connection on %s (dom%d): %d open, the limit",
                                listener.path, listener.domid, listener.open)
            return False
        if self._guest_open >= self._guest_budget:
            self._notes.warning("fd budget",
                                "refusing a guest connection on %s (dom%d): guests hold "
                                "%d file descriptors, all but the %d kept for dom0",
                                listener.path, listener.domid, self._guest_open,
                                self.limits.reserved_fds)
            return False
        return True

    def _pause_accepting(self, listener: _Listener) -> None:
        assert self._loop is not None
        self._loop.remove_reader(listener.sock)

        def resume() -> None:
            if listener in self._listeners and self._loop is not None:
                self._loop.add_reader(listener.sock, self._accept, listener)

        self._loop.call_later(_ACCEPT_RETRY, resume)

    async def _connect(self, listener: _Listener, sock: socket.socket) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(lambda: _Client(self, listener), sock)
        except OSError as err:
            self._notes.warning(f"connect {listener.path}", "cannot serve a connection on %s: %s",
                                listener.path, err)
            sock.close()
            self._release_slot(listener)

    def _release_slot(self, listener: _Listener) -> None:
        listener.open -= 1
        if not listener.privileged:
            self._guest_open -= 1

    # ------------------------------------------------------------ per connection

    def _attach(self, client: _Client) -> None:
        listener = client.listener
        assert client.transport is not None
        client.transport.set_write_buffer_limits(high=0)  # hand out only what the socket takes
        with self._lock:
            conn = self.model.connect(listener.domid, listener.privileged)
        client.conn = conn
        conn.listener = lambda _conn: self._events_ready(client)
        conn.close_listener = lambda _conn: self._closed_by_model(client)
        self._clients.add(client)
        if not listener.privileged:
            domain = self._domain_io.get(listener.domid)
            if domain is None:
                domain = self._domain_io[listener.domid] = _Domain(listener.domid)
            domain.clients.add(client)
            client.domain = domain
        self._trace_text(f"CREATE connection 0x{conn.conn_id:x} dom{listener.domid}")

    def _detach(self, client: _Client) -> None:
        if client not in self._clients:
            return
        self._clients.discard(client)
        client.closing = True
        self._release_slot(client.listener)
        conn = client.conn
        assert conn is not None
        self._discard_queue(client)
        domain = client.domain
        if domain is not None:
            domain.clients.discard(client)
            domain.stalled.discard(client)
            if not domain.clients:
                del self._domain_io[domain.domid]
            else:
                self._wake(domain)
        with self._lock:
            self.model.disconnect(conn)
        self._trace_text(f"DESTROY connection 0x{conn.conn_id:x}")

    def _pump(self, client: _Client) -> None:
        """Handle what the client sent, within its turn and its limits; then flush."""
        client.pump_scheduled = False
        handled = 0
        waiting = False  # complete requests may be left that we may not take now
        while not client.closing:
            if handled >= FRAMES_PER_TURN or not self._may_read(client):
                waiting = True
                break
            try:
                frame = client.parser.next_frame()
            except ProtocolError as err:
                assert client.conn is not None
                self._notes.warning(f"framing dom{client.conn.domid}",
                                    "dropping connection %d (dom%d): %s", client.conn.conn_id,
                                    client.conn.domid, err)
                client.closing = True
                if client.transport is not None:
                    client.transport.close()
                return
            if frame is None:
                break
            self._process(client, frame)
            handled += 1
        self._flush(client)
        if client.closing or client.transport is None:
            return
        if waiting and client.parser.buffered:
            if not client.read_paused:
                client.read_paused = True
                client.transport.pause_reading()
            if self._may_read(client):
                self._schedule_pump(client)  # out of turn: the others go first
            elif client.domain is not None:
                client.domain.stalled.add(client)
        elif client.read_paused:
            client.read_paused = False
            client.transport.resume_reading()

    def _schedule_pump(self, client: _Client) -> None:
        if not client.pump_scheduled and self._loop is not None:
            client.pump_scheduled = True
            self._loop.call_soon(self._pump, client)

    def _may_read(self, client: _Client) -> bool:
        """Whether the client's next request may be handled now (see the module docstring)."""
        if client.queued_replies >= self.limits.connection_replies:
            return False
        domain = client.domain
        if domain is None:
            return True
        quota = self.model.quotas.outstanding
        if quota and domain.outstanding >= quota:
            return False
        return not (self.model.memory_exceeded(domain.domid)
                    and any(other.queue for other in domain.clients))

    def _process(self, client: _Client, frame: Frame) -> None:
        conn = client.conn
        assert conn is not None
        self._trace_io("IN", conn.conn_id, frame.op, frame.payload)
        with self._lock:
            reply = self.answer(conn, frame)
            events = self.model.take_events(conn) if conn.pending else []
        if reply is None:
            return
        if self.record:  # before the reply leaves: a client may look right after it
            record = RequestRecord(conn.conn_id, conn.domid, op_name(frame.op), frame.req_id,
                                   frame.tx_id, frame.payload, op_name(reply.op),
                                   reply.payload, time.monotonic())
            self.request_log.append(record)
            if self.on_request is not None:
                self.on_request(record)
        if frame.op == Op.WATCH:  # C xenstored: the WATCH reply precedes its first event
            self._queue_reply(client, reply)
            self._queue_events(client, events)
        else:  # ... while the events a request causes precede its reply
            self._queue_events(client, events)
            self._queue_reply(client, reply)

    # ------------------------------------------------------------ output

    def _queue_reply(self, client: _Client, frame: Frame) -> None:
        self._enqueue(client, _Queued(frame, reply=True, event=None, expires=None))

    def _queue_events(self, client: _Client, events: list[WatchEvent]) -> None:
        conn = client.conn
        assert conn is not None
        guest = client.domain is not None
        timeout = self.limits.watch_event_timeout
        for event in events:
            path, token = event.path, event.token
            payload = encode_event(path, token)
            if payload is None:
                continue  # longer than a message: C drops it too
            if not path.startswith("@") and client.queued_events[payload]:
                continue  # identical to one still queued (C xenstored drops it)
            queued = _Queued(Frame(Op.WATCH_EVENT, 0, 0, payload), reply=False, event=payload,
                             expires=time.monotonic() + timeout if guest and timeout else None)
            if guest and self.model.memory_exceeded(conn.domid, queued.size):
                self._drop_expired(client)
                if self.model.memory_exceeded(conn.domid, queued.size):
                    self._notes.warning(f"events dom{conn.domid}",
                                        "dom%d is at its memory quota: watch events dropped",
                                        conn.domid)
                    continue
            self._enqueue(client, queued)

    def _enqueue(self, client: _Client, queued: _Queued) -> None:
        if client.closing:
            return
        client.queue.append(queued)
        client.queued_bytes += queued.size
        if queued.reply:
            client.queued_replies += 1
            if client.domain is not None:
                client.domain.outstanding += 1
        if queued.event is not None:
            client.queued_events[queued.event] += 1
        if client.domain is not None:
            self.model.charge(client.domain.domid, queued.size)

    def _dequeue(self, client: _Client) -> _Queued:
        queued = client.queue.popleft()
        self._unaccount(client, queued)
        return queued

    def _unaccount(self, client: _Client, queued: _Queued) -> None:
        client.queued_bytes -= queued.size
        if queued.reply:
            client.queued_replies -= 1
            if client.domain is not None:
                client.domain.outstanding -= 1
        if queued.event is not None:
            client.queued_events[queued.event] -= 1
            if not client.queued_events[queued.event]:
                del client.queued_events[queued.event]
        if client.domain is not None:
            self.model.charge(client.domain.domid, -queued.size)

    def _drop_expired(self, client: _Client) -> None:
        """Forget the watch events that waited longer than the timeout (never started)."""
        now = time.monotonic()
        if not any(q.expires is not None and q.expires <= now for q in client.queue):
            return
        kept: collections.deque[_Queued] = collections.deque()
        for queued in client.queue:
            if queued.expires is not None and queued.expires <= now:
                self._unaccount(client, queued)
            else:
                kept.append(queued)
        client.queue = kept

    def _flush(self, client: _Client) -> None:
        """Hand queued output to the socket while it takes it without buffering."""
        if not client.queue or client.write_paused or client.closing:
            return
        transport = client.transport
        assert transport is not None and client.conn is not None
        if client.domain is not None:
            self._drop_expired(client)
        conn = client.conn
        released = False
        while client.queue and not client.write_paused and not client.closing:
            chunk: list[bytes] = []
            size = 0
            while client.queue and size < _WRITE_CHUNK:
                queued = self._dequeue(client)
                released = released or queued.reply
                frame = queued.frame
                data = frame.encode()
                chunk.append(data)
                size += len(data)
                self._trace_io("OUT", conn.conn_id, frame.op, frame.payload)
                if queued.event is not None and self.record:
                    path, _, rest = frame.payload.partition(b"\0")
                    self.event_log.append(EventRecord(
                        conn.conn_id, conn.domid, path.decode("latin-1"),
                        rest.rstrip(b"\0").decode("latin-1"), time.monotonic()))
            if transport.is_closing():
                return
            transport.write(b"".join(chunk))  # may call pause_writing
        if client.domain is not None and (released or not client.queue):
            self._wake(client.domain)
        elif client.read_paused and not client.pump_scheduled:
            self._schedule_pump(client)

    def _discard_queue(self, client: _Client) -> None:
        while client.queue:
            self._dequeue(client)

    def _on_writable(self, client: _Client) -> None:
        self._flush(client)
        if client.read_paused:
            self._schedule_pump(client)

    def _wake(self, domain: _Domain) -> None:
        """Output of the domain left: its stalled connections may go on."""
        stalled, domain.stalled = domain.stalled, set()
        for client in stalled:
            self._schedule_pump(client)

    # ------------------------------------------------------------ events from the model

    def _events_ready(self, client: _Client) -> None:
        # Called by the model (under its lock, from whichever thread changed it).
        if client.events_scheduled or self._loop is None:
            return
        client.events_scheduled = True
        if threading.get_ident() == self._loop_thread:
            self._loop.call_soon(self._take_events, client)
        else:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._take_events, client)

    def _take_events(self, client: _Client) -> None:
        client.events_scheduled = False
        if client.closing or client.conn is None:
            return
        with self._lock:
            events = self.model.take_events(client.conn)
        self._queue_events(client, events)
        self._flush(client)

    def _closed_by_model(self, client: _Client) -> None:
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._loop.call_soon(self._drop, client)
        else:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._drop, client)

    def _drop(self, client: _Client) -> None:
        client.closing = True
        if client.transport is not None:
            client.transport.abort()

    # ------------------------------------------------------------ tracing

    def _trace_io(self, direction: str, conn_id: int, op: int, payload: bytes) -> None:
        if self._trace is not None:
            self._trace.write(format_trace_line(direction, conn_id, op, payload) + "\n")

    def _trace_text(self, text: str) -> None:
        if self._trace is not None:
            self._trace.write(text + "\n")
