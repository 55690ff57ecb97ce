"""The XenStore interface every adapter implements, and the values it speaks in.

Adapters (in-memory, pyxs over a socket or /dev/xen/xenbus) implement :class:`Store`.
Everything above them (endpoints, agents, conformance) is written against this module only.

Paths are ``str``; values are ``bytes`` (a hostile guest may write any bytes, so nothing here
decodes values). Errors from the store are :class:`XenStoreError` carrying the errno *name*
XenStore uses on the wire ("ENOENT", "EACCES", "EAGAIN", ...).
"""

from __future__ import annotations

import contextlib
import enum
import re
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import attrs

__all__ = [
    "Access",
    "Perm",
    "WatchEvent",
    "XenStoreError",
    "StoreUnavailable",
    "TransactionAborted",
    "StoreOps",
    "Transaction",
    "Store",
    "format_perms",
    "parse_perm",
    "run_transaction",
    "ensure_watch",
    "TxPrimitives",
    "BoundOps",
]


class Access(enum.Enum):
    """One XenStore permission letter."""

    NONE = "n"
    READ = "r"
    WRITE = "w"
    BOTH = "b"

    @property
    def can_read(self) -> bool:
        return self in (Access.READ, Access.BOTH)

    @property
    def can_write(self) -> bool:
        return self in (Access.WRITE, Access.BOTH)


_PERM_RE = re.compile(r"\A([nrwb])(\d{1,10})\Z")


@attrs.frozen
class Perm:
    """One entry of a node's permission list, e.g. ``r1``.

    The first entry of a list names the node's owner and the access every domain not listed
    later gets; later entries grant per-domain access.
    """

    access: Access
    domid: int = attrs.field(validator=attrs.validators.and_(attrs.validators.ge(0),
                                                             attrs.validators.lt(2**32)))

    def __str__(self) -> str:
        return f"{self.access.value}{self.domid}"


def parse_perm(text: str) -> Perm:
    """Return the :class:`Perm` written as ``text`` (``n0``, ``r1``, ...).

    Raises ValueError for anything else.
    """
    match = _PERM_RE.match(text)
    if match is None:
        raise ValueError(f"not a XenStore permission: {text!r}")
    return Perm(Access(match.group(1)), int(match.group(2)))


def format_perms(perms: Sequence[Perm]) -> str:
    """Return the list as xenstore-ls prints it, e.g. ``n0 r1``."""
    return " ".join(str(perm) for perm in perms)


@attrs.frozen
class WatchEvent:
    """A watch fired: ``path`` changed (or the watch was just registered), ``token`` is the
    watcher's. Carries no value: a client must re-read."""

    path: str
    token: str


class XenStoreError(Exception):
    """XenStore answered a request with an error.

    ``errno_name`` is the name XenStore puts on the wire (``"ENOENT"``, ``"EAGAIN"`` ...);
    ``path`` the path the request named, when there was one.
    """

    def __init__(self, errno_name: str, path: str | None = None, op: str | None = None) -> None:
        self.errno_name = errno_name
        self.path = path
        self.op = op
        where = f" {op}" if op else ""
        at = f" {path}" if path is not None else ""
        super().__init__(f"XenStore{where}{at}: {errno_name}")


class StoreUnavailable(Exception):
    """The connection to XenStore is lost or cannot be made (daemon gone, socket closed,
    request timed out). The caller reconnects; nothing of the store's content is implied."""


class TransactionAborted(Exception):
    """:func:`run_transaction` gave up after too many EAGAIN conflicts in a row."""

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts
        super().__init__(f"transaction conflicted (EAGAIN) {attempts} times in a row")


class StoreOps(Protocol):
    """Node operations; available on a store and inside a transaction alike."""

    def read(self, path: str) -> bytes:
        """Return the node's value. Raises XenStoreError("ENOENT") if it does not exist."""
        ...

    def try_read(self, path: str) -> bytes | None:
        """Return the node's value, or None if it does not exist."""
        ...

    def write(self, path: str, value: bytes) -> None:
        """Set the node's value, creating it and missing parents."""
        ...

    def mkdir(self, path: str) -> None:
        """Create the node (empty) and missing parents; an existing node is left as it is."""
        ...

    def rm(self, path: str) -> None:
        """Remove the node and its subtree. A missing node whose parent exists is no error."""
        ...

    def directory(self, path: str) -> list[str]:
        """Return the names of the node's children. Raises XenStoreError("ENOENT")."""
        ...

    def get_perms(self, path: str) -> tuple[Perm, ...]:
        """Return the node's permission list (owner first)."""
        ...

    def set_perms(self, path: str, perms: Sequence[Perm]) -> None:
        """Replace the node's permission list (owner first)."""
        ...

    def read_many(self, paths: Sequence[str]) -> list[bytes | None]:
        """Return each node's value, in order; None where the node does not exist or may not
        be read (ENOENT, EACCES). An adapter over a socket sends every request before waiting
        for the first reply: one round trip. Other errors raise (after all replies came)."""
        ...

    def write_many(self, values: Sequence[tuple[str, bytes]]) -> None:
        """Write each ``(path, value)`` in order, pipelined like :meth:`read_many`. Raises
        the first error (after all replies came)."""
        ...


class Transaction(StoreOps, Protocol):
    """A XenStore transaction: reads see a snapshot, writes become visible at commit."""

    def commit(self) -> bool:
        """End the transaction, committing it. Return False on a conflict (EAGAIN): nothing
        was written and the caller must redo the whole transaction."""
        ...

    def abort(self) -> None:
        """End the transaction, discarding its writes."""
        ...

    def write_many_if_exists(self, guard: str, values: Sequence[tuple[str, bytes]]) -> bool:
        """Read ``guard`` and write ``values`` in one pipeline; return whether ``guard``
        exists. When it does not, the writes may have been made (re-creating parents) inside
        this transaction: the caller must abort it, never commit."""
        ...


class Store(StoreOps, Protocol):
    """One connection to XenStore, as one domain."""

    def transaction(self) -> Transaction:
        """Start a transaction on this connection."""
        ...

    def watch(self, path: str, token: str) -> None:
        """Register a watch. An event for ``path`` fires at once, then on every change of the
        node or a descendant (write, mkdir, rm, permission change)."""
        ...

    def unwatch(self, path: str, token: str) -> None:
        """Remove a watch; events of it still queued may still be returned."""
        ...

    def next_event(self, timeout: float | None) -> WatchEvent | None:
        """Return the next watch event, waiting at most ``timeout`` seconds (None: forever);
        None on timeout. Raises StoreUnavailable when the connection is lost."""
        ...

    def get_domain_path(self, domid: int) -> str:
        """Return ``/local/domain/<domid>`` as the store reports it."""
        ...

    def close(self) -> None:
        """Close the connection; further calls raise StoreUnavailable."""
        ...


class TxPrimitives(Protocol):
    """What an adapter implements once, for any transaction id (0: outside a transaction);
    :class:`BoundOps` turns it into the public operations."""

    def _read(self, path: str, tx_id: int) -> bytes: ...
    def _try_read(self, path: str, tx_id: int) -> bytes | None: ...
    def _write(self, path: str, value: bytes, tx_id: int) -> None: ...
    def _mkdir(self, path: str, tx_id: int) -> None: ...
    def _rm(self, path: str, tx_id: int) -> None: ...
    def _directory(self, path: str, tx_id: int) -> list[str]: ...
    def _get_perms(self, path: str, tx_id: int) -> tuple[Perm, ...]: ...
    def _set_perms(self, path: str, perms: Sequence[Perm], tx_id: int) -> None: ...
    def _read_many(self, paths: Sequence[str], tx_id: int) -> list[bytes | None]: ...

    def _write_many(self, values: Sequence[tuple[str, bytes]], tx_id: int,
                    guard: str | None = None) -> bool:
        """Write ``values`` (pipelined after a read of ``guard``); return whether ``guard``
        exists (True without one)."""
        ...


class BoundOps:
    """The :class:`StoreOps` of an adapter's primitives bound to one transaction id: a store
    binds itself to 0, a transaction its store to its id."""

    _primitives: TxPrimitives
    tx_id: int

    def read(self, path: str) -> bytes:
        return self._primitives._read(path, self.tx_id)

    def try_read(self, path: str) -> bytes | None:
        return self._primitives._try_read(path, self.tx_id)

    def write(self, path: str, value: bytes) -> None:
        self._primitives._write(path, value, self.tx_id)

    def mkdir(self, path: str) -> None:
        self._primitives._mkdir(path, self.tx_id)

    def rm(self, path: str) -> None:
        self._primitives._rm(path, self.tx_id)

    def directory(self, path: str) -> list[str]:
        return self._primitives._directory(path, self.tx_id)

    def get_perms(self, path: str) -> tuple[Perm, ...]:
        return self._primitives._get_perms(path, self.tx_id)

    def set_perms(self, path: str, perms: Sequence[Perm]) -> None:
        self._primitives._set_perms(path, perms, self.tx_id)

    def read_many(self, paths: Sequence[str]) -> list[bytes | None]:
        return self._primitives._read_many(paths, self.tx_id)

    def write_many(self, values: Sequence[tuple[str, bytes]]) -> None:
        self._primitives._write_many(values, self.tx_id)

    def write_many_if_exists(self, guard: str, values: Sequence[tuple[str, bytes]]) -> bool:
        """See :meth:`Transaction.write_many_if_exists`."""
        return self._primitives._write_many(values, self.tx_id, guard=guard)


def ensure_watch(store: Store, path: str, token: str) -> None:
    """Register a watch; one already registered on this connection (EEXIST) is kept."""
    try:
        store.watch(path, token)
    except XenStoreError as error:
        if error.errno_name != "EEXIST":
            raise


T = TypeVar("T")

#: Attempts :func:`run_transaction` makes before raising TransactionAborted.
DEFAULT_TRANSACTION_ATTEMPTS = 64


def run_transaction(
    store: Store,
    body: Callable[[Transaction], T],
    attempts: int = DEFAULT_TRANSACTION_ATTEMPTS,
) -> T:
    """Run ``body`` inside a transaction, redoing it from scratch on EAGAIN.

    Returns what ``body`` returned in the attempt that committed. An exception from ``body``
    aborts the transaction and propagates. Raises TransactionAborted after ``attempts``
    conflicts in a row.
    """
    for _ in range(attempts):
        txn = store.transaction()
        try:
            result = body(txn)
        except BaseException:
            with contextlib.suppress(XenStoreError, StoreUnavailable):
                txn.abort()
            raise
        if txn.commit():
            return result
    raise TransactionAborted(attempts)
