"""The netlink wire format as values: messages, attributes, error answers, reply assembly.

Pure: bytes in, values out, no sockets and no namespaces, so it is property-tested and fuzzed
without root (tests/toggles/test_nl_codec.py). Every malformed input raises
:class:`NetlinkDecodeError` and nothing else. The socket side lives in
:mod:`xenoffload.toggles.nl_socket`; the families spoken over it in
:mod:`xenoffload.toggles.ethtool_codec` (generic netlink, ethtool) and
:mod:`xenoffload.toggles.tc_codec` (rtnetlink, traffic control).

A request is built as a :class:`Request` (type, flags, payload) and framed with a sequence
number by :meth:`Request.encode`; the kernel's answer is fed, datagram by datagram, into a
:class:`ReplyCollector`, which returns an :class:`Answer` (the reply, the dump, or the
acknowledgement) or an :class:`ErrorAnswer` (the kernel's errno and extended-ACK text) once
the request is answered, and ignores messages answering other requests.
"""

from __future__ import annotations

import enum
import errno as errno_module
import os
import struct
from collections.abc import Iterator
from typing import Protocol

import attrs

__all__ = [
    "NetlinkDecodeError",
    "Message",
    "Request",
    "ErrorAnswer",
    "Answer",
    "Expect",
    "ReplyCollector",
    "NetlinkTransport",
    "decode_messages",
    "encode_attribute",
    "nested",
    "u16",
    "u32",
    "string",
    "flag",
    "decode_attributes",
    "attribute_map",
    "decode_u16",
    "decode_u32",
    "decode_string",
    "decode_error",
    "genl_request",
    "genl_attributes",
    "NLMSG_NOOP",
    "NLMSG_ERROR",
    "NLMSG_DONE",
    "NLMSG_OVERRUN",
    "NLM_F_REQUEST",
    "NLM_F_MULTI",
    "NLM_F_ACK",
    "NLM_F_DUMP",
    "NLM_F_REPLACE",
    "NLM_F_EXCL",
    "NLM_F_CREATE",
    "NLA_F_NESTED",
    "NLMSGHDR",
    "NLATTR",
]

# netlink(7) and include/uapi/linux/netlink.h.
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # on NLMSG_ERROR: the original request is not echoed, only its header
NLM_F_ACK_TLVS = 0x200  # on NLMSG_ERROR/NLMSG_DONE: extended-ACK attributes follow
NLMSGERR_ATTR_MSG = 1
NLMSGERR_ATTR_MISS_TYPE = 5
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
NLATTR = struct.Struct("=HH")  # length, type
_GENLMSGHDR = struct.Struct("=BBH")  # command, version, reserved
_S32 = struct.Struct("=i")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")


class NetlinkDecodeError(ValueError):
    """Bytes that are not a well-formed netlink message, attribute stream or attribute value."""


def _align(length: int) -> int:
    return (length + 3) & ~3


# --- messages --------------------------------------------------------------------------------


@attrs.frozen
class Message:
    """One netlink message: ``kind`` (nlmsg_type), ``flags``, ``seq``, ``port`` (the sender's
    port id, 0 for the kernel) and ``payload`` (everything after the 16-byte header)."""

    kind: int
    flags: int
    seq: int
    port: int
    payload: bytes

    def encode(self) -> bytes:
        """Return the message as bytes, padded to a multiple of 4."""
        length = NLMSGHDR.size + len(self.payload)
        header = NLMSGHDR.pack(length, self.kind, self.flags, self.seq, self.port)
        return header + self.payload + b"\0" * (-length % 4)


@attrs.frozen
class Request:
    """A request before it has a sequence number: ``kind``, ``flags``, ``payload``."""

    kind: int
    flags: int
    payload: bytes

    def encode(self, seq: int, port: int = 0) -> bytes:
        """Return the request framed as one netlink message with sequence number ``seq``."""
        return Message(self.kind, self.flags, seq, port, self.payload).encode()

    def expect(self) -> Expect:
        """Return what answers this request: a dump, an acknowledgement, or one reply."""
        if self.flags & NLM_F_DUMP == NLM_F_DUMP:
            return Expect.DUMP
        if self.flags & NLM_F_ACK:
            return Expect.ACK
        return Expect.REPLY


def decode_messages(data: bytes) -> tuple[Message, ...]:
    """Return the messages of one datagram. Raises NetlinkDecodeError if a header is cut short
    or announces a length outside the datagram."""
    messages = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < NLMSGHDR.size:
            raise NetlinkDecodeError(f"{len(data) - offset} stray bytes after the last message")
        length, kind, flags, seq, port = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            raise NetlinkDecodeError(
                f"message at {offset} announces {length} bytes, {len(data) - offset} remain"
            )
        payload = data[offset + NLMSGHDR.size : offset + length]
        messages.append(Message(kind, flags, seq, port, payload))
        offset += _align(length)
    return tuple(messages)


# --- attributes ------------------------------------------------------------------------------


def encode_attribute(kind: int, payload: bytes) -> bytes:
    """Return one attribute (type ``kind``) holding ``payload``, padded to a multiple of 4.
    Raises ValueError if it would not fit a 16-bit length."""
    length = NLATTR.size + len(payload)
    if length > 0xFFFF or not 0 <= kind <= 0xFFFF:
        raise ValueError(f"attribute {kind} with {len(payload)} bytes does not fit netlink")
    return NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def nested(kind: int, *children: bytes, flagged: bool = True) -> bytes:
    """Return a nested attribute holding ``children`` (already encoded attributes); with
    ``flagged`` its type carries NLA_F_NESTED (rtnetlink's traffic-control attributes go
    without, as ``tc`` sends them)."""
    return encode_attribute(kind | (NLA_F_NESTED if flagged else 0), b"".join(children))


def u16(kind: int, value: int) -> bytes:
    """Return a u16 attribute (host order)."""
    return encode_attribute(kind, _U16.pack(value))


def u32(kind: int, value: int) -> bytes:
    """Return a u32 attribute (host order)."""
    return encode_attribute(kind, _U32.pack(value))


def string(kind: int, value: str) -> bytes:
    """Return a NUL-terminated string attribute."""
    return encode_attribute(kind, value.encode() + b"\0")


def flag(kind: int) -> bytes:
    """Return a flag attribute (present = true, no payload)."""
    return encode_attribute(kind, b"")


def _iter_attributes(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset < len(data):
        if len(data) - offset < NLATTR.size:
            # Trailing bytes shorter than a header are padding only if they are zero.
            if any(data[offset:]):
                raise NetlinkDecodeError(f"{len(data) - offset} stray bytes after attributes")
            return
        length, kind = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size or offset + length > len(data):
            raise NetlinkDecodeError(
                f"attribute at {offset} announces {length} bytes, {len(data) - offset} remain"
            )
        yield kind & NLA_TYPE_MASK, data[offset + NLATTR.size : offset + length]
        offset += _align(length)


def decode_attributes(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """Return (type without flag bits, payload) of each attribute in ``data``, in order.
    Raises NetlinkDecodeError for a truncated or overlong attribute."""
    return tuple(_iter_attributes(data))


def attribute_map(data: bytes) -> dict[int, bytes]:
    """Return the attributes of ``data`` by type (the last one wins for a repeated type).
    Raises NetlinkDecodeError as :func:`decode_attributes`."""
    return dict(_iter_attributes(data))


def _fixed(payload: bytes, layout: struct.Struct, what: str) -> int:
    if len(payload) < layout.size:
        raise NetlinkDecodeError(f"{what} attribute of {len(payload)} bytes")
    value: int = layout.unpack_from(payload)[0]
    return value


def decode_u16(payload: bytes) -> int:
    """Return a u16 attribute's value. Raises NetlinkDecodeError if it is too short."""
    return _fixed(payload, _U16, "u16")


def decode_u32(payload: bytes) -> int:
    """Return a u32 attribute's value. Raises NetlinkDecodeError if it is too short."""
    return _fixed(payload, _U32, "u32")


def decode_string(payload: bytes) -> str:
    """Return a string attribute's text (up to the first NUL; undecodable bytes replaced)."""
    return payload.split(b"\0", 1)[0].decode(errors="replace")


# --- error answers ---------------------------------------------------------------------------


@attrs.frozen
class ErrorAnswer:
    """The kernel refused a request: ``errno`` (positive), the extended-ACK ``text`` if it
    gave one, and the type of the attribute it missed, if it named one."""

    errno: int
    text: str | None = None
    missing_attribute: int | None = None

    def describe(self) -> str:
        """Return e.g. ``ENOENT: Failed to load TC action module``."""
        name = errno_module.errorcode.get(self.errno, str(self.errno))
        if self.text:
            return f"{name}: {self.text}"
        if self.missing_attribute is not None:
            return f"{name}: missing attribute type {self.missing_attribute}"
        return f"{name}: {os.strerror(self.errno)}"


def _extack(tlvs: bytes) -> tuple[str | None, int | None]:
    attributes = attribute_map(tlvs)
    text = decode_string(attributes[NLMSGERR_ATTR_MSG]) if NLMSGERR_ATTR_MSG in attributes else None
    missing = (
        decode_u32(attributes[NLMSGERR_ATTR_MISS_TYPE])
        if NLMSGERR_ATTR_MISS_TYPE in attributes
        else None
    )
    return text, missing


def decode_error(message: Message) -> ErrorAnswer | None:
    """Return the refusal an NLMSG_ERROR or NLMSG_DONE message carries, or None for an
    acknowledgement (error code 0). Raises NetlinkDecodeError for a malformed one."""
    if len(message.payload) < _S32.size:
        raise NetlinkDecodeError(f"error message of {len(message.payload)} bytes")
    (code,) = _S32.unpack_from(message.payload)
    if code > 0:
        raise NetlinkDecodeError(f"positive error code {code}")
    if code == 0 and message.kind == NLMSG_ERROR:
        return None
    text = missing = None
    if message.flags & NLM_F_ACK_TLVS:
        if message.kind == NLMSG_DONE:
            tlv_offset = _S32.size
        else:
            # The original request's header follows the code; its body only when not capped.
            if len(message.payload) < _S32.size + NLMSGHDR.size:
                raise NetlinkDecodeError("error message cut inside the echoed request header")
            echoed_length = NLMSGHDR.unpack_from(message.payload, _S32.size)[0]
            echoed = NLMSGHDR.size if message.flags & NLM_F_CAPPED else echoed_length
            if echoed < NLMSGHDR.size:
                raise NetlinkDecodeError(f"echoed request of {echoed} bytes")
            tlv_offset = _align(_S32.size + echoed)
        if tlv_offset > len(message.payload):
            raise NetlinkDecodeError("extended-ACK attributes start past the message's end")
        text, missing = _extack(message.payload[tlv_offset:])
    if code == 0:
        return None  # a dump that ended normally (NLMSG_DONE with 0), extack or not
    return ErrorAnswer(-code, text, missing)


# --- reply assembly --------------------------------------------------------------------------


class Expect(enum.Enum):
    """How a request is answered: one reply message, an acknowledgement (NLM_F_ACK), or a
    multi-part dump ending with NLMSG_DONE."""

    REPLY = "reply"
    ACK = "ack"
    DUMP = "dump"


@attrs.frozen
class Answer:
    """A request answered successfully: the reply (one message), the dump (every part), or,
    for an acknowledgement, any messages that came before it (none unless echo was asked)."""

    messages: tuple[Message, ...] = ()


class ReplyCollector:
    """Assembles the answer to one request (sequence number ``seq``) from received datagrams.

    :meth:`feed` returns None while the answer is incomplete, then the :class:`Answer` or the
    :class:`ErrorAnswer`. Messages with another sequence number (answers to an earlier request
    that timed out) are skipped. Raises NetlinkDecodeError for malformed bytes, and
    :class:`RuntimeError` if fed after it completed.
    """

    def __init__(self, seq: int, expect: Expect) -> None:
        self.seq = seq
        self.expect = expect
        self._parts: list[Message] = []
        self._done = False

    @property
    def done(self) -> bool:
        """Return whether the answer is complete."""
        return self._done

    def feed(self, datagram: bytes) -> Answer | ErrorAnswer | None:
        """Take one received datagram; return the outcome once the request is answered."""
        if self._done:
            raise RuntimeError("the request is already answered")
        for message in decode_messages(datagram):
            if message.seq != self.seq or message.kind == NLMSG_NOOP:
                continue
            if message.kind == NLMSG_OVERRUN:
                raise NetlinkDecodeError("the kernel reports a lost message (NLMSG_OVERRUN)")
            if message.kind in (NLMSG_ERROR, NLMSG_DONE):
                if message.kind == NLMSG_DONE and self.expect is not Expect.DUMP:
                    continue  # not an answer to a request that is not a dump
                refusal = decode_error(message)
                self._done = True
                return refusal if refusal is not None else Answer(tuple(self._parts))
            self._parts.append(message)
            if self.expect is Expect.REPLY:
                self._done = True
                return Answer(tuple(self._parts))
        return None


class NetlinkTransport(Protocol):
    """Carries one request to a kernel and returns its answer: a socket
    (:class:`~xenoffload.toggles.nl_socket.NetlinkChannel`), a simulated kernel
    (:mod:`xenoffload.toggles.simulated`) or a replay of recorded answers (the tests)."""

    def exchange(self, request: Request, label: str) -> Answer | ErrorAnswer:
        """Return the kernel's answer to ``request`` (``label`` names it in counts and
        errors). Raises ToggleError when the kernel does not answer or answers garbage."""
        ...

    def close(self) -> None:
        """Release what the transport holds."""
        ...


# --- generic netlink -------------------------------------------------------------------------


def genl_request(family: int, command: int, version: int, attributes: bytes,
                 flags: int = NLM_F_REQUEST) -> Request:
    """Return a generic-netlink request: the family's id as message type, the genl header
    (command, version), then ``attributes``."""
    return Request(family, flags, _GENLMSGHDR.pack(command, version, 0) + attributes)


def genl_attributes(message: Message) -> bytes:
    """Return the attributes of a generic-netlink message (after its 4-byte genl header).
    Raises NetlinkDecodeError if the message is shorter than that header."""
    if len(message.payload) < _GENLMSGHDR.size:
        raise NetlinkDecodeError(f"generic netlink message of {len(message.payload)} bytes")
    return message.payload[_GENLMSGHDR.size :]
