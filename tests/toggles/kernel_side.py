"""The kernel's side of the ethtool messages, written from the uapi headers: reply encoders and a
request decoder, so that the codec's decoders and encoders can be round-tripped in tests.

xenoffload itself never builds a reply nor decodes its own requests; these live with the tests.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from xenoffload.toggles import ethtool_codec as ec
from xenoffload.toggles.base import FeatureState
from xenoffload.toggles.nl_codec import (
    Message,
    attribute_map,
    decode_attributes,
    decode_string,
    decode_u32,
    encode_attribute,
    flag,
    genl_attributes,
    nested,
    string,
    u16,
    u32,
)

GENL_HEADER = struct.Struct("=BBH")


def genl_reply(family: int, command: int, attributes: bytes, seq: int = 1) -> Message:
    """Return a generic-netlink reply message as the kernel sends it."""
    return Message(family, 0, seq, 0, GENL_HEADER.pack(command, 1, 0) + attributes)


def family_reply(family_id: int) -> Message:
    """Return a CTRL_CMD_NEWFAMILY reply naming the ethtool family's id."""
    return genl_reply(ec.GENL_ID_CTRL, 1, string(ec.CTRL_ATTR_FAMILY_NAME, "ethtool")
                      + u16(ec.CTRL_ATTR_FAMILY_ID, family_id))


def strset_reply(family: int, names: tuple[str, ...]) -> Message:
    """Return a STRSET_GET reply holding ``names`` as string set ETH_SS_FEATURES."""
    strings = [
        nested(ec.ETHTOOL_A_STRINGS_STRING, u32(ec.ETHTOOL_A_STRING_INDEX, index),
               string(ec.ETHTOOL_A_STRING_VALUE, name))
        for index, name in enumerate(names)
    ]
    stringset = nested(ec.ETHTOOL_A_STRINGSETS_STRINGSET,
                       u32(ec.ETHTOOL_A_STRINGSET_ID, ec.ETH_SS_FEATURES),
                       u32(ec.ETHTOOL_A_STRINGSET_COUNT, len(names)),
                       nested(ec.ETHTOOL_A_STRINGSET_STRINGS, *strings))
    return genl_reply(family, ec.ETHTOOL_MSG_STRSET_GET_REPLY,
                      nested(ec.ETHTOOL_A_STRSET_HEADER)
                      + nested(ec.ETHTOOL_A_STRSET_STRINGSETS, stringset))


def _compact(bits: int, size: int) -> bytes:
    """Return a compact bitset without mask, as ethnl_put_bitset32 writes one."""
    words = (size + 31) // 32
    value = b"".join(struct.pack("=I", (bits >> (32 * index)) & 0xFFFFFFFF)
                     for index in range(words))
    return (flag(ec.ETHTOOL_A_BITSET_NOMASK) + u32(ec.ETHTOOL_A_BITSET_SIZE, size)
            + encode_attribute(ec.ETHTOOL_A_BITSET_VALUE, value))


def features_reply(family: int, ifindex: int, device_name: str, names: tuple[str, ...],
                   features: Mapping[str, FeatureState]) -> Message:
    """Return a FEATURES_GET reply (compact bitsets) describing ``features``: a fixed feature
    is absent from the hardware bitset, a changeable one's wanted bit is its requested state."""
    hw = wanted = active = 0
    for bit, name in enumerate(names):
        state = features[name]
        if not state.fixed:
            hw |= 1 << bit
            wanted |= int(state.requested) << bit
        active |= int(state.active) << bit
    header = nested(ec.ETHTOOL_A_FEATURES_HEADER, u32(ec.ETHTOOL_A_HEADER_DEV_INDEX, ifindex),
                    string(ec.ETHTOOL_A_HEADER_DEV_NAME, device_name))
    size = len(names)
    return genl_reply(family, ec.ETHTOOL_MSG_FEATURES_GET_REPLY, header + b"".join(
        nested(kind, _compact(bits, size))
        for kind, bits in ((ec.ETHTOOL_A_FEATURES_HW, hw), (ec.ETHTOOL_A_FEATURES_WANTED, wanted),
                           (ec.ETHTOOL_A_FEATURES_ACTIVE, active),
                           (ec.ETHTOOL_A_FEATURES_NOCHANGE, 0))
    ))


def decode_features_set(message: Message) -> tuple[str, int, dict[str, bool]]:
    """Return (device name, index, feature -> requested) of a FEATURES_SET request, as the
    kernel reads it."""
    attributes = attribute_map(genl_attributes(message))
    header = attribute_map(attributes[ec.ETHTOOL_A_FEATURES_HEADER])
    wanted = attribute_map(attributes[ec.ETHTOOL_A_FEATURES_WANTED])
    assert ec.ETHTOOL_A_BITSET_NOMASK not in wanted
    changes = {}
    for _, bit in decode_attributes(wanted[ec.ETHTOOL_A_BITSET_BITS]):
        fields = attribute_map(bit)
        changes[decode_string(fields[ec.ETHTOOL_A_BITSET_BIT_NAME])] = (
            ec.ETHTOOL_A_BITSET_BIT_VALUE in fields
        )
    return (decode_string(header[ec.ETHTOOL_A_HEADER_DEV_NAME]),
            decode_u32(header[ec.ETHTOOL_A_HEADER_DEV_INDEX]), changes)
