"""The netlink codec in isolation (no sockets, no root): round trips, any chunking, and garbage or
truncated input that must raise NetlinkDecodeError and nothing else."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenoffload.toggles.nl_codec import (
    NLM_F_ACK,
    NLM_F_ACK_TLVS,
    NLM_F_CAPPED,
    NLM_F_DUMP,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGHDR,
    Answer,
    ErrorAnswer,
    Expect,
    Message,
    NetlinkDecodeError,
    ReplyCollector,
    Request,
    attribute_map,
    decode_attributes,
    decode_error,
    decode_messages,
    decode_string,
    decode_u16,
    decode_u32,
    encode_attribute,
    genl_attributes,
    genl_request,
    nested,
    string,
    u32,
)

messages = st.builds(Message, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
                     st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                     st.binary(max_size=200))
attributes = st.lists(st.tuples(st.integers(0, 0x3FFF), st.binary(max_size=64)), max_size=12)


def error_message(seq: int, code: int, request: bytes = b"", *, text: str | None = None,
                  capped: bool = True, kind: int = NLMSG_ERROR) -> Message:
    """An NLMSG_ERROR (or NLMSG_DONE) as the kernel writes it, with extack text if given."""
    flags = NLM_F_CAPPED if capped else 0
    if kind == NLMSG_DONE:
        body = struct.pack("=i", code)
        flags = NLM_F_MULTI
    else:
        echoed = request[:NLMSGHDR.size] if capped else request
        body = struct.pack("=i", code) + echoed + b"\0" * (-len(echoed) % 4)
    if text is not None:
        body += string(1, text)
        flags |= NLM_F_ACK_TLVS
    return Message(kind, flags, seq, 0, body)


@given(st.lists(messages, max_size=8))
def test_messages_round_trip(sent: list[Message]) -> None:
    assert decode_messages(b"".join(message.encode() for message in sent)) == tuple(sent)


@given(attributes)
def test_attributes_round_trip(pairs: list[tuple[int, bytes]]) -> None:
    encoded = b"".join(encode_attribute(kind, payload) for kind, payload in pairs)
    assert decode_attributes(encoded) == tuple(pairs)


@given(attributes, st.integers(1, 0x3FFF), st.booleans())
def test_nested_attributes_round_trip(pairs: list[tuple[int, bytes]], kind: int,
                                      flagged: bool) -> None:
    children = [encode_attribute(child, payload) for child, payload in pairs]
    ((decoded_kind, inner),) = decode_attributes(nested(kind, *children, flagged=flagged))
    assert decoded_kind == kind  # NLA_F_NESTED is not part of the type
    assert decode_attributes(inner) == tuple(pairs)


@given(st.integers(0, 2**32 - 1), st.text(max_size=40).filter(lambda text: "\0" not in text))
def test_scalar_attributes_round_trip(value: int, text: str) -> None:
    assert decode_u32(attribute_map(u32(7, value))[7]) == value
    assert decode_string(attribute_map(string(3, text))[3]) == text


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_garbage_datagrams_raise_only_the_codec_error(data: bytes) -> None:
    try:
        for message in decode_messages(data):
            decode_attributes(message.payload)
    except NetlinkDecodeError:
        pass


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_garbage_attribute_streams_raise_only_the_codec_error(data: bytes) -> None:
    try:
        for _kind, payload in decode_attributes(data):
            decode_u16(payload)
            decode_u32(payload)
            decode_string(payload)
    except NetlinkDecodeError:
        pass


@settings(max_examples=500)
@given(st.sampled_from([NLMSG_ERROR, NLMSG_DONE]), st.integers(0, 0xFFFF),
       st.binary(max_size=120))
def test_garbage_error_messages_raise_only_the_codec_error(kind: int, flags: int,
                                                           payload: bytes) -> None:
    try:
        outcome = decode_error(Message(kind, flags, 1, 0, payload))
    except NetlinkDecodeError:
        return
    assert outcome is None or outcome.errno > 0


@settings(max_examples=500)
@given(st.sampled_from(list(Expect)), st.lists(st.binary(max_size=120), max_size=5),
       st.integers(0, 3))
def test_any_datagrams_fed_to_a_collector_raise_only_the_codec_error(
        expect: Expect, datagrams: list[bytes], seq: int) -> None:
    collector = ReplyCollector(seq, expect)
    try:
        for datagram in datagrams:
            if collector.feed(datagram) is not None:
                break
    except NetlinkDecodeError:
        pass


@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_a_truncated_datagram_decodes_to_a_prefix_or_raises(sent: list[Message],
                                                            data: st.DataObject) -> None:
    encoded = b"".join(message.encode() for message in sent)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    try:
        decoded = decode_messages(encoded[:cut])
    except NetlinkDecodeError:
        return
    assert decoded == tuple(sent[: len(decoded)])
    assert len(decoded) < len(sent) or cut >= len(encoded) - 3


def test_a_message_announcing_more_than_the_datagram_holds_is_rejected() -> None:
    data = Message(16, 0, 1, 0, b"abcd").encode()
    with pytest.raises(NetlinkDecodeError):
        decode_messages(NLMSGHDR.pack(64, 16, 0, 1, 0) + data[16:])
    with pytest.raises(NetlinkDecodeError):
        decode_messages(data + b"\x01\x02")


def test_an_attribute_shorter_than_its_header_is_rejected() -> None:
    with pytest.raises(NetlinkDecodeError):
        decode_attributes(struct.pack("=HH", 2, 1))
    with pytest.raises(NetlinkDecodeError):
        decode_u32(b"\x01\x02")


def test_request_expectation_follows_its_flags() -> None:
    assert Request(18, NLM_F_REQUEST, b"").expect() is Expect.REPLY
    assert Request(36, NLM_F_REQUEST | NLM_F_ACK, b"").expect() is Expect.ACK
    assert Request(46, NLM_F_REQUEST | NLM_F_DUMP, b"").expect() is Expect.DUMP


def test_an_error_answer_carries_the_extack_text_whether_or_not_the_request_is_echoed() -> None:
    request = Request(44, NLM_F_REQUEST | NLM_F_ACK, b"x" * 24).encode(9)
    for capped in (True, False):
        answer = decode_error(error_message(9, -errno.ENOENT, request,
                                            text="Failed to load TC action module", capped=capped))
        assert answer == ErrorAnswer(errno.ENOENT, "Failed to load TC action module")
        assert answer.describe() == "ENOENT: Failed to load TC action module"
    assert decode_error(error_message(9, 0, request)) is None
    assert ErrorAnswer(errno.EPERM).describe() == "EPERM: Operation not permitted"


def test_a_dump_is_collected_across_datagrams_and_ends_at_done() -> None:
    collector = ReplyCollector(5, Expect.DUMP)
    parts = [Message(44, NLM_F_MULTI, 5, 0, bytes([index]) * 8) for index in range(3)]
    stale = Message(44, NLM_F_MULTI, 4, 0, b"old!")
    assert collector.feed(stale.encode() + parts[0].encode()) is None
    assert collector.feed(parts[1].encode() + parts[2].encode()) is None
    outcome = collector.feed(error_message(5, 0, kind=NLMSG_DONE).encode())
    assert outcome == Answer(tuple(parts))
    with pytest.raises(RuntimeError):
        collector.feed(b"")


def test_a_dump_that_fails_midway_is_an_error_answer() -> None:
    collector = ReplyCollector(2, Expect.DUMP)
    failed = error_message(2, -errno.EINVAL, text="bad dump", kind=NLMSG_DONE)
    assert collector.feed(failed.encode()) == ErrorAnswer(errno.EINVAL, "bad dump")


def test_an_acknowledgement_answers_an_ack_request_and_a_reply_a_get() -> None:
    request = Request(36, NLM_F_REQUEST | NLM_F_ACK, b"").encode(3)
    ack = ReplyCollector(3, Expect.ACK)
    assert ack.feed(error_message(3, 0, request).encode()) == Answer(())
    reply = Message(16, 0, 3, 0, b"link")
    get = ReplyCollector(3, Expect.REPLY)
    assert get.feed(reply.encode()) == Answer((reply,))


def test_genl_requests_carry_the_command_before_the_attributes() -> None:
    request = genl_request(0x10, 3, 1, string(2, "ethtool"))
    message = decode_messages(request.encode(1))[0]
    assert message.payload[:4] == bytes([3, 1, 0, 0])
    assert decode_string(attribute_map(genl_attributes(message))[2]) == "ethtool"
    with pytest.raises(NetlinkDecodeError):
        genl_attributes(Message(0x10, 0, 1, 0, b"\x03"))
