"""The XenStore interface every adapter implements, and the values it speaks in.

Adapters (in-memory, pyxs over a socket or /dev/xen/xenbus) implement :class:`Store`.
Everything above them (endpoints, agents, conformance) is written against this module only; the
value types and errors it speaks in come from :mod:`xenoffload.xs` and are re-exported here.

Paths are ``str``; values are ``bytes`` (a hostile guest may write any bytes, so nothing here
decodes values). Errors from the store are :class:`XenStoreError` carrying the errno *name*
XenStore uses on the wire ("ENOENT", "EACCES", "EAGAIN", ...).

Batches: :meth:`Store.read_batch`, :meth:`Store.write_batch`, :meth:`Store.start_transactions`
and :meth:`Store.end_transactions` send every request of the batch before waiting for the first
reply, so the work of many transactions (many vifs) travels in a few round trips on one
connection. The protocol allows it: requests carry distinct ids, and xenstored answers in order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar

import attrs

from xenoffload.xs.errors import StoreUnavailable, TransactionAborted, XenStoreError
from xenoffload.xs.values import Access, Perm, WatchEvent, format_perms, parse_perm

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
    "WriteGroup",
    "format_perms",
    "parse_perm",
    "run_transaction",
    "ensure_watch",
    "read_own_domid",
]


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


class Transaction(StoreOps, Protocol):
    """A XenStore transaction: reads see a snapshot, writes become visible at commit."""

    def commit(self) -> bool:
        """End the transaction, committing it. Return False on a conflict (EAGAIN): nothing
        was written and the caller must redo the whole transaction."""
        ...

    def abort(self) -> None:
        """End the transaction, discarding its writes."""
        ...


def _value_pairs(values: Iterable[tuple[str, bytes]]) -> tuple[tuple[str, bytes], ...]:
    return tuple((path, bytes(value)) for path, value in values)


@attrs.frozen
class WriteGroup:
    """One transaction's share of :meth:`Store.write_batch`: write ``values`` in order, inside
    ``transaction`` (None: outside any transaction)."""

    transaction: Transaction | None
    values: tuple[tuple[str, bytes], ...] = attrs.field(converter=_value_pairs)


class Store(StoreOps, Protocol):
    """One connection to XenStore, as one domain."""

    def transaction(self) -> Transaction:
        """Start a transaction on this connection."""
        ...

    def start_transactions(self, count: int) -> list[Transaction]:
        """Start ``count`` transactions, every TRANSACTION_START sent before the first reply is
        awaited; return them in order. If any start fails, those that started are aborted and
        the first error is raised (XenStoreError, e.g. ENOSPC past a guest's quota)."""
        ...

    def read_batch(self, requests: Sequence[tuple[Transaction | None, str]]) -> list[bytes | None]:
        """Read each ``(transaction or None, path)``, every READ sent before the first reply is
        awaited; return the values in order, None where the node does not exist or may not be
        read (ENOENT, EACCES). Any other error is raised once every reply came."""
        ...

    def directory_batch(self, requests: Sequence[tuple[Transaction | None, str]]
                        ) -> list[list[str] | None]:
        """List each (transaction or None, path)'s children, every request sent before the
        first reply is awaited; None where the node does not exist or may not be read. Other
        errors raise once every reply came."""
        ...

    def write_batch(self, groups: Sequence[WriteGroup]) -> None:
        """Send every group's WRITEs, all groups pipelined. Any write error is raised once every
        reply came; the transactions stay open for the caller to end."""
        ...

    def end_transactions(self, ends: Sequence[tuple[Transaction, bool]]) -> list[bool]:
        """End each ``(transaction, commit)``: commit (True) or abort (False), every
        TRANSACTION_END sent before the first reply is awaited; return per transaction whether
        its writes were applied: True for a commit that succeeded, False for a conflict
        (EAGAIN: nothing written, redo it) and for an abort. Any other error (ENOSPC from the
        node quota at commit, ENOENT for a transaction already ended) is raised once every
        reply came."""
        ...

    def watch(self, path: str, token: str) -> None:
        """Register a watch. An event for ``path`` fires at once, then on every change of the
        node or a descendant (write, mkdir, rm, permission change)."""
        ...

    def unwatch(self, path: str, token: str) -> None:
        """Remove a watch; events of it still queued may still be returned."""
        ...

    def next_event(self, timeout: float | None) -> WatchEvent | None:
        """Return the next watch event, waiting at most ``timeout`` seconds (None: forever; 0:
        only an event already queued); None on timeout. Raises StoreUnavailable when the
        connection is lost."""
        ...

    def next_events(self, timeout: float | None, limit: int) -> list[WatchEvent]:
        """Wait at most ``timeout`` seconds (None: forever; 0: not at all) for the first event,
        then return it with every event already queued, up to ``limit`` in all, without
        waiting further; an empty list on timeout. Raises StoreUnavailable when the connection
        is lost."""
        ...

    def get_domain_path(self, domid: int) -> str:
        """Return ``/local/domain/<domid>`` as the store reports it."""
        ...

    def close(self) -> None:
        """Close the connection; further calls raise StoreUnavailable."""
        ...


def ensure_watch(store: Store, path: str, token: str) -> bool:
    """Register a watch; return False when this connection already had it (EEXIST: it is
    kept)."""
    try:
        store.watch(path, token)
    except XenStoreError as error:
        if error.errno_name != "EEXIST":
            raise
        return False
    return True


def read_own_domid(store: StoreOps) -> int | None:
    """Return the domid of the domain this connection belongs to: its relative ``domid`` node
    (libxl writes it for every domain, dom0's init for dom0; a guest's home moves with it when
    the guest is restored or migrated), or None when absent, unreadable or not a domid."""
    try:
        raw = store.try_read("domid")
    except XenStoreError:
        return None
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 5:
        return None
    return int(raw)


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
