"""Toggles over the kernel's ethtool generic-netlink family (what ``ethtool -k``/``-K`` use).

A small codec on the standard library's AF_NETLINK socket, no third-party dependency: the
family id is resolved once per socket (CTRL_CMD_GETFAMILY), the feature names once per
process (ETHTOOL_MSG_STRSET_GET, string set ETH_SS_FEATURES), then each read is one
ETHTOOL_MSG_FEATURES_GET with compact bitsets, and an apply is that GET, plus, only when a
feature must change, one ETHTOOL_MSG_FEATURES_SET naming just those features (their value and
mask; the kernel keeps every other bit as it is, so no other writer's change is lost) and a
GET to verify. Errors carry the kernel's extended-ACK text.

A socket serves the network namespace it was created in. For a named namespace
(``/run/netns/NAME``) the socket is created in a short-lived helper thread that first enters
the namespace with setns(2); it is cached per namespace and replaced when the name comes to
refer to another namespace (the file's inode changes).
"""

from __future__ import annotations

import collections
import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator, Mapping

from xenoffload.toggles.base import (
    ApplyResult,
    DeviceGone,
    DeviceRef,
    FeatureState,
    ToggleError,
    TogglePermissionDenied,
    TogglesUnavailable,
)
from xenoffload.toggles.plan import judge_after, plan_apply, side_effects

__all__ = ["NetlinkToggles", "NETNS_DIR"]

NETNS_DIR = "/run/netns"

# netlink(7), genetlink, ethtool_netlink uapi constants.
_NETLINK_GENERIC = 16
_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10
_NETLINK_EXT_ACK = 11
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_CAPPED = 0x100
_NLM_F_ACK_TLVS = 0x200
_NLMSGERR_ATTR_MSG = 1
_NLMSGERR_ATTR_MISS_TYPE = 5
_NLA_F_NESTED = 0x8000
_NLA_TYPE_MASK = 0x3FFF

_GENL_ID_CTRL = 0x10
_CTRL_CMD_GETFAMILY = 3
_CTRL_ATTR_FAMILY_ID = 1
_CTRL_ATTR_FAMILY_NAME = 2

_ETHTOOL_GENL_NAME = "ethtool"
_ETHTOOL_GENL_VERSION = 1
_ETHTOOL_MSG_STRSET_GET = 1
_ETHTOOL_MSG_FEATURES_GET = 11
_ETHTOOL_MSG_FEATURES_SET = 12
_ETHTOOL_A_HEADER_DEV_INDEX = 1
_ETHTOOL_A_HEADER_DEV_NAME = 2
_ETHTOOL_A_HEADER_FLAGS = 3
_ETHTOOL_FLAG_COMPACT_BITSETS = 1 << 0
_ETHTOOL_FLAG_OMIT_REPLY = 1 << 1
_ETHTOOL_A_BITSET_NOMASK = 1
_ETHTOOL_A_BITSET_SIZE = 2
_ETHTOOL_A_BITSET_BITS = 3
_ETHTOOL_A_BITSET_VALUE = 4
_ETHTOOL_A_BITSET_BITS_BIT = 1
_ETHTOOL_A_BITSET_BIT_NAME = 2
_ETHTOOL_A_BITSET_BIT_VALUE = 3
_ETHTOOL_A_STRSET_HEADER = 1
_ETHTOOL_A_STRSET_STRINGSETS = 2
_ETHTOOL_A_STRINGSETS_STRINGSET = 1
_ETHTOOL_A_STRINGSET_ID = 1
_ETHTOOL_A_STRINGSET_STRINGS = 3
_ETHTOOL_A_STRINGS_STRING = 1
_ETHTOOL_A_STRING_INDEX = 1
_ETHTOOL_A_STRING_VALUE = 2
_ETHTOOL_A_FEATURES_HEADER = 1
_ETHTOOL_A_FEATURES_HW = 2
_ETHTOOL_A_FEATURES_WANTED = 3
_ETHTOOL_A_FEATURES_ACTIVE = 4
_ETHTOOL_A_FEATURES_NOCHANGE = 5
_ETH_SS_FEATURES = 4

_CLONE_NEWNET = 0x40000000
_NLMSGHDR = struct.Struct("=IHHII")
_GENLMSGHDR = struct.Struct("=BBH")
_NLATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_RECV_BUFFER = 65536


class NetlinkError(Exception):
    """The kernel answered a netlink request with an error (``errno``, extended-ACK ``text``)."""

    def __init__(self, error: int, text: str | None) -> None:
        self.errno = error
        self.text = text
        detail = text or os.strerror(error)
        super().__init__(f"{errno.errorcode.get(error, str(error))}: {detail}")


# --- attribute codec -----------------------------------------------------------------------


def _attr(kind: int, payload: bytes) -> bytes:
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _nest(kind: int, *children: bytes) -> bytes:
    return _attr(kind | _NLA_F_NESTED, b"".join(children))


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, _U32.pack(value))


def _string(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _flag(kind: int) -> bytes:
    return _attr(kind, b"")


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (type, payload) of each attribute in ``data``; raises ToggleError if truncated."""
    offset = 0
    while offset + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size or offset + length > len(data):
            raise ToggleError("malformed netlink attribute from the kernel")
        yield kind & _NLA_TYPE_MASK, data[offset + _NLATTR.size : offset + length]
        offset += (length + 3) & ~3


def _attr_map(data: bytes) -> dict[int, bytes]:
    return dict(_attrs(data))


def _decode_string(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode(errors="replace")


def _decode_u32(payload: bytes) -> int:
    value: int = _U32.unpack_from(payload)[0]
    return value


def _bitmap(payload: bytes) -> int:
    """Return the compact bitset's ``VALUE`` (u32 words in host order, word 0 first) as int."""
    bitset = _attr_map(payload)
    if _ETHTOOL_A_BITSET_BITS in bitset:
        raise ToggleError("kernel sent a verbose bitset where a compact one was requested")
    words = bitset.get(_ETHTOOL_A_BITSET_VALUE, b"")
    value = 0
    for index, (word,) in enumerate(struct.iter_unpack("=I", words[: len(words) // 4 * 4])):
        value |= word << (32 * index)
    return value


# --- the socket ----------------------------------------------------------------------------


class _GenlSocket:
    """One generic-netlink socket, bound to the namespace it was created in, talking to the
    ethtool family. Not thread-safe: the caller serialises."""

    def __init__(self, sock: socket.socket, sent: collections.Counter[str]) -> None:
        self._sock = sock
        self._seq = 0
        self._sent = sent
        self.family_id = 0
        try:
            reply = self.transact(
                _GENL_ID_CTRL,
                _CTRL_CMD_GETFAMILY,
                _string(_CTRL_ATTR_FAMILY_NAME, _ETHTOOL_GENL_NAME),
                label="CTRL_GETFAMILY",
            )
        except NetlinkError as error:
            sock.close()
            if error.errno == errno.ENOENT:
                raise TogglesUnavailable("the kernel has no ethtool netlink family") from error
            raise TogglesUnavailable(
                f"cannot resolve the ethtool netlink family: {error}"
            ) from error
        if reply is None or _CTRL_ATTR_FAMILY_ID not in (attributes := _attr_map(reply)):
            sock.close()
            raise TogglesUnavailable("the kernel did not name the ethtool netlink family's id")
        self.family_id = struct.unpack_from("=H", attributes[_CTRL_ATTR_FAMILY_ID])[0]

    def close(self) -> None:
        self._sock.close()

    def transact(
        self, family: int, command: int, payload: bytes, *, label: str, want_reply: bool = True
    ) -> bytes | None:
        """Send one request and return the attributes of its reply (None when ``want_reply`` is
        False: the request then asks for an ACK only). Raises NetlinkError for an error answer,
        ToggleError when the kernel does not answer."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        flags = _NLM_F_REQUEST | (0 if want_reply else _NLM_F_ACK)
        body = _GENLMSGHDR.pack(command, _ETHTOOL_GENL_VERSION, 0) + payload
        message = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), family, flags, self._seq, 0) + body
        try:
            self._sock.send(message)
            self._sent[label] += 1
            while True:
                data = self._sock.recv(_RECV_BUFFER)
                answer = self._match(data)
                if answer is not None:
                    return answer[0]
        except TimeoutError as error:
            raise ToggleError(f"no answer from the kernel to {label}") from error
        except OSError as error:
            raise ToggleError(f"netlink socket failed during {label}: {error}") from error

    def _match(self, data: bytes) -> tuple[bytes | None] | None:
        """Return (reply attributes or None for an ACK) if ``data`` answers the current request,
        None if it is unrelated (a stale message); raise NetlinkError for an error answer."""
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size or offset + length > len(data):
                raise ToggleError("malformed netlink message from the kernel")
            payload = data[offset + _NLMSGHDR.size : offset + length]
            offset += (length + 3) & ~3
            if seq != self._seq or kind == _NLMSG_DONE:
                continue
            if kind == _NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", payload)
                if code == 0:
                    return (None,)
                raise NetlinkError(-code, _extack_text(payload, flags))
            return (payload[_GENLMSGHDR.size :],)
        return None


def _extack_text(payload: bytes, flags: int) -> str | None:
    """Return the extended-ACK message of an NLMSG_ERROR payload, if it carries one."""
    if not flags & _NLM_F_ACK_TLVS or len(payload) < 4 + _NLMSGHDR.size:
        return None
    original_length = _NLMSGHDR.unpack_from(payload, 4)[0]
    tlv_offset = 4 + (_NLMSGHDR.size if flags & _NLM_F_CAPPED else original_length)
    tlvs = _attr_map(payload[(tlv_offset + 3) & ~3 :])
    if _NLMSGERR_ATTR_MSG in tlvs:
        return _decode_string(tlvs[_NLMSGERR_ATTR_MSG])
    if _NLMSGERR_ATTR_MISS_TYPE in tlvs:
        return f"missing attribute type {_decode_u32(tlvs[_NLMSGERR_ATTR_MISS_TYPE])}"
    return None


def _open_socket() -> socket.socket:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_GENERIC)
    except OSError as error:
        if error.errno in (errno.EPERM, errno.EACCES):
            raise TogglePermissionDenied(f"cannot open a netlink socket: {error}") from error
        raise TogglesUnavailable(f"cannot open a generic netlink socket: {error}") from error
    sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)
    sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
    sock.settimeout(5.0)
    sock.bind((0, 0))
    return sock


_libc = ctypes.CDLL(None, use_errno=True)


def _open_socket_in_netns(netns_fd: int) -> socket.socket:
    """Return a netlink socket created inside the namespace ``netns_fd`` refers to, entering it
    in a helper thread (setns(2) moves only the calling thread) that then ends."""
    outcome: list[socket.socket | BaseException] = []

    def enter_and_open() -> None:
        try:
            if _libc.setns(netns_fd, _CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
            outcome.append(_open_socket())
        except BaseException as error:
            outcome.append(error)

    helper = threading.Thread(target=enter_and_open, name="xenoffload-setns", daemon=True)
    helper.start()
    helper.join()
    result = outcome[0]
    if isinstance(result, socket.socket):
        return result
    if isinstance(result, ToggleError):
        raise result
    if isinstance(result, OSError) and result.errno in (errno.EPERM, errno.EACCES):
        raise TogglePermissionDenied(f"cannot enter the network namespace: {result}") from result
    raise TogglesUnavailable(f"cannot enter the network namespace: {result}") from result


# --- the Toggles implementation ------------------------------------------------------------


class _Snapshot:
    __slots__ = ("features", "ifindex")

    def __init__(self, ifindex: int, features: dict[str, FeatureState]) -> None:
        self.ifindex = ifindex
        self.features = features


class NetlinkToggles:
    """:class:`~xenoffload.toggles.base.Toggles` over the ethtool netlink family.

    ``sent`` counts the requests sent to the kernel by kind (``FEATURES_GET``,
    ``FEATURES_SET``, ``STRSET_GET``, ``CTRL_GETFAMILY``). Thread-safe (one request at a time).
    ``close()`` (or use as a context manager) releases the cached sockets.
    """

    def __init__(self, netns_dir: str = NETNS_DIR) -> None:
        self._netns_dir = netns_dir
        self._lock = threading.Lock()
        self._sockets: dict[str | None, tuple[tuple[int, int] | None, _GenlSocket]] = {}
        self._feature_names: tuple[str, ...] | None = None
        self.sent: collections.Counter[str] = collections.Counter()

    def __enter__(self) -> NetlinkToggles:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every cached socket."""
        with self._lock:
            for _identity, genl in self._sockets.values():
                genl.close()
            self._sockets.clear()

    def read(self, device: DeviceRef) -> Mapping[str, FeatureState]:
        """Return every feature of ``device`` by kernel name (one FEATURES_GET).

        Raises DeviceGone, TogglesUnavailable, TogglePermissionDenied or ToggleError."""
        with self._lock:
            genl = self._socket(device)
            return self._get(genl, device).features

    def apply(self, device: DeviceRef, wanted: Mapping[str, bool]) -> ApplyResult:
        """Request ``wanted`` and return the verified outcome of each feature; see
        :meth:`xenoffload.toggles.base.Toggles.apply`."""
        with self._lock:
            genl = self._socket(device)
            before = self._get(genl, device)
            plan = plan_apply(before.features, wanted)
            if not plan.to_send:
                return ApplyResult(device, plan.settled, set_issued=False)
            kernel_error = self._set_features(genl, device, before.ifindex, plan.to_send)
            after = self._get(genl, device, ifindex=before.ifindex)
            outcomes = judge_after(wanted, plan.to_send, after.features, kernel_error)
            return ApplyResult(
                device,
                outcomes,
                set_issued=True,
                side_effects=side_effects(before.features, after.features, wanted),
            )

    # --- requests --------------------------------------------------------------------------

    def _get(self, genl: _GenlSocket, device: DeviceRef, ifindex: int | None = None) -> _Snapshot:
        header = self._header(device, ifindex, _ETHTOOL_FLAG_COMPACT_BITSETS)
        try:
            reply = genl.transact(
                genl.family_id,
                _ETHTOOL_MSG_FEATURES_GET,
                _nest(_ETHTOOL_A_FEATURES_HEADER, *header),
                label="FEATURES_GET",
            )
        except NetlinkError as error:
            raise _translate(error, device) from error
        assert reply is not None
        attributes = _attr_map(reply)
        names = self._names(genl)
        try:
            reply_header = _attr_map(attributes[_ETHTOOL_A_FEATURES_HEADER])
            hw, wanted, active, nochange = (
                _bitmap(attributes[kind])
                for kind in (
                    _ETHTOOL_A_FEATURES_HW,
                    _ETHTOOL_A_FEATURES_WANTED,
                    _ETHTOOL_A_FEATURES_ACTIVE,
                    _ETHTOOL_A_FEATURES_NOCHANGE,
                )
            )
            reply_index = _decode_u32(reply_header[_ETHTOOL_A_HEADER_DEV_INDEX])
        except KeyError as error:
            raise ToggleError("incomplete FEATURES_GET reply from the kernel", device) from error
        features = {}
        for bit, name in enumerate(names):
            fixed = not (hw >> bit) & 1 or bool((nochange >> bit) & 1)
            is_active = bool((active >> bit) & 1)
            # A fixed feature's "wanted" bit means nothing; report it as ethtool does.
            requested = is_active if fixed else bool((wanted >> bit) & 1)
            features[name] = FeatureState(active=is_active, requested=requested, fixed=fixed)
        return _Snapshot(reply_index, features)

    def _set_features(
        self, genl: _GenlSocket, device: DeviceRef, ifindex: int, to_send: Mapping[str, bool]
    ) -> str | None:
        """Send one FEATURES_SET naming only ``to_send``; return the kernel's error text if it
        refused the request for a reason other than a vanished device or missing privilege."""
        bits = [
            _nest(
                _ETHTOOL_A_BITSET_BITS_BIT,
                _string(_ETHTOOL_A_BITSET_BIT_NAME, name),
                *((_flag(_ETHTOOL_A_BITSET_BIT_VALUE),) if value else ()),
            )
            for name, value in sorted(to_send.items())
        ]
        # No NOMASK flag: the listed bits are the mask, so only they change.
        payload = _nest(
            _ETHTOOL_A_FEATURES_HEADER, *self._header(device, ifindex, _ETHTOOL_FLAG_OMIT_REPLY)
        ) + _nest(_ETHTOOL_A_FEATURES_WANTED, _nest(_ETHTOOL_A_BITSET_BITS, *bits))
        try:
            genl.transact(
                genl.family_id,
                _ETHTOOL_MSG_FEATURES_SET,
                payload,
                label="FEATURES_SET",
                want_reply=False,
            )
        except NetlinkError as error:
            translated = _translate(error, device)
            if isinstance(translated, DeviceGone | TogglePermissionDenied):
                raise translated from error
            return error.text or os.strerror(error.errno)
        return None

    def _names(self, genl: _GenlSocket) -> tuple[str, ...]:
        """Return the kernel's feature names by bit (fetched once: they are kernel-global)."""
        if self._feature_names is not None:
            return self._feature_names
        # The header (no device: the table is global) must be present on recent kernels.
        request = _nest(_ETHTOOL_A_STRSET_HEADER, _u32(_ETHTOOL_A_HEADER_FLAGS, 0)) + _nest(
            _ETHTOOL_A_STRSET_STRINGSETS,
            _nest(_ETHTOOL_A_STRINGSETS_STRINGSET, _u32(_ETHTOOL_A_STRINGSET_ID, _ETH_SS_FEATURES)),
        )
        try:
            reply = genl.transact(
                genl.family_id, _ETHTOOL_MSG_STRSET_GET, request, label="STRSET_GET"
            )
        except NetlinkError as error:
            raise ToggleError(f"cannot read the kernel's feature names: {error}") from error
        assert reply is not None
        names: dict[int, str] = {}
        for kind, stringsets in _attrs(reply):
            if kind != _ETHTOOL_A_STRSET_STRINGSETS:
                continue
            for _, stringset in _attrs(stringsets):
                fields = _attr_map(stringset)
                if (
                    _decode_u32(fields.get(_ETHTOOL_A_STRINGSET_ID, b"\xff" * 4))
                    != _ETH_SS_FEATURES
                ):
                    continue
                for _, string in _attrs(fields.get(_ETHTOOL_A_STRINGSET_STRINGS, b"")):
                    entry = _attr_map(string)
                    names[_decode_u32(entry[_ETHTOOL_A_STRING_INDEX])] = _decode_string(
                        entry[_ETHTOOL_A_STRING_VALUE]
                    )
        if not names or sorted(names) != list(range(len(names))):
            raise ToggleError("the kernel's feature name table is missing or has gaps")
        self._feature_names = tuple(names[index] for index in range(len(names)))
        return self._feature_names

    @staticmethod
    def _header(device: DeviceRef, ifindex: int | None, flags: int) -> tuple[bytes, ...]:
        # With both index and name the kernel checks they still match: a device renamed or
        # replaced since the first read is reported as gone instead of being changed.
        parts = [
            _string(_ETHTOOL_A_HEADER_DEV_NAME, device.name),
            _u32(_ETHTOOL_A_HEADER_FLAGS, flags),
        ]
        if ifindex is not None:
            parts.insert(0, _u32(_ETHTOOL_A_HEADER_DEV_INDEX, ifindex))
        return tuple(parts)

    # --- namespaces --------------------------------------------------------------------------

    def _socket(self, device: DeviceRef) -> _GenlSocket:
        """Return the cached socket for the device's namespace, creating it when missing or when
        the namespace name now refers to another namespace."""
        identity: tuple[int, int] | None = None
        if device.netns is not None:
            path = os.path.join(self._netns_dir, device.netns)
            try:
                status = os.stat(path)
            except FileNotFoundError as error:
                self._drop(device.netns)
                raise TogglesUnavailable(
                    f"network namespace {device.netns!r} does not exist ({path})", device
                ) from error
            except OSError as error:
                raise TogglesUnavailable(f"cannot inspect {path}: {error}", device) from error
            identity = (status.st_dev, status.st_ino)
        cached = self._sockets.get(device.netns)
        if cached is not None and cached[0] == identity:
            return cached[1]
        self._drop(device.netns)
        try:
            if device.netns is None:
                sock = _open_socket()
            else:
                path = os.path.join(self._netns_dir, device.netns)
                try:
                    netns_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError as error:
                    raise TogglesUnavailable(
                        f"network namespace {device.netns!r} does not exist ({path})"
                    ) from error
                except PermissionError as error:
                    raise TogglePermissionDenied(f"cannot open {path}: {error}") from error
                try:
                    sock = _open_socket_in_netns(netns_fd)
                finally:
                    os.close(netns_fd)
            genl = _GenlSocket(sock, self.sent)
        except ToggleError as error:
            raise type(error)(str(error), device) from error
        self._sockets[device.netns] = (identity, genl)
        return genl

    def _drop(self, netns: str | None) -> None:
        cached = self._sockets.pop(netns, None)
        if cached is not None:
            cached[1].close()


def _translate(error: NetlinkError, device: DeviceRef) -> ToggleError:
    detail = error.text or os.strerror(error.errno)
    if error.errno == errno.ENODEV:
        return DeviceGone(f"no such device ({detail})", device)
    if error.errno in (errno.EPERM, errno.EACCES):
        return TogglePermissionDenied(f"operation not permitted ({detail})", device)
    if error.errno == errno.EOPNOTSUPP:
        return TogglesUnavailable(f"the device does not support this ({detail})", device)
    return ToggleError(f"kernel error {error}", device)
