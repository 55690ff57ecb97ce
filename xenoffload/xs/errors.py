"""The errors of XenStore clients: an error reply, a lost connection, a transaction given up."""

from __future__ import annotations

__all__ = ["StoreUnavailable", "TransactionAborted", "XenStoreError"]


class XenStoreError(Exception):
    """XenStore answered a request with an error.

    ``errno_name`` is the name XenStore puts on the wire (``"ENOENT"``, ``"EAGAIN"`` ...);
    ``path`` the path the request named, when there was one; ``op`` the request type's name.
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
    """A transaction was given up after too many EAGAIN conflicts in a row."""

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts
        super().__init__(f"transaction conflicted (EAGAIN) {attempts} times in a row")
