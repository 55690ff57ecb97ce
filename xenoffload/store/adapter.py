"""The Store interface implemented once, over one operation an adapter provides: exchanging a
batch of encoded requests for their replies.

An adapter (:class:`~xenoffload.store.memory.MemoryStore`,
:class:`~xenoffload.store.pyxs_store.PyxsStore`) subclasses :class:`StoreAdapter` and implements
:meth:`StoreAdapter.exchange` (send every request, then collect every reply, in order) and its
watch and event handling. Everything else — node operations, transactions, batches, commit and
EAGAIN, DIRECTORY_PART for long child lists — is written here once, on the request encoders of
:mod:`xenoffload.xs.requests`, so both adapters obey the same semantics by construction.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Sequence

from xenoffload.store.base import Transaction, WriteGroup
from xenoffload.xs import requests
from xenoffload.xs.errors import StoreUnavailable, XenStoreError
from xenoffload.xs.requests import Request
from xenoffload.xs.values import Perm, WatchEvent

__all__ = ["AdapterTransaction", "NodeOps", "StoreAdapter"]

#: Errors that mean "no such node, as far as this domain may know": reads answer None.
_MISSING = ("ENOENT", "EACCES")
#: How often a long directory is re-read with DIRECTORY_PART when it changes meanwhile.
_DIRECTORY_PART_ATTEMPTS = 16


class NodeOps:
    """The node operations of :class:`~xenoffload.store.base.StoreOps` on one adapter and one
    transaction id (0: outside any transaction)."""

    def __init__(self, adapter: StoreAdapter, tx_id: int) -> None:
        self._adapter = adapter
        self.tx_id = tx_id

    def read(self, path: str) -> bytes:
        """Return the node's value. Raises XenStoreError (ENOENT, EACCES, ...)."""
        return self._adapter.call(requests.read(path, self.tx_id))

    def try_read(self, path: str) -> bytes | None:
        """Return the node's value, or None if it does not exist (other errors raise)."""
        try:
            return self.read(path)
        except XenStoreError as err:
            if err.errno_name == "ENOENT":
                return None
            raise

    def write(self, path: str, value: bytes) -> None:
        """Set the node's value (any bytes), creating it and missing parents."""
        self._adapter.call(requests.write(path, value, self.tx_id))

    def mkdir(self, path: str) -> None:
        """Create the node (empty) and missing parents; an existing node is left as it is."""
        self._adapter.call(requests.mkdir(path, self.tx_id))

    def rm(self, path: str) -> None:
        """Remove the node and its subtree; a missing node whose parent exists is no error."""
        self._adapter.call(requests.rm(path, self.tx_id))

    def directory(self, path: str) -> list[str]:
        """Return the names of the node's children (DIRECTORY_PART when they do not fit one
        message). Raises XenStoreError (ENOENT, ...)."""
        try:
            reply = self._adapter.call(requests.directory(path, self.tx_id))
        except XenStoreError as err:
            if err.errno_name != "E2BIG":
                raise
            return self._directory_parts(path)
        return requests.decode_names(reply)

    def get_perms(self, path: str) -> tuple[Perm, ...]:
        """Return the node's permission list, owner first."""
        reply = self._adapter.call(requests.get_perms(path, self.tx_id))
        try:
            return requests.decode_perms(reply)
        except ValueError as err:
            raise XenStoreError("EINVAL", path, "GET_PERMS") from err

    def set_perms(self, path: str, perms: Sequence[Perm]) -> None:
        """Replace the node's permission list, owner first."""
        self._adapter.call(requests.set_perms(path, perms, self.tx_id))

    def _directory_parts(self, path: str) -> list[str]:
        """Read a long child list with DIRECTORY_PART, restarting if the node changes."""
        for _ in range(_DIRECTORY_PART_ATTEMPTS):
            names: list[bytes] = []
            generation: bytes | None = None
            offset = 0
            while True:
                reply = self._adapter.call(requests.directory_part(path, offset, self.tx_id))
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


class AdapterTransaction(NodeOps):
    """A transaction of a :class:`StoreAdapter` (its own id; several may be open at once)."""

    def __init__(self, adapter: StoreAdapter, tx_id: int) -> None:
        super().__init__(adapter, tx_id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._adapter!r}, tx_id={self.tx_id})"

    @property
    def store(self) -> StoreAdapter:
        """The store this transaction runs on."""
        return self._adapter

    def commit(self) -> bool:
        """Commit; return False on EAGAIN (nothing was written: redo the transaction).
        Raises XenStoreError for other refusals (ENOSPC from the node quota, ENOENT)."""
        return self._adapter.end_transactions([(self, True)])[0]

    def abort(self) -> None:
        """Discard the transaction."""
        self._adapter.end_transactions([(self, False)])


class StoreAdapter(NodeOps, abc.ABC):
    """Implements :class:`~xenoffload.store.base.Store` on :meth:`exchange`; subclasses add
    watches and events."""

    def __init__(self) -> None:
        super().__init__(self, 0)

    # ------------------------------------------------------------ what an adapter provides

    @abc.abstractmethod
    def exchange(self, batch: Sequence[Request]) -> list[bytes | XenStoreError]:
        """Send every request of ``batch``, then collect every reply; return, in order, each
        reply's payload or the XenStoreError its ERROR reply carries. Raises StoreUnavailable
        when the connection is lost or a reply does not come in time."""

    @abc.abstractmethod
    def watch(self, path: str, token: str) -> None:
        """Register a watch (see :meth:`~xenoffload.store.base.Store.watch`)."""

    @abc.abstractmethod
    def unwatch(self, path: str, token: str) -> None:
        """Remove a watch (see :meth:`~xenoffload.store.base.Store.unwatch`)."""

    @abc.abstractmethod
    def next_events(self, timeout: float | None, limit: int) -> list[WatchEvent]:
        """See :meth:`~xenoffload.store.base.Store.next_events`."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection; further calls raise StoreUnavailable."""

    def event_fd(self) -> int | None:
        """A descriptor that becomes readable when an event is queued or the connection is
        lost (then take the events with ``next_events(0, ...)``), or None when this adapter
        has none: wait in :meth:`next_events` instead."""
        return None

    # ------------------------------------------------------------ built on exchange

    def call(self, request: Request) -> bytes:
        """Send one request and return its reply's payload. Raises XenStoreError for an ERROR
        reply, StoreUnavailable when the connection is lost."""
        reply = self.exchange([request])[0]
        if isinstance(reply, XenStoreError):
            raise reply
        return reply

    def next_event(self, timeout: float | None) -> WatchEvent | None:
        """Return the next watch event, waiting at most ``timeout`` seconds (0: only one
        already queued); None on timeout. Raises StoreUnavailable when the connection is lost."""
        events = self.next_events(timeout, 1)
        return events[0] if events else None

    def transaction(self) -> Transaction:
        """Start a transaction (XenStoreError ENOSPC past a guest's transaction quota)."""
        return self.start_transactions(1)[0]

    def start_transactions(self, count: int) -> list[Transaction]:
        """See :meth:`~xenoffload.store.base.Store.start_transactions`."""
        replies = self.exchange([requests.transaction_start() for _ in range(count)])
        started: list[Transaction] = []
        failure: XenStoreError | None = None
        for reply in replies:
            if isinstance(reply, XenStoreError):
                failure = failure or reply
            else:
                started.append(AdapterTransaction(self, requests.decode_tx_id(reply)))
        if failure is not None:
            if started:
                with contextlib.suppress(XenStoreError, StoreUnavailable):
                    self.end_transactions([(txn, False) for txn in started])
            raise failure
        return started

    def read_batch(self, batch: Sequence[tuple[Transaction | None, str]]) -> list[bytes | None]:
        """See :meth:`~xenoffload.store.base.Store.read_batch`."""
        values: list[bytes | None] = []
        failure: XenStoreError | None = None
        for reply in self.exchange([requests.read(path, self._tx_id_of(txn))
                                    for txn, path in batch]):
            if isinstance(reply, XenStoreError):
                values.append(None)
                if reply.errno_name not in _MISSING:
                    failure = failure or reply
            else:
                values.append(reply)
        if failure is not None:
            raise failure
        return values

    def directory_batch(self, batch: Sequence[tuple[Transaction | None, str]]
                        ) -> list[list[str] | None]:
        """See :meth:`~xenoffload.store.base.Store.directory_batch`."""
        replies = self.exchange([requests.directory(path, self._tx_id_of(txn))
                                 for txn, path in batch])
        listings: list[list[str] | None] = []
        failure: XenStoreError | None = None
        for (txn, path), reply in zip(batch, replies, strict=True):
            if not isinstance(reply, XenStoreError):
                listings.append(requests.decode_names(reply))
            elif reply.errno_name == "E2BIG":  # too many children for one reply
                ops = self if txn is None else txn
                assert isinstance(ops, NodeOps)
                listings.append(ops._directory_parts(path))
            else:
                listings.append(None)
                if reply.errno_name not in _MISSING:
                    failure = failure or reply
        if failure is not None:
            raise failure
        return listings

    def write_batch(self, groups: Sequence[WriteGroup]) -> None:
        """See :meth:`~xenoffload.store.base.Store.write_batch`."""
        failure = next((reply for reply in self.exchange([
            requests.write(path, value, self._tx_id_of(group.transaction))
            for group in groups for path, value in group.values])
            if isinstance(reply, XenStoreError)), None)
        if failure is not None:
            raise failure

    def end_transactions(self, ends: Sequence[tuple[Transaction, bool]]) -> list[bool]:
        """See :meth:`~xenoffload.store.base.Store.end_transactions`."""
        replies = self.exchange([requests.transaction_end(self._tx_id_of(txn), commit)
                                 for txn, commit in ends])
        applied: list[bool] = []
        failure: XenStoreError | None = None
        for (_, commit), reply in zip(ends, replies, strict=True):
            if isinstance(reply, XenStoreError):
                if reply.errno_name != "EAGAIN" or not commit:
                    failure = failure or reply
                applied.append(False)
            else:
                applied.append(commit)
        if failure is not None:
            raise failure
        return applied

    # ------------------------------------------------------------ privileged and other calls

    def get_domain_path(self, domid: int) -> str:
        """Return ``/local/domain/<domid>`` as the store reports it."""
        return requests.decode_text(self.call(requests.get_domain_path(domid)))

    def is_domain_introduced(self, domid: int) -> bool:
        """IS_DOMAIN_INTRODUCED (privileged connections only)."""
        return requests.decode_flag(self.call(requests.is_domain_introduced(domid)))

    def set_target(self, domid: int, target: int) -> None:
        """SET_TARGET: ``domid`` (a device model) gets ``target``'s rights (privileged)."""
        self.call(requests.set_target(domid, target))

    def reset_watches(self) -> None:
        """RESET_WATCHES: the server forgets every watch and transaction of this connection."""
        self.call(requests.reset_watches())

    # ------------------------------------------------------------ internals

    def _tx_id_of(self, txn: Transaction | None) -> int:
        """The id of ``txn`` (0 for None). Raises ValueError for another store's transaction."""
        if txn is None:
            return 0
        if not isinstance(txn, AdapterTransaction) or txn.store is not self:
            raise ValueError(f"{txn!r} is not a transaction of {self!r}")
        return txn.tx_id
