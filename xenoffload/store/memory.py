"""In-process XenStore: :class:`MemoryStore` adapts one session of the xenstored model to Store.

``MemoryXenStore()`` owns a :class:`~xenoffload.xenstored.model.XenStoreModel` (the same one the
embedded server runs), ``.connect(domid)`` opens a session as that domain. Because every rule
lives in the model, a MemoryStore answers exactly as the embedded xenstored would over a socket,
minus the socket. Test hooks play a hostile guest (any bytes are accepted as values) and inject
faults: forced EAGAIN commits, dropped connections, duplicated or coalesced watch events.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence

from xenoffload.store.base import (
    BoundOps,
    Perm,
    StoreUnavailable,
    WatchEvent,
    XenStoreError,
)

# The module, not its names: xenstored.model imports store.base, whose package imports us.
from xenoffload.xenstored import model as xs_model

__all__ = ["MemoryStore", "MemoryTransaction", "MemoryXenStore", "check_payload"]


def check_payload(op: str, path: str, extra: int = 0) -> None:
    """Raise XenStoreError("E2BIG") if a request naming ``path`` plus ``extra`` payload bytes
    would not fit in one XenStore message (the wire would drop the connection instead)."""
    if len(path.encode("latin-1", "replace")) + 1 + extra > xs_model.PAYLOAD_MAX:
        raise XenStoreError("E2BIG", path, op)


class MemoryXenStore:
    """A whole in-memory XenStore: one model, any number of sessions."""

    def __init__(self, model: xs_model.XenStoreModel | None = None,
                 quotas: xs_model.Quotas | None = None) -> None:
        self.model = model if model is not None else xs_model.XenStoreModel(quotas)
        self._stores: list[MemoryStore] = []
        self._lock = threading.Lock()

    def connect(self, domid: int = 0, privileged: bool | None = None) -> MemoryStore:
        """Return a new session as ``domid`` (privileged by default only for dom0)."""
        store = MemoryStore(self.model, self.model.connect(domid, privileged))
        with self._lock:
            self._stores.append(store)
        return store

    def fail_next_commits(self, count: int) -> None:
        """The next ``count`` commits of any session fail with EAGAIN (nothing applied)."""
        self.model.fail_next_commits(count)

    def drop_connections(self) -> None:
        """Every open session loses its connection: further calls raise StoreUnavailable."""
        with self._lock:
            stores = list(self._stores)
        for store in stores:
            store.drop()


class MemoryTransaction(BoundOps):
    """A transaction of a :class:`MemoryStore`."""

    def __init__(self, store: MemoryStore, tx_id: int) -> None:
        self._store = self._primitives = store
        self.tx_id = tx_id

    def commit(self) -> bool:
        """Commit; return False on EAGAIN (nothing was written)."""
        conn = self._store._live()
        try:
            self._store.model.transaction_end(conn, self.tx_id, commit=True)
        except XenStoreError as err:
            if err.errno_name == "EAGAIN":
                return False
            raise
        return True

    def abort(self) -> None:
        """Discard the transaction."""
        self._store.model.transaction_end(self._store._live(), self.tx_id, commit=False)


class MemoryStore(BoundOps):
    """One session of a :class:`MemoryXenStore`; implements the Store interface."""

    tx_id = 0

    def __init__(self, model: xs_model.XenStoreModel, conn: xs_model.Connection) -> None:
        self._primitives = self
        self.model = model
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

    # ------------------------------------------------------------ Store API

    def transaction(self) -> MemoryTransaction:
        """Start a transaction (ENOSPC past the transaction quota)."""
        return MemoryTransaction(self, self.model.transaction_start(self._live()))

    def watch(self, path: str, token: str) -> None:
        check_payload("WATCH", path, len(token) + 1)
        self.model.watch(self._live(), path, token)

    def unwatch(self, path: str, token: str) -> None:
        self.model.unwatch(self._live(), path, token)

    def next_event(self, timeout: float | None) -> WatchEvent | None:
        """Return the next queued watch event, waiting up to ``timeout`` seconds; None on
        timeout. Raises StoreUnavailable once the connection is gone."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._events:
                if self._unavailable is not None:
                    raise StoreUnavailable(self._unavailable)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if self._unavailable is not None:
                raise StoreUnavailable(self._unavailable)
            return self._events.popleft()

    def get_domain_path(self, domid: int) -> str:
        return self.model.get_domain_path(self._live(), domid)

    def close(self) -> None:
        """Close the session; further calls raise StoreUnavailable."""
        with self._cond:
            if self._unavailable is None:
                self._unavailable = "connection closed"
            self._cond.notify_all()
        self.model.disconnect(self.conn)

    # ------------------------------------------------------------ privileged extras

    def introduce_domain(self, domid: int, mfn: int = 0, port: int = 1) -> None:
        """INTRODUCE ``domid`` (privileged sessions only)."""
        self.model.introduce(self._live(), domid, mfn, port)

    def release_domain(self, domid: int) -> None:
        """RELEASE ``domid`` (privileged sessions only)."""
        self.model.release(self._live(), domid)

    def is_domain_introduced(self, domid: int) -> bool:
        return self.model.is_domain_introduced(self._live(), domid)

    def set_target(self, domid: int, target: int) -> None:
        self.model.set_target(self._live(), domid, target)

    def reset_watches(self) -> None:
        """RESET_WATCHES: forget every watch and transaction of this session."""
        self.model.reset_watches(self._live())

    # ------------------------------------------------------------ fault injection

    def drop(self) -> None:
        """Simulate connection loss: the session ends, every call raises StoreUnavailable."""
        with self._cond:
            if self._unavailable is None:
                self._unavailable = "connection lost (injected)"
            self._cond.notify_all()
        self.model.disconnect(self.conn)

    def inject_event(self, event: WatchEvent) -> None:
        """Queue a spurious event, as xenstored may send (clients must re-read)."""
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    # ------------------------------------------------------------ internals

    def _live(self) -> xs_model.Connection:
        if self._unavailable is not None:
            raise StoreUnavailable(self._unavailable)
        return self.conn

    def _on_events(self, conn: xs_model.Connection) -> None:
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

    def _on_closed_by_model(self, conn: xs_model.Connection) -> None:
        with self._cond:
            if self._unavailable is None:
                self._unavailable = "domain released by xenstored"
            self._cond.notify_all()

    def _read(self, path: str, tx_id: int) -> bytes:
        check_payload("READ", path)
        return self.model.read(self._live(), path, tx_id)

    def _try_read(self, path: str, tx_id: int) -> bytes | None:
        try:
            return self._read(path, tx_id)
        except XenStoreError as err:
            if err.errno_name == "ENOENT":
                return None
            raise

    def _read_many(self, paths: Sequence[str], tx_id: int) -> list[bytes | None]:
        values: list[bytes | None] = []
        for path in paths:
            try:
                values.append(self._read(path, tx_id))
            except XenStoreError as err:
                if err.errno_name not in ("ENOENT", "EACCES"):
                    raise
                values.append(None)
        return values

    def _write_many(self, values: Sequence[tuple[str, bytes]], tx_id: int,
                    guard: str | None = None) -> bool:
        # Like the pipelined socket adapter: every write is attempted, the first error raised.
        if guard is not None and self._read_many([guard], tx_id) == [None]:
            return False  # nothing written: the caller aborts anyway
        first_error: XenStoreError | None = None
        for path, value in values:
            try:
                self._write(path, value, tx_id)
            except XenStoreError as err:
                first_error = first_error or err
        if first_error is not None:
            raise first_error
        return True

    def _write(self, path: str, value: bytes, tx_id: int) -> None:
        check_payload("WRITE", path, len(value))
        self.model.write(self._live(), path, bytes(value), tx_id)

    def _mkdir(self, path: str, tx_id: int) -> None:
        check_payload("MKDIR", path)
        self.model.mkdir(self._live(), path, tx_id)

    def _rm(self, path: str, tx_id: int) -> None:
        check_payload("RM", path)
        self.model.rm(self._live(), path, tx_id)

    def _directory(self, path: str, tx_id: int) -> list[str]:
        check_payload("DIRECTORY", path)
        return self.model.directory(self._live(), path, tx_id)

    def _get_perms(self, path: str, tx_id: int) -> tuple[Perm, ...]:
        check_payload("GET_PERMS", path)
        return self.model.get_perms(self._live(), path, tx_id)

    def _set_perms(self, path: str, perms: Sequence[Perm], tx_id: int) -> None:
        check_payload("SET_PERMS", path, sum(len(str(perm)) + 1 for perm in perms))
        self.model.set_perms(self._live(), path, perms, tx_id)
