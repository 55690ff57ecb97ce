"""The embedded xenstored as a test harness: a server in a background thread, with fault
injection, crash and restart.

:class:`EmbeddedXenstored` runs a :class:`~xenoffload.xenstored.server.XenstoredServer` in its
own thread for tests and in-process users. Its model is a
:class:`~xenoffload.xs.locked.LockedModel`: the server holds the model's lock around each
request, so a test may inspect or change the tree from its own thread at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Mapping

import attrs

from xenoffload.xenstored.server import EventRecord, RequestRecord, ServerLimits, XenstoredServer
from xenoffload.xs.faults import CommitFaults
from xenoffload.xs.locked import LockedModel
from xenoffload.xs.model import Connection, Quotas
from xenoffload.xs.wire import Frame

__all__ = ["EmbeddedXenstored", "ServerFaults"]


@attrs.define
class ServerFaults:
    """Fault injection switches, read by the server for every request.

    ``stall_replies``: requests are consumed but never answered (a hung xenstored).
    ``bogus_req_id_next``: the next reply carries a request id nobody asked for.
    """

    stall_replies: bool = False
    bogus_req_id_next: bool = False


class _FaultyServer(XenstoredServer):
    """A server whose answers go through the harness' faults."""

    faults: ServerFaults
    commit_faults: CommitFaults

    def answer(self, conn: Connection, frame: Frame) -> Frame | None:
        if self.faults.stall_replies:
            return None
        reply_op, reply = self.commit_faults.handle(self.model, conn, frame.op, frame.tx_id,
                                                    frame.payload)
        req_id = frame.req_id
        if self.faults.bogus_req_id_next:
            self.faults.bogus_req_id_next = False
            req_id = (req_id + 0x5A5A5A5A) % 2**32
        return Frame(reply_op, req_id, frame.tx_id, reply)


class EmbeddedXenstored:
    """A :class:`~xenoffload.xenstored.server.XenstoredServer` running in a background thread.

    >>> with EmbeddedXenstored(tmp / "xs.sock", domains={1: tmp / "dom1.sock"}) as srv:
    ...     store = connect_store(srv.socket_path)

    ``kill()`` simulates a crash (connections reset, socket files left behind, as a dead
    daemon leaves them); ``restart()`` starts again on the same paths. Like C xenstored without
    a persistent database, a restart begins with a fresh tree unless ``keep_tree=True`` was
    given (then the same model, its nodes and domains, is served again; sessions never survive).
    """

    def __init__(self, socket_path: str | os.PathLike[str],
                 domains: Mapping[int, str | os.PathLike[str]] | None = None, *,
                 model: LockedModel | None = None, quotas: Quotas | None = None,
                 limits: ServerLimits | None = None,
                 trace_path: str | os.PathLike[str] | None = None, record: bool = True,
                 keep_tree: bool = False) -> None:
        self.socket_path = os.fspath(socket_path)
        self.domain_sockets = {domid: os.fspath(path) for domid, path in (domains or {}).items()}
        self.trace_path = os.fspath(trace_path) if trace_path is not None else None
        self.record = record
        self.keep_tree = keep_tree
        self.limits = limits
        self._quotas = quotas
        self.model = model if model is not None else LockedModel(quotas)
        self.faults = ServerFaults()
        self._commit_faults = CommitFaults()
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

    def fail_next_commits(self, count: int) -> None:
        """The next ``count`` commits (of any connection) fail with EAGAIN, nothing applied."""
        with self.model.lock:
            self._commit_faults.fail_next_commits(count)

    def start(self) -> EmbeddedXenstored:
        """Bind the sockets and serve in a daemon thread. Returns self."""
        with self._lifecycle:
            return self._start()

    def _start(self) -> EmbeddedXenstored:
        if self._thread is not None:
            raise RuntimeError("embedded xenstored already running")
        loop = asyncio.new_event_loop()
        server = _FaultyServer(self.model, self.socket_path, self.domain_sockets,
                               trace_path=self.trace_path, record=self.record,
                               limits=self.limits, lock=self.model.lock)
        server.faults = self.faults
        server.commit_faults = self._commit_faults
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
                self.model = LockedModel(self._quotas)
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
