"""The ethtool codec without a kernel: replies written from the uapi decode to what they hold,
requests decode (as the kernel reads them) to what was asked, and garbage raises only
NetlinkDecodeError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenoffload.toggles import ethtool_codec as ec
from xenoffload.toggles.base import FeatureState
from xenoffload.toggles.nl_codec import (
    Message,
    NetlinkDecodeError,
    decode_messages,
    nested,
    string,
    u32,
)

from .kernel_side import (
    decode_features_set,
    family_reply,
    features_reply,
    genl_reply,
    strset_reply,
)

FAMILY = 23
names = st.lists(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                         max_size=24), min_size=1, max_size=70, unique=True).map(tuple)
states = st.builds(FeatureState, st.booleans(), st.booleans(), st.booleans()).map(
    # A fixed feature's requested bit means nothing; the codec reports it as active.
    lambda state: FeatureState(state.active, state.active, True) if state.fixed else state
)


@given(st.integers(1, 0xFFFF))
def test_family_id_round_trips(family: int) -> None:
    assert ec.family_id(family_reply(family)) == family


@given(names)
def test_feature_names_round_trip(table: tuple[str, ...]) -> None:
    assert ec.feature_names(strset_reply(FAMILY, table)) == table


@given(names, st.data(), st.integers(1, 2**31 - 1))
def test_features_round_trip(table: tuple[str, ...], data: st.DataObject, ifindex: int) -> None:
    features = {name: data.draw(states) for name in table}
    decoded = ec.features_reply(features_reply(FAMILY, ifindex, "dev0", table, features), table)
    assert decoded == ec.FeaturesReply(ifindex, features)


@given(st.dictionaries(st.sampled_from(["rx-checksum", "tx-checksum-ipv4", "tx-checksum-ipv6",
                                        "tx-checksum-ip-generic", "tx-checksum-sctp"]),
                       st.booleans(), min_size=1),
       st.integers(1, 2**31 - 1))
def test_features_set_names_exactly_the_features_to_change(to_send: dict[str, bool],
                                                           ifindex: int) -> None:
    request = ec.features_set_request(FAMILY, "eth0", ifindex, to_send)
    (message,) = decode_messages(request.encode(7))
    assert message.kind == FAMILY
    assert decode_features_set(message) == ("eth0", ifindex, to_send)


def test_a_verbose_bitset_where_a_compact_one_was_asked_is_rejected() -> None:
    verbose = nested(ec.ETHTOOL_A_BITSET_BITS, nested(
        ec.ETHTOOL_A_BITSET_BITS_BIT, string(ec.ETHTOOL_A_BITSET_BIT_NAME, "rx-checksum")))
    header = nested(ec.ETHTOOL_A_FEATURES_HEADER, u32(ec.ETHTOOL_A_HEADER_DEV_INDEX, 2))
    reply = genl_reply(FAMILY, ec.ETHTOOL_MSG_FEATURES_GET_REPLY, header + b"".join(
        nested(kind, verbose) for kind in (ec.ETHTOOL_A_FEATURES_HW, ec.ETHTOOL_A_FEATURES_WANTED,
                                           ec.ETHTOOL_A_FEATURES_ACTIVE,
                                           ec.ETHTOOL_A_FEATURES_NOCHANGE)))
    with pytest.raises(NetlinkDecodeError, match="verbose"):
        ec.features_reply(reply, ("rx-checksum",))


def test_a_name_table_with_gaps_or_a_reply_without_bitsets_is_rejected() -> None:
    with pytest.raises(NetlinkDecodeError):
        ec.feature_names(genl_reply(FAMILY, ec.ETHTOOL_MSG_STRSET_GET_REPLY, b""))
    with pytest.raises(NetlinkDecodeError):
        ec.features_reply(genl_reply(FAMILY, ec.ETHTOOL_MSG_FEATURES_GET_REPLY, b""), ("a",))
    with pytest.raises(NetlinkDecodeError):
        ec.family_id(genl_reply(ec.GENL_ID_CTRL, 1, b""))


def _mangled(message: Message, cut: int, flips: list[tuple[int, int]]) -> Message:
    payload = bytearray(message.payload[:cut])
    for position, value in flips:
        if payload:
            payload[position % len(payload)] = value
    return Message(message.kind, message.flags, message.seq, message.port, bytes(payload))


REPLIES = [
    family_reply(FAMILY),
    strset_reply(FAMILY, ("rx-checksum", "tx-checksum-ipv4", "tx-tcp-segmentation")),
    features_reply(FAMILY, 4, "xo0", ("rx-checksum", "tx-checksum-ipv4"),
                   {"rx-checksum": FeatureState(True, True, True),
                    "tx-checksum-ipv4": FeatureState(False, True, False)}),
]


@settings(max_examples=600)
@given(st.sampled_from(REPLIES), st.data(),
       st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6))
def test_truncated_or_corrupted_replies_raise_only_the_codec_error(
        reply: Message, data: st.DataObject, flips: list[tuple[int, int]]) -> None:
    mangled = _mangled(reply, data.draw(st.integers(0, len(reply.payload))), flips)
    with contextlib.suppress(NetlinkDecodeError):
        ec.family_id(mangled)
    try:
        table = ec.feature_names(mangled)
    except NetlinkDecodeError:
        table = ("rx-checksum", "tx-checksum-ipv4")
    with contextlib.suppress(NetlinkDecodeError):
        ec.features_reply(mangled, table)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_payloads_raise_only_the_codec_error(payload: bytes) -> None:
    message = Message(FAMILY, 0, 1, 0, payload)
    for decode in (ec.family_id, ec.feature_names,
                   lambda m: ec.features_reply(m, ("a", "b"))):
        with contextlib.suppress(NetlinkDecodeError):
            decode(message)
