"""Client side of the XenStore wire: encode requests, decode replies (sans-I/O).

Every function returns a :class:`Request` (type, transaction id, payload, and the path it names
for error messages); a request whose payload would exceed 4096 bytes is refused here with
:class:`~xenoffload.xs.errors.XenStoreError` ``E2BIG`` (on the wire the server would drop the
connection instead). The ``decode_*`` functions turn a reply payload into a value.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from xenoffload.xs.errors import XenStoreError
from xenoffload.xs.values import Perm, parse_perm
from xenoffload.xs.wire import PAYLOAD_MAX, Op, op_name

__all__ = [
    "Request",
    "decode_error",
    "decode_flag",
    "decode_names",
    "decode_perms",
    "decode_text",
    "decode_tx_id",
    "encode_string",
    "directory",
    "directory_part",
    "get_domain_path",
    "get_perms",
    "introduce",
    "is_domain_introduced",
    "mkdir",
    "read",
    "release",
    "reset_watches",
    "rm",
    "set_perms",
    "set_target",
    "transaction_end",
    "transaction_start",
    "unwatch",
    "watch",
    "write",
]


@attrs.frozen
class Request:
    """One request as it goes on the wire (the request id is the transport's business)."""

    op: int
    tx_id: int
    payload: bytes
    path: str | None = None  # the path it names, for error messages

    @property
    def name(self) -> str:
        """The request type's name, e.g. ``READ``."""
        return op_name(self.op)

    def error(self, errno_name: str) -> XenStoreError:
        """Return the error for an ERROR reply carrying ``errno_name``."""
        return XenStoreError(errno_name, self.path, self.name)


def _request(op: Op, tx_id: int, payload: bytes, path: str | None = None) -> Request:
    if len(payload) > PAYLOAD_MAX:
        raise XenStoreError("E2BIG", path, op.name)
    return Request(op, tx_id, payload, path)


def encode_string(text: str) -> bytes:
    """Return a path or token as it goes on the wire (UTF-8; XenStore paths are ASCII)."""
    return text.encode("utf-8", "surrogateescape")


def _arg(text: str) -> bytes:
    return encode_string(text) + b"\0"


def _number(value: int) -> bytes:
    return str(value).encode("ascii") + b"\0"


def read(path: str, tx_id: int = 0) -> Request:
    """READ: the reply is the node's value."""
    return _request(Op.READ, tx_id, _arg(path), path)


def write(path: str, value: bytes, tx_id: int = 0) -> Request:
    """WRITE ``value`` (any bytes, NULs included): the path, a NUL, then the value as is."""
    return _request(Op.WRITE, tx_id, _arg(path) + bytes(value), path)


def mkdir(path: str, tx_id: int = 0) -> Request:
    """MKDIR."""
    return _request(Op.MKDIR, tx_id, _arg(path), path)


def rm(path: str, tx_id: int = 0) -> Request:
    """RM."""
    return _request(Op.RM, tx_id, _arg(path), path)


def directory(path: str, tx_id: int = 0) -> Request:
    """DIRECTORY: the reply is the children's names (:func:`decode_names`)."""
    return _request(Op.DIRECTORY, tx_id, _arg(path), path)


def directory_part(path: str, offset: int, tx_id: int = 0) -> Request:
    """DIRECTORY_PART from byte ``offset`` of the child list."""
    return _request(Op.DIRECTORY_PART, tx_id, _arg(path) + _number(offset), path)


def get_perms(path: str, tx_id: int = 0) -> Request:
    """GET_PERMS: the reply is the permission list (:func:`decode_perms`)."""
    return _request(Op.GET_PERMS, tx_id, _arg(path), path)


def set_perms(path: str, perms: Sequence[Perm], tx_id: int = 0) -> Request:
    """SET_PERMS, owner first."""
    return _request(Op.SET_PERMS, tx_id,
                    _arg(path) + b"".join(_arg(str(perm)) for perm in perms), path)


def watch(path: str, token: str) -> Request:
    """WATCH ``path`` with ``token``."""
    return _request(Op.WATCH, 0, _arg(path) + _arg(token), path)


def unwatch(path: str, token: str) -> Request:
    """UNWATCH."""
    return _request(Op.UNWATCH, 0, _arg(path) + _arg(token), path)


def reset_watches() -> Request:
    """RESET_WATCHES: the server forgets the connection's watches and transactions."""
    return _request(Op.RESET_WATCHES, 0, b"")


def transaction_start() -> Request:
    """TRANSACTION_START: the reply is the new id (:func:`decode_tx_id`)."""
    return _request(Op.TRANSACTION_START, 0, b"\0")


def transaction_end(tx_id: int, commit: bool) -> Request:
    """TRANSACTION_END: commit (``T``) or abort (``F``) transaction ``tx_id``."""
    return _request(Op.TRANSACTION_END, tx_id, b"T\0" if commit else b"F\0")


def get_domain_path(domid: int) -> Request:
    """GET_DOMAIN_PATH: the reply is ``/local/domain/<domid>`` (:func:`decode_text`)."""
    return _request(Op.GET_DOMAIN_PATH, 0, _number(domid))


def introduce(domid: int, mfn: int, port: int) -> Request:
    """INTRODUCE (privileged)."""
    return _request(Op.INTRODUCE, 0, _number(domid) + _number(mfn) + _number(port))


def release(domid: int) -> Request:
    """RELEASE (privileged)."""
    return _request(Op.RELEASE, 0, _number(domid))


def is_domain_introduced(domid: int) -> Request:
    """IS_DOMAIN_INTRODUCED (privileged): the reply is ``T`` or ``F`` (:func:`decode_flag`)."""
    return _request(Op.IS_DOMAIN_INTRODUCED, 0, _number(domid))


def set_target(domid: int, target: int) -> Request:
    """SET_TARGET (privileged): ``domid`` gets ``target``'s rights."""
    return _request(Op.SET_TARGET, 0, _number(domid) + _number(target))


def decode_error(payload: bytes) -> str:
    """Return the errno name an ERROR reply carries."""
    return payload.rstrip(b"\0").decode("ascii", "replace")


def decode_names(payload: bytes) -> list[str]:
    """Return the NUL-terminated strings of a reply (DIRECTORY)."""
    return [name.decode("latin-1") for name in payload.split(b"\0")[:-1]]


def decode_perms(payload: bytes) -> tuple[Perm, ...]:
    """Return the permission list of a GET_PERMS reply. Raises ValueError on a malformed one."""
    return tuple(parse_perm(text.decode("ascii")) for text in payload.split(b"\0")[:-1])


def decode_text(payload: bytes) -> str:
    """Return a one-string reply without its NUL."""
    return payload.rstrip(b"\0").decode("latin-1")


def decode_tx_id(payload: bytes) -> int:
    """Return the transaction id of a TRANSACTION_START reply (0 if malformed)."""
    text = payload.rstrip(b"\0")
    return int(text) if text.isdigit() else 0


def decode_flag(payload: bytes) -> bool:
    """Return the boolean of a ``T``/``F`` reply."""
    return payload.rstrip(b"\0") == b"T"
