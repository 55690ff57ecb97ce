"""What an implementation under test did on the wire: its requests turned into reads and
committed effects, replayed in order. Pure functions over request records; no I/O.

The embedded xenstored records every request of every connection
(:class:`~xenoffload.xenstored.server.RequestRecord`). The conformance judges need more than
the raw list: which writes became visible together (a transaction's writes at its commit, a
plain write at once), which reads were made inside which transaction, and the absolute path
of each (a relative path is relative to ``/local/domain/<domid>`` of the connection). The same
shape comes out of a ``xenstored -T`` trace (:func:`parse_trace`), so a model of a stock
driver can be compared with what the real one did.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import attrs

from xenoffload.xenstored.server import RequestRecord

__all__ = [
    "MUTATING_OPS",
    "Access",
    "Effect",
    "WireOp",
    "absolute",
    "accesses",
    "effects",
    "parse_trace",
    "show_value",
    "state_history",
    "under",
    "wire_ops",
]

#: Requests that change the tree (or try to).
MUTATING_OPS = frozenset({"WRITE", "MKDIR", "RM", "SET_PERMS"})


def show_value(value: bytes) -> str:
    """Return a node value for a message: as is when it is plain printable ASCII without
    surrounding white space, else as a bytes literal (``b'1\\n'``)."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return repr(value)
    return text if text and text.isprintable() and text.strip() == text else repr(value)


def absolute(path: str, domid: int) -> str:
    """Return ``path`` as an absolute path, resolving a relative one as xenstored does for a
    connection of domain ``domid``."""
    return path if path.startswith("/") or path.startswith("@") else \
        f"/local/domain/{domid}/{path}"


def under(path: str, directory: str) -> bool:
    """Return whether ``path`` is ``directory`` or inside it."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


@attrs.frozen
class WireOp:
    """One request in a client-neutral form: operation, connection, transaction, absolute
    path, the value written (WRITE; for TRANSACTION_END its ``T``/``F`` argument; for WATCH and
    UNWATCH the token) and whether the server accepted it."""

    position: int
    conn_id: int
    op: str
    tx_id: int
    path: str
    value: bytes | None
    ok: bool
    reply: bytes


def _split_path(payload: bytes) -> tuple[str, bytes | None]:
    head, sep, rest = payload.partition(b"\0")
    return head.decode("latin-1"), (rest if sep else None)


def wire_ops(records: Iterable[tuple[int, RequestRecord]]) -> list[WireOp]:
    """Return the requests (``(log position, record)`` pairs) as :class:`WireOp` values."""
    ops = []
    for position, record in records:
        path, rest = _split_path(record.payload)
        value = rest if record.op in ("WRITE", "WATCH", "UNWATCH") else None
        if record.op == "TRANSACTION_END":
            path, value = "", record.payload
        elif record.op in ("TRANSACTION_START", "RESET_WATCHES"):
            path = ""
        elif record.op in ("WATCH", "UNWATCH", "READ", "DIRECTORY", "DIRECTORY_PART",
                           "GET_PERMS", *MUTATING_OPS):
            path = absolute(path, record.domid)
        ops.append(WireOp(position, record.conn_id, record.op, record.tx_id, path, value,
                          record.reply_op != "ERROR", record.reply_payload))
    return ops


@attrs.frozen
class Effect:
    """Writes that became visible at once: a committed transaction or one plain request.

    ``writes`` maps a path to its new value (None: removed, with its subtree)."""

    position: int
    conn_id: int
    tx_id: int
    writes: tuple[tuple[str, bytes | None], ...]


@attrs.frozen
class Access:
    """One read by the implementation: where, in which transaction (0: none), what came
    back (None: an error such as ENOENT)."""

    position: int
    conn_id: int
    tx_id: int
    path: str
    value: bytes | None


def _change(op: WireOp) -> tuple[str, bytes | None] | None:
    if op.op == "WRITE":
        return op.path, op.value if op.value is not None else b""
    if op.op == "MKDIR":
        return op.path, b""
    if op.op == "RM":
        return op.path, None
    return None


def effects(ops: Sequence[WireOp]) -> list[Effect]:
    """Return the visible changes made by ``ops``, in the order they became visible.

    A transaction's accepted writes become one effect at a committing TRANSACTION_END whose
    reply is not an error; an aborted or failed transaction has none. MKDIR of an existing
    node is reported like a write of an empty value (the judges only ask about presence)."""
    pending: dict[tuple[int, int], list[tuple[str, bytes | None]]] = {}
    found: list[Effect] = []
    for op in ops:
        if op.op == "TRANSACTION_START" and op.ok:
            tx_id = int(op.reply.rstrip(b"\0") or b"0")
            pending[(op.conn_id, tx_id)] = []
            continue
        if op.op == "TRANSACTION_END":
            writes = pending.pop((op.conn_id, op.tx_id), [])
            if op.ok and (op.value or b"").startswith(b"T") and writes:
                found.append(Effect(op.position, op.conn_id, op.tx_id, tuple(writes)))
            continue
        change = _change(op) if op.ok else None
        if change is None:
            continue
        if op.tx_id:
            pending.setdefault((op.conn_id, op.tx_id), []).append(change)
        else:
            found.append(Effect(op.position, op.conn_id, 0, (change,)))
    return found


def accesses(ops: Sequence[WireOp]) -> list[Access]:
    """Return every READ (accepted or not) as an :class:`Access`."""
    return [Access(op.position, op.conn_id, op.tx_id, op.path, op.reply if op.ok else None)
            for op in ops if op.op == "READ"]


def state_history(found: Sequence[Effect], directory: str) -> list[tuple[int, bytes | None]]:
    """Return the successive values ``<directory>/state`` took through ``found``: (position,
    value; None when the node or the directory was removed)."""
    state = f"{directory}/state"
    history: list[tuple[int, bytes | None]] = []
    for effect in found:
        for path, value in effect.writes:
            if path == state or (value is None and under(state, path)):
                history.append((effect.position, value))
    return history


_TRACE_LINE = re.compile(
    r"\A(IN|OUT) (0x[0-9a-f]+) \d{8} \d\d:\d\d:\d\d (\w+) \((.*)\)\Z")


@attrs.define
class _Pending:
    conn: int
    op: str
    tx_id: int
    payload: bytes
    reply_op: str = "NONE"
    reply: bytes = b""


def parse_trace(lines: Iterable[str], domids: dict[int, int] | None = None) -> list[RequestRecord]:
    """Return the requests of a ``xenstored -T`` trace as request records (in the order they
    arrived), each with the reply its connection got for it (replies come in request order
    per connection; watch events are skipped). ``domids`` maps a connection id to its domain
    (default 0), used for relative paths.

    The trace shows neither transaction ids nor NULs (printed as spaces): a request is taken
    to belong to the transaction its connection had open when it arrived (the reply to
    TRANSACTION_START seen, TRANSACTION_END not yet sent), and ``path value`` is split at the
    first space. Both hold for the xenbus clients of the traces this is used on."""
    domids = domids or {}
    waiting: dict[int, list[int]] = {}
    open_tx: dict[int, int] = {}
    requests: list[_Pending] = []
    for line in lines:
        match = _TRACE_LINE.match(line.rstrip("\n"))
        if match is None:
            continue
        direction, conn_text, op, payload = match.groups()
        conn = int(conn_text, 16)
        raw = payload.encode("latin-1")
        body = raw[:-1] if raw.endswith(b" ") else raw
        if direction == "IN":
            if op == "WRITE":
                path, _, value = body.partition(b" ")
                data = path + b"\0" + value
            else:
                data = body.replace(b" ", b"\0") + b"\0" if body else b""
            tx_id = open_tx.get(conn, 0)
            if op == "TRANSACTION_END":
                open_tx.pop(conn, None)
            waiting.setdefault(conn, []).append(len(requests))
            requests.append(_Pending(conn, op, tx_id, data))
            continue
        if op == "WATCH_EVENT" or not waiting.get(conn):
            continue
        request = requests[waiting[conn].pop(0)]
        request.reply_op, request.reply = op, body.replace(b" ", b"\0") + b"\0"
        if request.op == "TRANSACTION_START" and op != "ERROR":
            open_tx[conn] = int(body.strip() or b"0")
    return [RequestRecord(r.conn, domids.get(r.conn, 0), r.op, order, r.tx_id, r.payload,
                          r.reply_op, r.reply, float(order))
            for order, r in enumerate(requests)]
