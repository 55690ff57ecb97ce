"""Sans-I/O XenStore wire codec: message types, frames, limits and an incremental frame parser.

A message is a 16-byte little-endian header (type, req_id, tx_id, len) followed by ``len``
payload bytes, at most 4096 (xen/include/public/io/xs_wire.h). :class:`FrameParser` takes bytes
as they arrive and hands out complete frames; a header announcing more than 4096 bytes is a
protocol error after which the connection must be dropped, as C xenstored does.
"""

from __future__ import annotations

import enum
import struct

import attrs

__all__ = [
    "ABS_PATH_MAX",
    "HEADER",
    "PAYLOAD_MAX",
    "REL_PATH_MAX",
    "Frame",
    "FrameParser",
    "Op",
    "ProtocolError",
    "op_name",
]

#: The message header: type, req_id, tx_id, len (all uint32 little endian).
HEADER = struct.Struct("<IIII")
#: Largest payload of one XenStore message (xs_wire.h XENSTORE_PAYLOAD_MAX).
PAYLOAD_MAX = 4096
#: Longest absolute path (xs_wire.h XENSTORE_ABS_PATH_MAX).
ABS_PATH_MAX = 3072
#: Longest path below a domain's home (xs_wire.h XENSTORE_REL_PATH_MAX).
REL_PATH_MAX = 2048


class Op(enum.IntEnum):
    """XenStore message types (xs_wire.h ``enum xsd_sockmsg_type``)."""

    CONTROL = 0
    DEBUG = 0  # the old name of CONTROL
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESTRICT = 20  # obsolete, answered ENOSYS
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    GET_FEATURE = 23
    SET_FEATURE = 24
    GET_QUOTA = 25
    SET_QUOTA = 26


def op_name(op: int) -> str:
    """Return the type's name as xenstored traces it, ``**UNKNOWN**`` for unknown types."""
    try:
        return Op(op).name
    except ValueError:
        return "**UNKNOWN**"


class ProtocolError(Exception):
    """The peer broke the framing (a payload longer than 4096 bytes); drop the connection."""


@attrs.frozen
class Frame:
    """One XenStore message."""

    op: int = attrs.field(validator=attrs.validators.and_(attrs.validators.ge(0),
                                                          attrs.validators.lt(2**32)))
    req_id: int = attrs.field(validator=attrs.validators.and_(attrs.validators.ge(0),
                                                              attrs.validators.lt(2**32)))
    tx_id: int = attrs.field(validator=attrs.validators.and_(attrs.validators.ge(0),
                                                             attrs.validators.lt(2**32)))
    payload: bytes = attrs.field(validator=attrs.validators.max_len(PAYLOAD_MAX))

    def encode(self) -> bytes:
        """Return the frame as it goes on the wire."""
        return HEADER.pack(self.op, self.req_id, self.tx_id, len(self.payload)) + self.payload


class FrameParser:
    """Incremental decoder: :meth:`receive` bytes as they arrive, take complete frames with
    :meth:`next_frame` one at a time (or :meth:`feed` for both at once).

    Taking frames one at a time lets a server stop between two requests of a client (to apply
    back-pressure) while the rest stays here as raw bytes. Once it raised
    :class:`ProtocolError` the parser stays broken (every later call raises).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._offset = 0  # start of the first byte not yet handed out
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet handed out as part of a frame."""
        return len(self._buffer) - self._offset

    def receive(self, data: bytes | bytearray | memoryview) -> None:
        """Add ``data`` to what is buffered. Raises ProtocolError if the parser is broken."""
        if self._error is not None:
            raise ProtocolError(self._error)
        if self._offset and self._offset == len(self._buffer):
            self._buffer.clear()
            self._offset = 0
        self._buffer += data

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None until more bytes arrive.

        Raises ProtocolError on a header announcing a payload over 4096 bytes.
        """
        if self._error is not None:
            raise ProtocolError(self._error)
        buffer, offset = self._buffer, self._offset
        if len(buffer) - offset < HEADER.size:
            self._compact()
            return None
        op, req_id, tx_id, length = HEADER.unpack_from(buffer, offset)
        if length > PAYLOAD_MAX:
            self._error = f"payload length {length} exceeds {PAYLOAD_MAX}"
            self._buffer = bytearray()
            self._offset = 0
            raise ProtocolError(self._error)
        end = offset + HEADER.size + length
        if len(buffer) < end:
            self._compact()
            return None
        self._offset = end
        return Frame(op, req_id, tx_id, bytes(buffer[offset + HEADER.size:end]))

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add ``data``; return every frame now complete, in order.

        Raises ProtocolError on a header announcing a payload over 4096 bytes.
        """
        self.receive(data)
        frames: list[Frame] = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        return frames

    def _compact(self) -> None:
        """Drop the bytes already handed out (only while waiting: never per frame)."""
        if self._offset:
            del self._buffer[:self._offset]
            self._offset = 0
