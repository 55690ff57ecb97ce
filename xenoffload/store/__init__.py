"""XenStore adapters: the :class:`Store` interface and its in-memory and pyxs implementations."""

from xenoffload.store.base import (
    Access,
    Perm,
    Store,
    StoreOps,
    StoreUnavailable,
    Transaction,
    TransactionAborted,
    WatchEvent,
    XenStoreError,
    format_perms,
    parse_perm,
    run_transaction,
)
from xenoffload.store.memory import MemoryStore, MemoryXenStore

__all__ = [
    "Access",
    "MemoryStore",
    "MemoryXenStore",
    "Perm",
    "Store",
    "StoreOps",
    "StoreUnavailable",
    "Transaction",
    "TransactionAborted",
    "WatchEvent",
    "XenStoreError",
    "format_perms",
    "parse_perm",
    "run_transaction",
]
