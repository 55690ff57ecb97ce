"""In-process XenStore: :class:`MemoryStore` adapts one session of the XenStore model to Store.

``MemoryXenStore()`` owns a :class:`~xenoffload.xs.locked.LockedModel` (the model the embedded
server runs), ``.connect(domid)`` opens a session as that domain. Requests are encoded and
handled by the same request handler the server runs (:mod:`xenoffload.xs.dispatch`), minus the
socket, so a MemoryStore answers exactly as the embedded xenstored would. Test hooks play a
hostile guest (any bytes are accepted as values) and inject faults: forced EAGAIN commits,
dropped connections, duplicated or coalesced watch events.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence

from xenoffload.store.adapter import StoreAdapter
from xenoffload.xs import requests
from xenoffload.xs.errors import StoreUnavailable, XenStoreError
from xenoffload.xs.faults import CommitFaults
from xenoffload.xs.locked import LockedModel
from xenoffload.xs.model import Connection, Quotas
from xenoffload.xs.requests import Request
from xenoffload.xs.values import WatchEvent
from xenoffload.xs.wire import Op

__all__ = ["MemoryStore", "MemoryXenStore"]


class MemoryXenStore:
    """A whole in-memory XenStore: one model, any number of sessions, fault injection."""

    def __init__(self, model: LockedModel | None = None, quotas: Quotas | None = None) -> None:
        self.model = model if model is not None else LockedModel(quotas)
        self.faults = CommitFaults()
        self._stores: list[MemoryStore] = []
        self._lock = threading.Lock()

    def connect(self, domid: int = 0, privileged: bool | None = None) -> MemoryStore:
        """Return a new session as ``domid`` (privileged by default only for dom0)."""
        store = MemoryStore(self, self.model.connect(domid, privileged))
        with self._lock:
            self._stores.append(store)
        return store

    def fail_next_commits(self, count: int) -> None:
        """The next ``count`` commits of any session fail with EAGAIN (nothing applied)."""
        with self.model.lock:
            self.faults.fail_next_commits(count)

    def drop_connections(self) -> None:
        """Every open session loses its connection: further calls raise StoreUnavailable."""
        with self._lock:
            stores = list(self._stores)
        for store in stores:
            store.drop()


class MemoryStore(StoreAdapter):
    """One session of a :class:`MemoryXenStore`; implements the Store interface."""

    def __init__(self, world: MemoryXenStore, conn: Connection) -> None:
        super().__init__()
        self.world = world
        self.model = world.model
        self.conn = conn
        self._cond = threading.Condition()
        self._events: collections.deque[WatchEvent] = collections.deque()
        self._unavailable: str | None = None
        self.duplicate_events = False
        self.coalesce_events = False
        conn.listener = self._on_events
        conn.close_listener = self._on_closed_by_model

    def __repr__(self) -> str:
        return f"MemoryStore(domid={self.conn.domid}, conn={self.conn.conn_id})"

    @property
    def domid(self) -> int:
        return self.conn.domid

    # ------------------------------------------------------------ the adapter's part

    def exchange(self, batch: Sequence[Request]) -> list[bytes | XenStoreError]:
        """Handle every request in order as the server would; return each reply's payload or
        error. Raises StoreUnavailable once the session is gone."""
        replies: list[bytes | XenStoreError] = []
        with self.model.lock:
            conn = self._live()
            for request in batch:
                reply_op, reply = self.world.faults.handle(self.model, conn, request.op,
                                                           request.tx_id, request.payload)
                if reply_op == Op.ERROR:
                    replies.append(request.error(requests.decode_error(reply)))
                else:
                    replies.append(reply)
        return replies

    def watch(self, path: str, token: str) -> None:
        """Register a watch; EEXIST if this session already watches (path, token)."""
        self.call(requests.watch(path, token))

    def unwatch(self, path: str, token: str) -> None:
        """Remove a watch (ENOENT if this session has none for (path, token))."""
        self.call(requests.unwatch(path, token))

    def next_events(self, timeout: float | None, limit: int) -> list[WatchEvent]:
        """Wait at most ``timeout`` for the first queued event, then return it and every event
        already queued, up to ``limit``. Raises StoreUnavailable once the connection is gone."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._events:
                if self._unavailable is not None:
                    raise StoreUnavailable(self._unavailable)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                self._cond.wait(remaining)
            if self._unavailable is not None:
                raise StoreUnavailable(self._unavailable)
            return [self._events.popleft() for _ in range(min(limit, len(self._events)))]

    def close(self) -> None:
        """Close the session; further calls raise StoreUnavailable."""
        self._end("connection closed")

    # ------------------------------------------------------------ fault injection

    def drop(self) -> None:
        """Simulate connection loss: the session ends, every call raises StoreUnavailable."""
        self._end("connection lost (injected)")

    def resume_as(self, domid: int) -> None:
        """Simulate this guest's save and restore (or migration): the session now belongs to
        domain ``domid`` and re-registers its watches, each firing once (what Linux's
        ``xs_resume`` does on the same connection). The old domain's tree is the test's to
        remove."""
        with self.model.lock:
            self.model.resume_as(self._live(), domid)
            self._on_events(self.conn)

    # ------------------------------------------------------------ internals

    def _live(self) -> Connection:
        if self._unavailable is not None:
            raise StoreUnavailable(self._unavailable)
        return self.conn

    def _end(self, reason: str) -> None:
        with self._cond:
            if self._unavailable is None:
                self._unavailable = reason
            self._cond.notify_all()
        self.model.disconnect(self.conn)

    def _on_events(self, conn: Connection) -> None:
        events = list(conn.pending)
        conn.pending.clear()
        with self._cond:
            for event in events:
                if self.coalesce_events and event in self._events:
                    continue
                self._events.append(event)
                if self.duplicate_events:
                    self._events.append(WatchEvent(event.path, event.token))
            self._cond.notify_all()

    def _on_closed_by_model(self, conn: Connection) -> None:
        with self._cond:
            if self._unavailable is None:
                self._unavailable = "domain released by xenstored"
            self._cond.notify_all()
