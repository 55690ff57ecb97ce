"""The ethtool generic-netlink messages xenoffload sends and reads, as pure functions.

What ``ethtool -k``/``-K`` exchange with the kernel (include/uapi/linux/ethtool_netlink.h):
the family id (CTRL_CMD_GETFAMILY), the feature names (ETHTOOL_MSG_STRSET_GET, string set
ETH_SS_FEATURES), a device's features (ETHTOOL_MSG_FEATURES_GET with compact bitsets) and a
change naming only some features (ETHTOOL_MSG_FEATURES_SET with a verbose bitset and no NOMASK
flag: the listed bits are the mask, every other bit keeps its value). Requests are
:class:`~xenoffload.toggles.nl_codec.Request` values; replies are decoded from
:class:`~xenoffload.toggles.nl_codec.Message` values. No sockets: malformed replies raise
:class:`~xenoffload.toggles.nl_codec.NetlinkDecodeError` only (fuzzed in
tests/toggles/test_ethtool_codec.py).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import attrs

from xenoffload.toggles.base import FeatureState
from xenoffload.toggles.nl_codec import (
    NLM_F_ACK,
    NLM_F_REQUEST,
    Message,
    NetlinkDecodeError,
    Request,
    attribute_map,
    decode_attributes,
    decode_string,
    decode_u16,
    decode_u32,
    flag,
    genl_attributes,
    genl_request,
    nested,
    string,
    u32,
)

__all__ = [
    "ETHTOOL_GENL_NAME",
    "FeaturesReply",
    "family_request",
    "family_id",
    "strset_request",
    "feature_names",
    "features_get_request",
    "features_reply",
    "features_set_request",
]

ETHTOOL_GENL_NAME = "ethtool"
ETHTOOL_GENL_VERSION = 1
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

ETHTOOL_MSG_STRSET_GET = 1
ETHTOOL_MSG_FEATURES_GET = 11
ETHTOOL_MSG_FEATURES_SET = 12
ETHTOOL_MSG_STRSET_GET_REPLY = 1
ETHTOOL_MSG_FEATURES_GET_REPLY = 11
ETHTOOL_A_HEADER_DEV_INDEX = 1
ETHTOOL_A_HEADER_DEV_NAME = 2
ETHTOOL_A_HEADER_FLAGS = 3
ETHTOOL_FLAG_COMPACT_BITSETS = 1 << 0
ETHTOOL_FLAG_OMIT_REPLY = 1 << 1
ETHTOOL_A_BITSET_NOMASK = 1
ETHTOOL_A_BITSET_SIZE = 2
ETHTOOL_A_BITSET_BITS = 3
ETHTOOL_A_BITSET_VALUE = 4
ETHTOOL_A_BITSET_MASK = 5
ETHTOOL_A_BITSET_BITS_BIT = 1
ETHTOOL_A_BITSET_BIT_INDEX = 1
ETHTOOL_A_BITSET_BIT_NAME = 2
ETHTOOL_A_BITSET_BIT_VALUE = 3
ETHTOOL_A_STRSET_HEADER = 1
ETHTOOL_A_STRSET_STRINGSETS = 2
ETHTOOL_A_STRINGSETS_STRINGSET = 1
ETHTOOL_A_STRINGSET_ID = 1
ETHTOOL_A_STRINGSET_COUNT = 2
ETHTOOL_A_STRINGSET_STRINGS = 3
ETHTOOL_A_STRINGS_STRING = 1
ETHTOOL_A_STRING_INDEX = 1
ETHTOOL_A_STRING_VALUE = 2
ETHTOOL_A_FEATURES_HEADER = 1
ETHTOOL_A_FEATURES_HW = 2
ETHTOOL_A_FEATURES_WANTED = 3
ETHTOOL_A_FEATURES_ACTIVE = 4
ETHTOOL_A_FEATURES_NOCHANGE = 5
ETH_SS_FEATURES = 4


@attrs.frozen
class FeaturesReply:
    """A decoded FEATURES_GET reply: the device's index and its features by kernel name."""

    ifindex: int
    features: Mapping[str, FeatureState]


def family_request() -> Request:
    """Return the request for the ethtool family's id (CTRL_CMD_GETFAMILY)."""
    return genl_request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, ETHTOOL_GENL_VERSION,
                        string(CTRL_ATTR_FAMILY_NAME, ETHTOOL_GENL_NAME))


def family_id(reply: Message) -> int:
    """Return the family id a CTRL_CMD_GETFAMILY reply names. Raises NetlinkDecodeError if it
    names none."""
    attributes = attribute_map(genl_attributes(reply))
    if CTRL_ATTR_FAMILY_ID not in attributes:
        raise NetlinkDecodeError("the family reply names no family id")
    return decode_u16(attributes[CTRL_ATTR_FAMILY_ID])


def strset_request(family: int) -> Request:
    """Return the request for the kernel's feature names (string set ETH_SS_FEATURES)."""
    # The header (no device: the table is global) must be present on recent kernels.
    attributes = nested(ETHTOOL_A_STRSET_HEADER, u32(ETHTOOL_A_HEADER_FLAGS, 0)) + nested(
        ETHTOOL_A_STRSET_STRINGSETS,
        nested(ETHTOOL_A_STRINGSETS_STRINGSET, u32(ETHTOOL_A_STRINGSET_ID, ETH_SS_FEATURES)),
    )
    return genl_request(family, ETHTOOL_MSG_STRSET_GET, ETHTOOL_GENL_VERSION, attributes)


def feature_names(reply: Message) -> tuple[str, ...]:
    """Return the feature names by bit from a STRSET_GET reply. Raises NetlinkDecodeError if
    the table is missing, has gaps, or an entry lacks its index or text."""
    names: dict[int, str] = {}
    for kind, stringsets in decode_attributes(genl_attributes(reply)):
        if kind != ETHTOOL_A_STRSET_STRINGSETS:
            continue
        for _, stringset in decode_attributes(stringsets):
            fields = attribute_map(stringset)
            if ETHTOOL_A_STRINGSET_ID not in fields or decode_u32(
                fields[ETHTOOL_A_STRINGSET_ID]
            ) != ETH_SS_FEATURES:
                continue
            for _, entry_payload in decode_attributes(fields.get(ETHTOOL_A_STRINGSET_STRINGS, b"")):
                entry = attribute_map(entry_payload)
                if ETHTOOL_A_STRING_INDEX not in entry or ETHTOOL_A_STRING_VALUE not in entry:
                    raise NetlinkDecodeError("a feature name entry lacks its index or text")
                names[decode_u32(entry[ETHTOOL_A_STRING_INDEX])] = decode_string(
                    entry[ETHTOOL_A_STRING_VALUE]
                )
    if not names or sorted(names) != list(range(len(names))):
        raise NetlinkDecodeError("the kernel's feature name table is missing or has gaps")
    return tuple(names[index] for index in range(len(names)))


def _header(device_name: str, ifindex: int | None, flags: int) -> tuple[bytes, ...]:
    # With both index and name the kernel checks they still match: a device renamed or
    # replaced since the first read is reported as gone instead of being changed.
    parts = [string(ETHTOOL_A_HEADER_DEV_NAME, device_name), u32(ETHTOOL_A_HEADER_FLAGS, flags)]
    if ifindex is not None:
        parts.insert(0, u32(ETHTOOL_A_HEADER_DEV_INDEX, ifindex))
    return tuple(parts)


def features_get_request(family: int, device_name: str, ifindex: int | None = None) -> Request:
    """Return the FEATURES_GET request (compact bitsets) for the device, by name and, when
    given, by index as well."""
    return genl_request(family, ETHTOOL_MSG_FEATURES_GET, ETHTOOL_GENL_VERSION, nested(
        ETHTOOL_A_FEATURES_HEADER,
        *_header(device_name, ifindex, ETHTOOL_FLAG_COMPACT_BITSETS),
    ))


def _bitmap(payload: bytes) -> int:
    """Return a compact bitset's VALUE (u32 words in host order, word 0 first) as an int."""
    bitset = attribute_map(payload)
    if ETHTOOL_A_BITSET_BITS in bitset:
        raise NetlinkDecodeError("a verbose bitset where a compact one was requested")
    words = bitset.get(ETHTOOL_A_BITSET_VALUE, b"")
    value = 0
    for index, (word,) in enumerate(struct.iter_unpack("=I", words[: len(words) // 4 * 4])):
        value |= word << (32 * index)
    return value


def features_reply(reply: Message, names: tuple[str, ...]) -> FeaturesReply:
    """Return the device index and features of a FEATURES_GET reply, naming bit N
    ``names[N]``. A feature is fixed when the hardware bitset lacks it or the no-change
    bitset has it; a fixed feature's requested state is reported as its active state, as
    ethtool does. Raises NetlinkDecodeError if a bitset or the device index is missing."""
    attributes = attribute_map(genl_attributes(reply))
    try:
        reply_header = attribute_map(attributes[ETHTOOL_A_FEATURES_HEADER])
        hw, wanted, active, nochange = (
            _bitmap(attributes[kind])
            for kind in (ETHTOOL_A_FEATURES_HW, ETHTOOL_A_FEATURES_WANTED,
                         ETHTOOL_A_FEATURES_ACTIVE, ETHTOOL_A_FEATURES_NOCHANGE)
        )
        ifindex = decode_u32(reply_header[ETHTOOL_A_HEADER_DEV_INDEX])
    except KeyError as error:
        raise NetlinkDecodeError(f"FEATURES_GET reply without attribute {error}") from error
    features = {}
    for bit, name in enumerate(names):
        fixed = not (hw >> bit) & 1 or bool((nochange >> bit) & 1)
        is_active = bool((active >> bit) & 1)
        requested = is_active if fixed else bool((wanted >> bit) & 1)
        features[name] = FeatureState(active=is_active, requested=requested, fixed=fixed)
    return FeaturesReply(ifindex, features)


def features_set_request(family: int, device_name: str, ifindex: int | None,
                         to_send: Mapping[str, bool]) -> Request:
    """Return the FEATURES_SET request naming only ``to_send`` (feature -> requested state),
    sorted by name, asking for an acknowledgement and no reply."""
    bits = [
        nested(
            ETHTOOL_A_BITSET_BITS_BIT,
            string(ETHTOOL_A_BITSET_BIT_NAME, name),
            *((flag(ETHTOOL_A_BITSET_BIT_VALUE),) if value else ()),
        )
        for name, value in sorted(to_send.items())
    ]
    # No NOMASK flag: the listed bits are the mask, so only they change.
    attributes = nested(
        ETHTOOL_A_FEATURES_HEADER, *_header(device_name, ifindex, ETHTOOL_FLAG_OMIT_REPLY)
    ) + nested(ETHTOOL_A_FEATURES_WANTED, nested(ETHTOOL_A_BITSET_BITS, *bits))
    return genl_request(family, ETHTOOL_MSG_FEATURES_SET, ETHTOOL_GENL_VERSION, attributes,
                        flags=NLM_F_REQUEST | NLM_F_ACK)
