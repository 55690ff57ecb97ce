"""Fault injection for the test harnesses (the in-memory store and the embedded server): a
request handler that makes the next commits fail with EAGAIN.

It wraps :func:`~xenoffload.xs.dispatch.handle_request`, so the model stays free of test hooks:
a commit chosen to fail is carried out as an abort (nothing applied, the transaction is gone)
and answered EAGAIN, exactly what a real conflict looks like to the client.
"""

from __future__ import annotations

from xenoffload.xs.dispatch import handle_request
from xenoffload.xs.model import Connection, XenStoreModel
from xenoffload.xs.wire import Op

__all__ = ["CommitFaults"]

_COMMIT = b"T\0"
_ABORT = b"F\0"


class CommitFaults:
    """A request handler failing the next ``pending`` commits (of any connection)."""

    def __init__(self) -> None:
        self.pending = 0

    def fail_next_commits(self, count: int) -> None:
        """The next ``count`` commits fail with EAGAIN (nothing applied)."""
        self.pending = count

    def handle(self, model: XenStoreModel, conn: Connection, op: int, tx_id: int,
               payload: bytes) -> tuple[int, bytes]:
        """Handle one request like :func:`~xenoffload.xs.dispatch.handle_request`; return the
        reply's type and payload."""
        if self.pending > 0 and op == Op.TRANSACTION_END and payload == _COMMIT:
            reply_op, reply = handle_request(model, conn, op, tx_id, _ABORT)
            if reply_op != Op.TRANSACTION_END:
                return reply_op, reply  # no such transaction: the client learns that
            self.pending -= 1
            return Op.ERROR, b"EAGAIN\0"
        return handle_request(model, conn, op, tx_id, payload)
