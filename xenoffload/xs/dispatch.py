"""Sans-I/O request handling: turn one XenStore request frame into model calls and a reply.

:func:`handle_request` parses a payload the way C xenstored does (NUL-terminated strings,
``onearg`` requiring exactly one trailing NUL, lenient ``atoi`` numbers), checks privilege and
the transaction id first, calls the :class:`~xenoffload.xs.model.XenStoreModel` and
returns ``(reply type, reply payload)``. Errors become ``(ERROR, b"<ERRNO>\\0")``. Nothing here
can raise for any input bytes; that is what the fuzz tests check.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from xenoffload.xs.errors import XenStoreError
from xenoffload.xs.model import Connection, XenStoreModel
from xenoffload.xs.values import Perm, parse_perm
from xenoffload.xs.wire import PAYLOAD_MAX, Op, op_name

__all__ = ["PRIVILEGED_OPS", "encode_event", "handle_request"]

#: Types only privileged connections may send (EACCES otherwise).
PRIVILEGED_OPS = frozenset({Op.CONTROL, Op.INTRODUCE, Op.RELEASE, Op.IS_DOMAIN_INTRODUCED,
                            Op.RESUME, Op.SET_TARGET})
#: Types that ignore the header's tx_id.
_NO_TX_OPS = frozenset({Op.WATCH, Op.UNWATCH})
_OK = b"OK\0"
_LEADING_INT = re.compile(rb"\s*([+-]?\d+)")
_CONTROL_HELP = b"check\nhelp\nprint <string>\nquota [<domid>]\n\0"


class _BadRequest(Exception):
    """Malformed arguments: EINVAL."""


def _strings(payload: bytes) -> list[bytes]:
    """NUL-terminated strings of the payload; trailing bytes without a NUL are ignored."""
    parts = payload.split(b"\0")
    return parts[:-1]


def _onearg(payload: bytes) -> str:
    """The single argument of a payload holding exactly one NUL, at the end."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        raise _BadRequest
    return payload[:-1].decode("latin-1")


def _atoi(text: bytes | str) -> int:
    """C ``atoi``: leading decimal number, 0 when there is none, wrapped to uint32."""
    raw = text.encode("latin-1") if isinstance(text, str) else text
    match = _LEADING_INT.match(raw)
    return int(match.group(1)) % 2**32 if match else 0


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")


def encode_event(path: str, token: str) -> bytes | None:
    """Return the WATCH_EVENT payload, or None if it would exceed the payload limit (such
    events are dropped, as C xenstored does)."""
    payload = path.encode("latin-1", "replace") + b"\0" + token.encode("latin-1", "replace") + b"\0"
    return payload if len(payload) <= PAYLOAD_MAX else None


def handle_request(model: XenStoreModel, conn: Connection, op: int, tx_id: int,
                   payload: bytes) -> tuple[int, bytes]:
    """Handle one request of ``conn``; return the reply's type and payload."""
    try:
        if op not in _HANDLERS:
            raise XenStoreError("ENOSYS", None, op_name(op))
        if op in PRIVILEGED_OPS and not conn.privileged:
            raise XenStoreError("EACCES", None, op_name(op))
        if op not in _NO_TX_OPS:
            model.check_transaction(conn, tx_id)
        reply = _HANDLERS[op](model, conn, tx_id, payload)
    except XenStoreError as err:
        return Op.ERROR, err.errno_name.encode("ascii") + b"\0"
    except _BadRequest:
        return Op.ERROR, b"EINVAL\0"
    if len(reply) > PAYLOAD_MAX:
        return Op.ERROR, b"E2BIG\0"
    return op, reply


def _read(model: XenStoreModel, conn: Connection, tx_id: int, payload: bytes) -> bytes:
    return model.read(conn, _onearg(payload), tx_id)


def _write(model: XenStoreModel, conn: Connection, tx_id: int, payload: bytes) -> bytes:
    if b"\0" not in payload:
        raise _BadRequest
    path, _, value = payload.partition(b"\0")
    model.write(conn, _text(path), value, tx_id)
    return _OK


def _mkdir(model: XenStoreModel, conn: Connection, tx_id: int, payload: bytes) -> bytes:
    model.mkdir(conn, _onearg(payload), tx_id)
    return _OK


def _rm(model: XenStoreModel, conn: Connection, tx_id: int, payload: bytes) -> bytes:
    model.rm(conn, _onearg(payload), tx_id)
    return _OK


def _directory(model: XenStoreModel, conn: Connection, tx_id: int, payload: bytes) -> bytes:
    names = model.directory(conn, _onearg(payload), tx_id)
    return b"".join(name.encode("latin-1") + b"\0" for name in names)


def _directory_part(model: XenStoreModel, conn: Connection, tx_id: int,
                    payload: bytes) -> bytes:
    args = _strings(payload)
    if len(args) != 2:
        raise _BadRequest
    generation, names = model.directory_with_generation(conn, _text(args[0]), tx_id)
    offset = _atoi(args[1])
    children = b"".join(name.encode("latin-1") + b"\0" for name in names)
    gen = str(generation).encode("ascii") + b"\0"
    if offset >= len(children):
        return gen + b"\0"
    room = PAYLOAD_MAX - len(gen) - 1
    end = offset
    while end < len(children):
        nul = children.index(b"\0", end)
        if nul + 1 - offset > room:
            break
        end = nul + 1
    chunk = children[offset:end]
    if end == len(children):
        chunk += b"\0"
    return gen + chunk


def _get_perms(model: XenStoreModel, conn: Connection, tx_id: int, payload: bytes) -> bytes:
    perms = model.get_perms(conn, _onearg(payload), tx_id)
    return b"".join(str(perm).encode("ascii") + b"\0" for perm in perms)


def _set_perms(model: XenStoreModel, conn: Connection, tx_id: int, payload: bytes) -> bytes:
    args = _strings(payload)
    if len(args) < 2:
        raise _BadRequest
    perms: list[Perm] = []
    for raw in args[1:]:
        try:
            perms.append(parse_perm(_text(raw)))
        except ValueError:
            raise _BadRequest from None
    model.set_perms(conn, _text(args[0]), perms, tx_id)
    return _OK


def _watch(model: XenStoreModel, conn: Connection, tx_id: int, payload: bytes) -> bytes:
    args = _strings(payload)
    if len(args) != 2:
        raise _BadRequest
    model.watch(conn, _text(args[0]), _text(args[1]))
    return _OK


def _unwatch(model: XenStoreModel, conn: Connection, tx_id: int, payload: bytes) -> bytes:
    args = _strings(payload)
    if len(args) != 2:
        raise _BadRequest
    model.unwatch(conn, _text(args[0]), _text(args[1]))
    return _OK


def _transaction_start(model: XenStoreModel, conn: Connection, tx_id: int,
                       payload: bytes) -> bytes:
    return str(model.transaction_start(conn, tx_id)).encode("ascii") + b"\0"


def _transaction_end(model: XenStoreModel, conn: Connection, tx_id: int,
                     payload: bytes) -> bytes:
    arg = _onearg(payload)
    if arg not in ("T", "F"):
        raise _BadRequest
    model.transaction_end(conn, tx_id, commit=arg == "T")
    return _OK


def _introduce(model: XenStoreModel, conn: Connection, tx_id: int, payload: bytes) -> bytes:
    args = _strings(payload)
    if len(args) < 3:
        raise _BadRequest
    model.introduce(conn, _atoi(args[0]), _atoi(args[1]), _atoi(args[2]))
    return _OK


def _release(model: XenStoreModel, conn: Connection, tx_id: int, payload: bytes) -> bytes:
    model.release(conn, _atoi(_onearg(payload)))
    return _OK


def _resume(model: XenStoreModel, conn: Connection, tx_id: int, payload: bytes) -> bytes:
    model.resume(conn, _atoi(_onearg(payload)))
    return _OK


def _set_target(model: XenStoreModel, conn: Connection, tx_id: int, payload: bytes) -> bytes:
    args = _strings(payload)
    if len(args) < 2:
        raise _BadRequest
    model.set_target(conn, _atoi(args[0]), _atoi(args[1]))
    return _OK


def _is_domain_introduced(model: XenStoreModel, conn: Connection, tx_id: int,
                          payload: bytes) -> bytes:
    return b"T\0" if model.is_domain_introduced(conn, _atoi(_onearg(payload))) else b"F\0"


def _get_domain_path(model: XenStoreModel, conn: Connection, tx_id: int,
                     payload: bytes) -> bytes:
    path = model.get_domain_path(conn, _atoi(_onearg(payload)))
    return path.encode("ascii") + b"\0"


def _reset_watches(model: XenStoreModel, conn: Connection, tx_id: int, payload: bytes) -> bytes:
    model.reset_watches(conn)
    return _OK


def _control(model: XenStoreModel, conn: Connection, tx_id: int, payload: bytes) -> bytes:
    args = _strings(payload)
    if not args:
        raise _BadRequest
    command = args[0]
    if command in (b"check", b"print"):
        return _OK
    if command == b"help":
        return _CONTROL_HELP
    if command == b"quota" and len(args) == 1:
        return _quota_settings(model).encode("ascii") + b"\0"
    if command == b"quota" and len(args) == 2:
        domid = _atoi(args[1])
        if not model.is_domain_introduced(conn, domid):
            raise XenStoreError("ENOENT", None, "CONTROL")
        usage = model.usage(domid)
        text = f"Domain {domid}:\n" + "".join(
            f"{name:<16}: {value:8d}\n" for name, value in (
                ("nodes", usage.nodes), ("watches", usage.watches),
                ("transactions", usage.transactions), ("memory", usage.memory)))
        return text.encode("ascii") + b"\0"
    raise _BadRequest


def _quota_settings(model: XenStoreModel) -> str:
    """C xenstored's ``quota`` listing (xenstored_control.c), with this model's values."""
    quotas = model.quotas
    rows = (("nodes", quotas.nodes, "Nodes per domain"),
            ("watches", quotas.watches, "Watches per domain"),
            ("transactions", quotas.transactions, "Transactions per domain"),
            ("outstanding", quotas.outstanding, "Outstanding requests per domain"),
            ("transaction-nodes", quotas.transaction_nodes,
             "Max. number of accessed nodes per transaction"),
            ("memory", quotas.memory, "Total Xenstore memory per domain (error level)"),
            ("node-size", quotas.node_size, "Max. size of a node"),
            ("path-max", quotas.path_length, "Max. length of a node path"),
            ("permissions", quotas.perms, "Max. number of permissions per node"))
    return "Quota settings:\n" + "".join(f"{name:<17}: {value:8d} {description}\n"
                                          for name, value, description in rows)


_Handler = Callable[[XenStoreModel, Connection, int, bytes], bytes]

_HANDLERS: dict[int, _Handler] = {
    Op.CONTROL: _control,
    Op.DIRECTORY: _directory,
    Op.READ: _read,
    Op.GET_PERMS: _get_perms,
    Op.WATCH: _watch,
    Op.UNWATCH: _unwatch,
    Op.TRANSACTION_START: _transaction_start,
    Op.TRANSACTION_END: _transaction_end,
    Op.INTRODUCE: _introduce,
    Op.RELEASE: _release,
    Op.GET_DOMAIN_PATH: _get_domain_path,
    Op.WRITE: _write,
    Op.MKDIR: _mkdir,
    Op.RM: _rm,
    Op.SET_PERMS: _set_perms,
    Op.IS_DOMAIN_INTRODUCED: _is_domain_introduced,
    Op.RESUME: _resume,
    Op.SET_TARGET: _set_target,
    Op.RESET_WATCHES: _reset_watches,
    Op.DIRECTORY_PART: _directory_part,
}
