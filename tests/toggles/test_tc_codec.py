"""The rtnetlink tc codec without a kernel: the filter a creation request describes decodes back
to itself (the kernel dumps the same attributes), garbage raises only NetlinkDecodeError, and
the guards that keep xenoffload from ever deleting what is not its own hold."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenoffload.toggles import tc_codec as tc
from xenoffload.toggles.nl_codec import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    Message,
    NetlinkDecodeError,
    decode_messages,
    encode_attribute,
    string,
    u32,
)
from xenoffload.toggles.tc_base import CSUM_SCTP, CSUM_TCP_UDP

cookies = st.binary(min_size=1, max_size=16)
update_flags = st.sampled_from([CSUM_TCP_UDP, CSUM_TCP_UDP | CSUM_SCTP, 8, 16])


def as_message(request: tc.Request) -> Message:
    """The request as the kernel receives it (one framed message)."""
    (message,) = decode_messages(request.encode(1))
    return message


@given(st.integers(1, 2**31 - 1), st.sampled_from([0xFFFFFFF2, 0xFFFFFFF3]),
       st.integers(1, 0xFFFF), st.sampled_from([tc.ETH_P_IP, tc.ETH_P_IPV6]),
       st.sampled_from(tc.CLASSIFIERS), update_flags, cookies, st.integers(-1, 8))
def test_a_filter_request_decodes_to_what_it_asks_for(
        ifindex: int, parent: int, priority: int, protocol: int, classifier: str, flags: int,
        cookie: bytes, control: int) -> None:
    request = tc.new_filter_request(ifindex, parent, priority, protocol, classifier,
                                    (tc.csum_action(flags, cookie, control),))
    assert request.flags == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    assert tc.decode_filter(as_message(request)) == tc.FilterInfo(
        ifindex, parent, priority, protocol, classifier, 0,
        (tc.ActionInfo("csum", cookie, control, flags),), False,
        True if classifier == "u32" else None)


@given(st.integers(1, 2**31 - 1), st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                          min_size=1, max_size=15),
       st.integers(1, 0xFFFF), st.integers(1, 0xFFFF))
def test_a_link_message_round_trips(ifindex: int, name: str, gso: int, tso: int) -> None:
    payload = (tc.IFINFOMSG.pack(0, 1, ifindex, 0, 0) + string(tc.IFLA_IFNAME, name)
               + u32(tc.IFLA_GSO_MAX_SEGS, gso) + u32(tc.IFLA_TSO_MAX_SEGS, tso))
    assert tc.decode_link(Message(tc.RTM_NEWLINK, 0, 1, 0, payload)) == tc.LinkInfo(
        ifindex, name, gso, tso)


@given(st.integers(1, 2**31 - 1), st.integers(1, 0xFFFF))
def test_a_gso_request_names_the_device_by_index_and_the_value(ifindex: int, value: int) -> None:
    message = as_message(tc.set_gso_max_segs_request(ifindex, value))
    assert message.kind == tc.RTM_NEWLINK
    assert tc.IFINFOMSG.unpack_from(message.payload)[2] == ifindex
    assert struct.unpack_from("=I", message.payload, tc.IFINFOMSG.size + 4)[0] == value


def test_the_clsact_requests_never_replace_and_only_delete_a_clsact() -> None:
    create = as_message(tc.new_clsact_request(7))
    assert create.flags & NLM_F_EXCL and create.flags & NLM_F_CREATE
    assert tc.decode_qdisc(create) == tc.QdiscInfo(7, tc.CLSACT_HANDLE, tc.TC_H_CLSACT, "clsact")
    assert tc.decode_qdisc(as_message(tc.delete_clsact_request(7))).kind == "clsact"


def test_dumps_are_dump_requests_for_one_device() -> None:
    for request in (tc.qdisc_dump_request(4), tc.filter_dump_request(4, 0xFFFFFFF3)):
        assert request.flags == NLM_F_REQUEST | NLM_F_DUMP
        assert tc.decode_tc_header(as_message(request)).ifindex == 4


def test_a_filter_deletion_names_its_priority_and_protocol_and_never_priority_zero() -> None:
    header = tc.decode_tc_header(as_message(tc.delete_filter_request(4, 0xFFFFFFF2, 49,
                                                                     tc.ETH_P_IPV6)))
    assert (header.parent, header.priority, header.protocol, header.handle) == (
        0xFFFFFFF2, 49, tc.ETH_P_IPV6, 0)
    # Priority 0 would delete every filter of the chain, whoever made them.
    with pytest.raises(ValueError):
        tc.delete_filter_request(4, 0xFFFFFFF2, 0, tc.ETH_P_IP)
    with pytest.raises(ValueError):
        tc.new_filter_request(4, 0xFFFFFFF2, 0, tc.ETH_P_IP, "u32", ())
    with pytest.raises(ValueError):
        tc.new_filter_request(4, 0xFFFFFFF2, 1, tc.ETH_P_IP, "flower", ())


def test_cookies_longer_than_the_kernel_keeps_are_refused() -> None:
    with pytest.raises(ValueError):
        tc.csum_action(CSUM_TCP_UDP, b"x" * 17)


def test_bookkeeping_entries_are_not_filters() -> None:
    header = tc.FilterInfo(3, 0xFFFFFFF3, 49, tc.ETH_P_IP, "u32", 0)
    table = tc.FilterInfo(3, 0xFFFFFFF3, 49, tc.ETH_P_IP, "u32", 0x80000000, hash_table=True)
    node = tc.FilterInfo(3, 0xFFFFFFF3, 49, tc.ETH_P_IP, "u32", 0x80000800)
    assert [entry.is_filter for entry in (header, table, node)] == [False, False, True]


def test_a_u32_filter_with_a_real_key_does_not_match_all() -> None:
    selector = (struct.pack("=BBBxHHhhI", 1, 0, 1, 0, 0, 0, 0, 0)
                + struct.pack("=IIii", 0xFF, 0x06, 8, 0))
    options = encode_attribute(tc.TCA_U32_SEL, selector)
    payload = (tc.TCMSG.pack(0, 3, 0x80000800, 0xFFFFFFF3, tc.filter_info(49, tc.ETH_P_IP))
               + string(tc.TCA_KIND, "u32") + encode_attribute(tc.TCA_OPTIONS, options))
    assert tc.decode_filter(Message(tc.RTM_NEWTFILTER, 0, 1, 0, payload)).match_all is False


SAMPLES = [
    as_message(tc.new_filter_request(3, 0xFFFFFFF3, 49, tc.ETH_P_IP, "u32",
                                     (tc.csum_action(CSUM_TCP_UDP, b"xenoffload\x01"),))),
    as_message(tc.new_filter_request(3, 0xFFFFFFF2, 50, tc.ETH_P_IPV6, "matchall",
                                     (tc.csum_action(CSUM_TCP_UDP, b"c"),))),
    as_message(tc.new_clsact_request(3)),
    Message(tc.RTM_NEWLINK, 0, 1, 0, tc.IFINFOMSG.pack(0, 1, 3, 0, 0)
            + string(tc.IFLA_IFNAME, "eth0") + u32(tc.IFLA_GSO_MAX_SEGS, 1)),
]


def _decode_all(message: Message) -> None:
    for decode in (tc.decode_filter, tc.decode_qdisc, tc.decode_link, tc.decode_tc_header):
        with contextlib.suppress(NetlinkDecodeError):
            decode(message)


@settings(max_examples=600)
@given(st.sampled_from(SAMPLES), st.data(),
       st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=6))
def test_truncated_or_corrupted_answers_raise_only_the_codec_error(
        message: Message, data: st.DataObject, flips: list[tuple[int, int]]) -> None:
    payload = bytearray(message.payload[: data.draw(st.integers(0, len(message.payload)))])
    for position, value in flips:
        if payload:
            payload[position % len(payload)] = value
    _decode_all(Message(message.kind, 0, 1, 0, bytes(payload)))


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_random_payloads_raise_only_the_codec_error(payload: bytes) -> None:
    _decode_all(Message(tc.RTM_NEWTFILTER, 0, 1, 0, payload))
