"""Netlink sockets, one per network namespace: the I/O under the pure codecs.

A :class:`NetlinkChannel` is one AF_NETLINK socket of one protocol (generic netlink for ethtool,
NETLINK_ROUTE for traffic control and links) in the namespace it was created in; it sends a
:class:`~xenoffload.toggles.nl_codec.Request` with the next sequence number and feeds what it
receives into a :class:`~xenoffload.toggles.nl_codec.ReplyCollector` until the request is
answered. Kernel refusals come back as values
(:class:`~xenoffload.toggles.nl_codec.ErrorAnswer`); a socket failure, a timeout or a malformed
answer raises :class:`~xenoffload.toggles.base.ToggleError`.

For a named namespace (``/run/netns/NAME``) the socket is created in a short-lived helper
thread that first enters the namespace with setns(2) (which moves only the calling thread;
Python 3.11 has no ``os.setns``). :class:`NamespaceSockets` caches one socket-based object per
namespace and replaces it when the name comes to refer to another namespace (the file's inode
changes), or reports the namespace gone. Anything with an ``exchange`` method can stand in for
a socket (:class:`~xenoffload.toggles.nl_codec.NetlinkTransport`): the tests replay recorded
kernel answers that way, and a dry run answers from its simulated kernel.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from xenoffload.toggles.base import (
    DeviceRef,
    ToggleError,
    TogglePermissionDenied,
    TogglesUnavailable,
)
from xenoffload.toggles.nl_codec import (
    Answer,
    ErrorAnswer,
    NetlinkDecodeError,
    NetlinkTransport,
    ReplyCollector,
    Request,
)

__all__ = [
    "NETNS_DIR",
    "NETLINK_ROUTE",
    "NETLINK_GENERIC",
    "NetlinkChannel",
    "open_channel",
    "NamespaceSockets",
]

NETNS_DIR = "/run/netns"
NETLINK_ROUTE = 0
NETLINK_GENERIC = 16
_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10
_NETLINK_EXT_ACK = 11
_CLONE_NEWNET = 0x40000000
_RECV_BUFFER = 65536  # a dump's datagrams are at most 32 KiB; single replies are smaller
_TIMEOUT = 5.0

_libc = ctypes.CDLL(None, use_errno=True)


class NetlinkChannel:
    """One netlink socket. Not thread-safe: the owner serialises (and counts requests)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0
        self._buffer = bytearray(_RECV_BUFFER)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    def exchange(self, request: Request, label: str) -> Answer | ErrorAnswer:
        """Send ``request`` and return its answer; see
        :meth:`~xenoffload.toggles.nl_codec.NetlinkTransport.exchange`."""
        self._seq = (self._seq % 0xFFFFFFFF) + 1
        collector = ReplyCollector(self._seq, request.expect())
        try:
            self._sock.send(request.encode(self._seq))
            while True:
                size = self._sock.recv_into(self._buffer, 0, socket.MSG_TRUNC)
                if size > len(self._buffer):
                    raise ToggleError(f"the kernel's answer to {label} exceeds {len(self._buffer)}"
                                      " bytes")
                outcome = collector.feed(bytes(self._buffer[:size]))
                if outcome is not None:
                    return outcome
        except TimeoutError as error:
            raise ToggleError(f"no answer from the kernel to {label}") from error
        except NetlinkDecodeError as error:
            raise ToggleError(f"malformed netlink answer to {label}: {error}") from error
        except OSError as error:
            raise ToggleError(f"netlink socket failed during {label}: {error}") from error


def _open_socket(protocol: int) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    except OSError as error:
        if error.errno in (errno.EPERM, errno.EACCES):
            raise TogglePermissionDenied(f"cannot open a netlink socket: {error}") from error
        raise TogglesUnavailable(f"cannot open a netlink socket: {error}") from error
    sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)
    sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
    sock.settimeout(_TIMEOUT)
    sock.bind((0, 0))
    return sock


def _open_socket_in_netns(netns_fd: int, protocol: int) -> socket.socket:
    """Return a socket created inside the namespace ``netns_fd`` refers to, entering it in a
    helper thread that then ends."""
    outcome: list[socket.socket | BaseException] = []

    def enter_and_open() -> None:
        try:
            if _libc.setns(netns_fd, _CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
            outcome.append(_open_socket(protocol))
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


def open_channel(protocol: int, netns_path: str | None) -> NetlinkChannel:
    """Return a channel of ``protocol`` in the namespace file ``netns_path`` (None: the
    caller's namespace). Raises TogglesUnavailable or TogglePermissionDenied."""
    if netns_path is None:
        return NetlinkChannel(_open_socket(protocol))
    try:
        netns_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as error:
        raise TogglesUnavailable(f"network namespace {netns_path} does not exist") from error
    except PermissionError as error:
        raise TogglePermissionDenied(f"cannot open {netns_path}: {error}") from error
    try:
        return NetlinkChannel(_open_socket_in_netns(netns_fd, protocol))
    finally:
        os.close(netns_fd)


class _Closable(Protocol):
    def close(self) -> None: ...


SocketUser = TypeVar("SocketUser", bound=_Closable)
#: Opens a transport in a namespace file (None: the caller's namespace).
Opener = Callable[[str | None], NetlinkTransport]


class NamespaceSockets(Generic[SocketUser]):
    """One ``SocketUser`` per network namespace, built by ``build`` from a transport that
    ``opener`` opens (by default a :class:`NetlinkChannel` of ``protocol``). Not thread-safe:
    the owner serialises."""

    def __init__(self, protocol: int, build: Callable[[NetlinkTransport], SocketUser],
                 netns_dir: str = NETNS_DIR, opener: Opener | None = None) -> None:
        self._protocol = protocol
        self._build = build
        self._netns_dir = netns_dir
        self._opener = opener
        self._cache: dict[str | None, tuple[tuple[int, int] | None, SocketUser]] = {}

    def get(self, device: DeviceRef) -> SocketUser:
        """Return the cached object for the device's namespace, creating it when missing or
        when the namespace name now refers to another namespace. Raises TogglesUnavailable
        (namespace missing), TogglePermissionDenied, or what ``build`` raises, each naming
        ``device``."""
        identity: tuple[int, int] | None = None
        path = None
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
        cached = self._cache.get(device.netns)
        if cached is not None and cached[0] == identity:
            return cached[1]
        self._drop(device.netns)
        try:
            transport = (self._opener(path) if self._opener is not None
                         else open_channel(self._protocol, path))
            user = self._build(transport)
        except ToggleError as error:
            raise type(error)(str(error), device) from error
        self._cache[device.netns] = (identity, user)
        return user

    def close(self) -> None:
        """Close every cached object."""
        for _identity, user in self._cache.values():
            user.close()
        self._cache.clear()

    def _drop(self, netns: str | None) -> None:
        cached = self._cache.pop(netns, None)
        if cached is not None:
            cached[1].close()
