"""The embedded xenstored: serves the XenStore model on Unix sockets (asyncio).

The main socket speaks for dom0 (privileged, like xenstored's own socket); each extra socket
given as ``domains={domid: path}`` (``--domain DOMID:PATH``) emulates a guest's xenbus ring: its
connections are unprivileged and bound to that domid. Every request and reply can be recorded in
memory (:attr:`XenstoredServer.request_log`) and traced to a file in ``xenstored -T`` format.

:class:`EmbeddedXenstored` runs a server in a background thread for tests and in-process users;
:func:`serve_main` runs one in the foreground (``python -m xenoffload.xenstored``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import errno
import functools
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO

import attrs

from xenoffload.store.base import WatchEvent
from xenoffload.xenstored.dispatch import encode_event, handle_request
from xenoffload.xenstored.model import Connection, Quotas, XenStoreModel
from xenoffload.xenstored.wire import Frame, FrameParser, Op, ProtocolError, op_name

__all__ = [
    "DEFAULT_SOCKET",
    "EmbeddedXenstored",
    "EventRecord",
    "RequestRecord",
    "ServerFaults",
    "XenstoredServer",
    "format_trace_line",
    "serve_main",
]

log = logging.getLogger(__name__)

#: Where C xenstored puts its socket.
DEFAULT_SOCKET = "/var/run/xenstored/socket"
_READ_CHUNK = 65536


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


@attrs.define
class ServerFaults:
    """Fault injection switches, read by the server for every request.

    ``stall_replies``: requests are consumed but never answered (a hung xenstored).
    ``bogus_req_id_next``: the next reply carries a request id nobody asked for.
    """

    stall_replies: bool = False
    bogus_req_id_next: bool = False


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


class _Client:
    __slots__ = ("closing", "conn", "flush_scheduled", "writer")

    def __init__(self, conn: Connection, writer: asyncio.StreamWriter) -> None:
        self.conn = conn
        self.writer = writer
        self.flush_scheduled = False
        self.closing = False


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


class XenstoredServer:
    """Serves one model on a privileged socket plus guest sockets, inside an asyncio loop."""

    def __init__(self, model: XenStoreModel, socket_path: str,
                 domains: Mapping[int, str] | None = None, *, trace_path: str | None = None,
                 record: bool = True) -> None:
        self.model = model
        self.socket_path = socket_path
        self.domains = dict(domains or {})
        self.trace_path = trace_path
        self.record = record
        self.faults = ServerFaults()
        self.request_log: list[RequestRecord] = []
        self.event_log: list[EventRecord] = []
        self.on_request: Callable[[RequestRecord], None] | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._bound: list[str] = []
        self._clients: dict[int, _Client] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._trace: IO[str] | None = None
        self._lock = threading.Lock()

    async def start(self) -> None:
        """Bind every socket (removing stale ones) and start accepting."""
        self._loop = asyncio.get_running_loop()
        if self.trace_path is not None:
            self._trace = open(self.trace_path, "a", encoding="ascii",  # noqa: SIM115
                               errors="backslashreplace", buffering=1)
        for domid in self.domains:
            self.model.add_domain(domid)
        listeners: list[tuple[str, int, bool]] = [(self.socket_path, 0, True)]
        listeners += [(path, domid, False) for domid, path in self.domains.items()]
        try:
            for path, domid, privileged in listeners:
                _claim_socket(path)
                handler = functools.partial(self._serve_client, domid=domid,
                                            privileged=privileged)
                server = await asyncio.start_unix_server(handler, path=path)
                self._servers.append(server)
                self._bound.append(path)
                log.info("listening on %s as dom%d (%s)", path, domid,
                         "privileged" if privileged else "guest")
        except BaseException:
            await self.close(remove_sockets=True, abort=True)
            raise

    async def close(self, remove_sockets: bool = True, abort: bool = False) -> None:
        """Stop accepting and end every connection; ``abort`` resets them (a crash) and
        ``remove_sockets`` unlinks the socket files (a clean exit)."""
        for server in self._servers:
            server.close()
        for client in list(self._clients.values()):
            client.closing = True
            if abort:
                client.writer.transport.abort()
            else:
                client.writer.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        self._servers.clear()
        if remove_sockets:  # only what this server bound: never a live daemon's socket
            for path in self._bound:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self._bound.clear()
        await asyncio.sleep(0)
        if self._trace is not None:
            self._trace.close()
            self._trace = None

    def client_ids(self) -> list[int]:
        """Return the connection ids of the connected clients."""
        return list(self._clients)

    # ------------------------------------------------------------ per connection

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            *, domid: int, privileged: bool) -> None:
        conn = self.model.connect(domid, privileged)
        client = _Client(conn, writer)
        self._clients[conn.conn_id] = client
        conn.listener = functools.partial(self._on_events, client)
        conn.close_listener = functools.partial(self._on_model_close, client)
        self._trace_text(f"CREATE connection 0x{conn.conn_id:x} dom{domid}")
        parser = FrameParser()
        try:
            while not client.closing:
                data = await reader.read(_READ_CHUNK)
                if not data:
                    break
                try:
                    frames = parser.feed(data)
                except ProtocolError as err:
                    log.warning("dropping connection %d (dom%d): %s", conn.conn_id, domid, err)
                    break
                for frame in frames:
                    self._process(client, frame)
                    if client.closing:
                        break
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._clients.pop(conn.conn_id, None)
            self.model.disconnect(conn)
            client.closing = True
            with contextlib.suppress(Exception):
                writer.close()
            self._trace_text(f"DESTROY connection 0x{conn.conn_id:x}")

    def _process(self, client: _Client, frame: Frame) -> None:
        conn = client.conn
        self._trace_io("IN", conn.conn_id, frame.op, frame.payload)
        if self.faults.stall_replies:
            return
        with self.model.lock:
            reply_op, reply = handle_request(self.model, conn, frame.op, frame.tx_id,
                                             frame.payload)
            events = self.model.take_events(conn)
        req_id = frame.req_id
        if self.faults.bogus_req_id_next:
            self.faults.bogus_req_id_next = False
            req_id = (req_id + 0x5A5A5A5A) % 2**32
        reply_frame = Frame(reply_op, req_id, frame.tx_id, reply)
        if self.record:  # before the reply leaves: a client may look right after it
            record = RequestRecord(conn.conn_id, conn.domid, op_name(frame.op), frame.req_id,
                                   frame.tx_id, frame.payload, op_name(reply_op), reply,
                                   time.monotonic())
            self.request_log.append(record)
            if self.on_request is not None:
                self.on_request(record)
        if frame.op != Op.WATCH:
            self._send_events(client, events)
        self._send(client, reply_frame)
        if frame.op == Op.WATCH:
            self._send_events(client, events)

    def _send(self, client: _Client, frame: Frame) -> None:
        if client.closing or client.writer.transport.is_closing():
            return
        client.writer.write(frame.encode())
        self._trace_io("OUT", client.conn.conn_id, frame.op, frame.payload)

    def _send_events(self, client: _Client, events: Sequence[WatchEvent]) -> None:
        for event in events:
            path, token = event.path, event.token
            payload = encode_event(path, token)
            if payload is None:
                continue
            if self.record:
                self.event_log.append(EventRecord(client.conn.conn_id, client.conn.domid,
                                                  path, token, time.monotonic()))
            self._send(client, Frame(Op.WATCH_EVENT, 0, 0, payload))

    def _on_events(self, client: _Client, conn: Connection) -> None:
        # Called with the model lock held, from whichever thread changed the model.
        if client.flush_scheduled or self._loop is None:
            return
        client.flush_scheduled = True
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._loop.call_soon_threadsafe(self._flush, client)

    def _flush(self, client: _Client) -> None:
        client.flush_scheduled = False
        self._send_events(client, self.model.take_events(client.conn))

    def _on_model_close(self, client: _Client, conn: Connection) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._drop_client, client)

    def _drop_client(self, client: _Client) -> None:
        client.closing = True
        client.writer.transport.abort()

    # ------------------------------------------------------------ tracing

    def _trace_io(self, direction: str, conn_id: int, op: int, payload: bytes) -> None:
        if self._trace is not None:
            self._trace.write(format_trace_line(direction, conn_id, op, payload) + "\n")

    def _trace_text(self, text: str) -> None:
        if self._trace is not None:
            self._trace.write(text + "\n")


class EmbeddedXenstored:
    """A :class:`XenstoredServer` running in a background thread.

    >>> with EmbeddedXenstored(tmp / "xs.sock", domains={1: tmp / "dom1.sock"}) as srv:
    ...     store = connect_store(srv.socket_path)

    ``kill()`` simulates a crash (connections reset, socket files left behind, as a dead
    daemon leaves them); ``restart()`` starts again on the same paths. Like C xenstored without
    a persistent database, a restart begins with a fresh tree unless ``keep_tree=True`` was
    given (then the same model, its nodes and domains, is served again; sessions never survive).
    """

    def __init__(self, socket_path: str | os.PathLike[str],
                 domains: Mapping[int, str | os.PathLike[str]] | None = None, *,
                 model: XenStoreModel | None = None, quotas: Quotas | None = None,
                 trace_path: str | os.PathLike[str] | None = None, record: bool = True,
                 keep_tree: bool = False) -> None:
        self.socket_path = os.fspath(socket_path)
        self.domain_sockets = {domid: os.fspath(path) for domid, path in (domains or {}).items()}
        self.trace_path = os.fspath(trace_path) if trace_path is not None else None
        self.record = record
        self.keep_tree = keep_tree
        self._quotas = quotas
        self.model = model if model is not None else XenStoreModel(quotas)
        self.faults = ServerFaults()
        self._server: XenstoredServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._request_log: list[RequestRecord] = []
        self._event_log: list[EventRecord] = []
        # start/stop/kill may come from different threads (a test's timer killing the server
        # while the fixture stops it): one at a time, or the loop is closed twice.
        self._lifecycle = threading.RLock()

    def __enter__(self) -> EmbeddedXenstored:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def server(self) -> XenstoredServer:
        """The running server (RuntimeError when stopped)."""
        if self._server is None:
            raise RuntimeError("embedded xenstored is not running")
        return self._server

    @property
    def request_log(self) -> list[RequestRecord]:
        """Every request and reply since start (across restarts), oldest first."""
        return self._request_log

    @property
    def event_log(self) -> list[EventRecord]:
        """Every watch event sent since start (across restarts), oldest first."""
        return self._event_log

    def start(self) -> EmbeddedXenstored:
        """Bind the sockets and serve in a daemon thread. Returns self."""
        with self._lifecycle:
            return self._start()

    def _start(self) -> EmbeddedXenstored:
        if self._thread is not None:
            raise RuntimeError("embedded xenstored already running")
        loop = asyncio.new_event_loop()
        server = XenstoredServer(self.model, self.socket_path, self.domain_sockets,
                                 trace_path=self.trace_path, record=self.record)
        server.faults = self.faults
        server.request_log = self._request_log
        server.event_log = self._event_log
        thread = threading.Thread(target=loop.run_forever, name="embedded-xenstored",
                                  daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
            raise
        self._loop, self._server, self._thread = loop, server, thread
        return self

    def stop(self) -> None:
        """Close every connection, remove the sockets, end the thread. Idempotent."""
        self._shutdown(remove_sockets=True, abort=False)

    def kill(self) -> None:
        """Crash: reset every connection and leave the socket files behind."""
        self._shutdown(remove_sockets=False, abort=True)

    def restart(self, keep_tree: bool | None = None) -> None:
        """Kill (if running) and start again on the same paths; see the class docstring."""
        with self._lifecycle:
            self.kill()
            if not (self.keep_tree if keep_tree is None else keep_tree):
                self.model = XenStoreModel(self._quotas)
            else:
                for conn in self.model.connections():
                    self.model.disconnect(conn)
            self.start()

    def _shutdown(self, remove_sockets: bool, abort: bool) -> None:
        with self._lifecycle:
            self._shutdown_locked(remove_sockets, abort)

    def _shutdown_locked(self, remove_sockets: bool, abort: bool) -> None:
        loop, server, thread = self._loop, self._server, self._thread
        if loop is None or server is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(
                server.close(remove_sockets=remove_sockets, abort=abort), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._server = self._thread = None


def _domain_arg(text: str) -> tuple[int, str]:
    domid, sep, path = text.partition(":")
    if not sep or not domid.isdigit() or not path or int(domid) == 0:
        raise argparse.ArgumentTypeError(f"expected DOMID:PATH with DOMID > 0, got {text!r}")
    return int(domid), path


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xenoffload xenstored",
        description="Run the embedded XenStore daemon in the foreground.")
    parser.add_argument("--socket", metavar="PATH",
                        default=os.environ.get("XENSTORED_PATH") or DEFAULT_SOCKET,
                        help="privileged (dom0) socket; default $XENSTORED_PATH or "
                             f"{DEFAULT_SOCKET}")
    parser.add_argument("--domain", metavar="DOMID:PATH", type=_domain_arg, action="append",
                        default=[], help="add a guest socket: connections on PATH are "
                                         "unprivileged and act as domain DOMID (repeatable)")
    parser.add_argument("--trace", metavar="FILE",
                        help="append every request/reply to FILE (xenstored -T format)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v info, -vv debug)")
    return parser


async def _serve_until_signalled(server: XenstoredServer) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    try:
        await stop.wait()
        log.info("signal received, shutting down")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await server.close(remove_sockets=True)


def serve_main(argv: list[str] | None = None) -> int:
    """Run the embedded xenstored until SIGTERM/SIGINT; return the exit status (0 on a clean
    shutdown, 1 when the sockets cannot be bound)."""
    args = _build_parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else (
        logging.INFO if args.verbose == 1 else logging.DEBUG)
    logging.basicConfig(stream=sys.stderr, level=level,
                        format="%(asctime)s xenstored %(levelname)s %(message)s")
    domains = dict(args.domain)
    server = XenstoredServer(XenStoreModel(), args.socket, domains, trace_path=args.trace,
                             record=False)
    try:
        asyncio.run(_serve_until_signalled(server))
    except OSError as err:
        log.error("cannot serve: %s", err)
        return 1
    return 0
