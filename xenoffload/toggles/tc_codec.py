"""The rtnetlink messages of links, the clsact qdisc and filters, as pure functions.

What ``ip link`` and ``tc qdisc``/``tc filter`` exchange with the kernel (include/uapi/linux/
rtnetlink.h, if_link.h, pkt_sched.h, pkt_cls.h, tc_act/tc_csum.h), limited to what the tc
enforcement needs: a link's index and ``gso_max_segs`` (RTM_GETLINK, RTM_NEWLINK), the qdisc in
the ingress slot (RTM_GETQDISC dump; RTM_NEWQDISC/RTM_DELQDISC of ``clsact``), the filters on a
clsact hook (RTM_GETTFILTER dump) and one filter's creation and removal (RTM_NEWTFILTER with a
``u32`` match-all or ``matchall`` classifier carrying one ``csum`` action; RTM_DELTFILTER by
priority and protocol). Requests are :class:`~xenoffload.toggles.nl_codec.Request` values,
answers are decoded into the frozen values below; malformed input raises
:class:`~xenoffload.toggles.nl_codec.NetlinkDecodeError` only (fuzzed in
tests/toggles/test_tc_codec.py). Traffic-control nests are sent without NLA_F_NESTED, as ``tc``
sends them.
"""

from __future__ import annotations

import socket
import struct

import attrs

from xenoffload.toggles.nl_codec import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    Message,
    NetlinkDecodeError,
    Request,
    attribute_map,
    decode_attributes,
    decode_string,
    decode_u32,
    encode_attribute,
    nested,
    string,
    u32,
)

__all__ = [
    "LinkInfo",
    "QdiscInfo",
    "ActionInfo",
    "FilterInfo",
    "getlink_request",
    "set_gso_max_segs_request",
    "qdisc_dump_request",
    "new_clsact_request",
    "delete_clsact_request",
    "filter_dump_request",
    "new_filter_request",
    "delete_filter_request",
    "csum_action",
    "action",
    "decode_link",
    "decode_qdisc",
    "decode_filter",
    "TcHeader",
    "decode_tc_header",
    "filter_info",
    "TCMSG",
    "IFINFOMSG",
    "CLASSIFIERS",
    "ETH_P_IP",
    "ETH_P_IPV6",
    "TC_H_CLSACT",
    "TC_ACT_UNSPEC",
]

RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWQDISC = 36
RTM_DELQDISC = 37
RTM_GETQDISC = 38
RTM_NEWTFILTER = 44
RTM_DELTFILTER = 45
RTM_GETTFILTER = 46
IFLA_IFNAME = 3
IFLA_EXT_MASK = 29
IFLA_GSO_MAX_SEGS = 40
IFLA_TSO_MAX_SEGS = 60
RTEXT_FILTER_SKIP_STATS = 1 << 3
TCA_KIND = 1
TCA_OPTIONS = 2
TCA_CHAIN = 11
TC_H_CLSACT = 0xFFFFFFF1  # == TC_H_INGRESS: the slot ingress and clsact qdiscs share
CLSACT_HANDLE = 0xFFFF0000  # TC_H_MAKE(TC_H_CLSACT, 0)
TCA_U32_DIVISOR = 4
TCA_U32_SEL = 5
TCA_U32_ACT = 7
TC_U32_TERMINAL = 1
TCA_MATCHALL_ACT = 2
TCA_ACT_KIND = 1
TCA_ACT_OPTIONS = 2
TCA_ACT_COOKIE = 6
TCA_CSUM_PARMS = 1
TCA_MIRRED_PARMS = 2
TC_ACT_UNSPEC = -1  # "continue": the next filter classifies the packet as if this one were not
TC_COOKIE_MAX_SIZE = 16
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
#: The catch-all classifiers the tc enforcement knows how to build.
CLASSIFIERS = ("u32", "matchall")

#: struct tcmsg: family, ifindex, handle, parent, info.
TCMSG = struct.Struct("=BxxxiIII")
#: struct ifinfomsg: family, type, index, flags, change.
IFINFOMSG = struct.Struct("=BxHiII")
_TC_GEN = struct.Struct("=IIiii")  # index, capab, action (control), refcnt, bindcnt
_TC_CSUM = struct.Struct("=IIiiiI")  # tc_gen, update_flags
_U32_SEL = struct.Struct("=BBBxHHhhI")  # flags, offshift, nkeys, offmask, off, offoff, hoff, hmask
_U32_KEY = struct.Struct("=IIii")  # mask, val, off, offmask


# --- values ----------------------------------------------------------------------------------


@attrs.frozen
class LinkInfo:
    """A network device as RTM_GETLINK reports it (``None``: the kernel did not say)."""

    ifindex: int
    name: str
    gso_max_segs: int | None = None
    tso_max_segs: int | None = None


@attrs.frozen
class QdiscInfo:
    """One qdisc: its device, handle, parent and kind (``clsact``, ``ingress``, ``mq``...)."""

    ifindex: int
    handle: int
    parent: int
    kind: str


@attrs.frozen
class ActionInfo:
    """One action of a filter: its kind, its cookie (the marker its creator chose, if any),
    its control verdict (``TC_ACT_UNSPEC`` = continue) and, for ``csum``, its update flags
    (None where this codec does not read them)."""

    kind: str
    cookie: bytes | None = None
    control: int | None = None
    update_flags: int | None = None


@attrs.frozen
class FilterInfo:
    """One entry of a filter dump. A classifier instance (one priority and protocol) dumps
    itself first with handle 0, a u32 one also its hash table (``hash_table``); only the
    remaining entries are filters with actions. ``match_all`` is True for a u32 filter
    whose keys all have mask 0 (None for other kinds)."""

    ifindex: int
    parent: int
    priority: int
    protocol: int
    kind: str
    handle: int
    actions: tuple[ActionInfo, ...] = ()
    hash_table: bool = False
    match_all: bool | None = None

    @property
    def is_filter(self) -> bool:
        """Return whether this entry is a filter rather than its classifier's bookkeeping."""
        return self.handle != 0 and not self.hash_table


# --- requests --------------------------------------------------------------------------------


def _tcmsg(ifindex: int, handle: int, parent: int, info: int = 0) -> bytes:
    return TCMSG.pack(socket.AF_UNSPEC, ifindex, handle, parent, info)


def filter_info(priority: int, protocol: int) -> int:
    """Return a filter's tcm_info: its priority above its protocol (ethertype, network order)."""
    return (priority << 16) | socket.htons(protocol)


def getlink_request(name: str) -> Request:
    """Return the RTM_GETLINK request for device ``name`` (without statistics)."""
    return Request(RTM_GETLINK, NLM_F_REQUEST,
                   IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + string(IFLA_IFNAME, name)
                   + u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS))


def set_gso_max_segs_request(ifindex: int, value: int) -> Request:
    """Return the RTM_NEWLINK request setting device ``ifindex``'s ``gso_max_segs``."""
    if not 1 <= value <= 0xFFFF:
        raise ValueError(f"gso_max_segs must be 1..65535, not {value}")
    return Request(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK,
                   IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0)
                   + u32(IFLA_GSO_MAX_SEGS, value))


def qdisc_dump_request(ifindex: int) -> Request:
    """Return the RTM_GETQDISC dump request for device ``ifindex``'s qdiscs (the kernel may
    answer with other devices' too: filter by :attr:`QdiscInfo.ifindex`)."""
    return Request(RTM_GETQDISC, NLM_F_REQUEST | NLM_F_DUMP, _tcmsg(ifindex, 0, 0))


def new_clsact_request(ifindex: int) -> Request:
    """Return the request creating a clsact qdisc on ``ifindex``, refused (EEXIST) if the
    ingress slot is taken, never replacing what is there."""
    return Request(RTM_NEWQDISC, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                   _tcmsg(ifindex, CLSACT_HANDLE, TC_H_CLSACT) + string(TCA_KIND, "clsact"))


def delete_clsact_request(ifindex: int) -> Request:
    """Return the request deleting the clsact qdisc of ``ifindex``; naming the kind makes the
    kernel refuse (EINVAL) if the slot holds another kind."""
    return Request(RTM_DELQDISC, NLM_F_REQUEST | NLM_F_ACK,
                   _tcmsg(ifindex, CLSACT_HANDLE, TC_H_CLSACT) + string(TCA_KIND, "clsact"))


def filter_dump_request(ifindex: int, parent: int) -> Request:
    """Return the RTM_GETTFILTER dump request for the filters under ``parent`` (a clsact
    hook) of ``ifindex``."""
    return Request(RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP, _tcmsg(ifindex, 0, parent))


def action(kind: str, options: bytes, cookie: bytes | None = None) -> bytes:
    """Return the body of one action (its kind, its ``options`` attributes, its cookie)."""
    if cookie is not None and not 0 < len(cookie) <= TC_COOKIE_MAX_SIZE:
        raise ValueError(f"an action cookie holds 1..{TC_COOKIE_MAX_SIZE} bytes")
    body = string(TCA_ACT_KIND, kind) + nested(TCA_ACT_OPTIONS, options)
    return body + (encode_attribute(TCA_ACT_COOKIE, cookie) if cookie is not None else b"")


def csum_action(update_flags: int, cookie: bytes | None = None,
                control: int = TC_ACT_UNSPEC) -> bytes:
    """Return the body of a ``csum`` action recomputing ``update_flags``' checksums, with
    ``control`` as its verdict (``continue`` by default)."""
    return action("csum", encode_attribute(
        TCA_CSUM_PARMS, _TC_CSUM.pack(0, 0, control, 0, 0, update_flags)), cookie)


def new_filter_request(ifindex: int, parent: int, priority: int, protocol: int,
                       classifier: str, actions: tuple[bytes, ...]) -> Request:
    """Return the request creating a catch-all filter of ``classifier`` (``u32`` with one
    mask-0 key, or ``matchall``) at ``priority`` for ``protocol`` (an ethertype) under
    ``parent``, carrying ``actions`` (bodies from :func:`action`) in order. Refused (EEXIST)
    rather than merged if the kernel finds the same filter there."""
    if not 0 < priority <= 0xFFFF:
        raise ValueError(f"a filter priority is 1..65535, not {priority}")
    action_list = nested(TCA_U32_ACT if classifier == "u32" else TCA_MATCHALL_ACT,
                         *(nested(order, body, flagged=False)
                           for order, body in enumerate(actions, 1)), flagged=False)
    if classifier == "u32":
        selector = _U32_SEL.pack(TC_U32_TERMINAL, 0, 1, 0, 0, 0, 0, 0) + _U32_KEY.pack(0, 0, 0, 0)
        options = encode_attribute(TCA_U32_SEL, selector) + action_list
    elif classifier == "matchall":
        options = action_list
    else:
        raise ValueError(f"no catch-all filter of kind {classifier!r}: expected {CLASSIFIERS}")
    return Request(RTM_NEWTFILTER, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                   _tcmsg(ifindex, 0, parent, filter_info(priority, protocol))
                   + string(TCA_KIND, classifier) + nested(TCA_OPTIONS, options, flagged=False))


def delete_filter_request(ifindex: int, parent: int, priority: int, protocol: int) -> Request:
    """Return the request deleting the classifier instance at ``priority``/``protocol`` under
    ``parent`` with all its filters. The priority must not be 0: the kernel reads priority 0
    as "every filter of the chain"."""
    if not 0 < priority <= 0xFFFF:
        raise ValueError(f"refusing to delete priority {priority}: it must be 1..65535")
    return Request(RTM_DELTFILTER, NLM_F_REQUEST | NLM_F_ACK,
                   _tcmsg(ifindex, 0, parent, filter_info(priority, protocol)))


# --- answers ---------------------------------------------------------------------------------


def _unpack(layout: struct.Struct, payload: bytes, what: str) -> tuple[int, ...]:
    if len(payload) < layout.size:
        raise NetlinkDecodeError(f"{what} of {len(payload)} bytes, expected {layout.size}")
    values: tuple[int, ...] = layout.unpack_from(payload)
    return values


def decode_link(message: Message) -> LinkInfo:
    """Return the device an RTM_NEWLINK message (a GETLINK reply) describes. Raises
    NetlinkDecodeError if it is short or has no name."""
    _family, _type, ifindex, _flags, _change = _unpack(IFINFOMSG, message.payload, "ifinfomsg")
    attributes = attribute_map(message.payload[IFINFOMSG.size :])
    if IFLA_IFNAME not in attributes:
        raise NetlinkDecodeError("a link message without a name")
    gso = attributes.get(IFLA_GSO_MAX_SEGS)
    tso = attributes.get(IFLA_TSO_MAX_SEGS)
    return LinkInfo(ifindex, decode_string(attributes[IFLA_IFNAME]),
                    decode_u32(gso) if gso is not None else None,
                    decode_u32(tso) if tso is not None else None)


@attrs.frozen
class TcHeader:
    """A traffic-control message's struct tcmsg, with a filter's priority and protocol."""

    ifindex: int
    handle: int
    parent: int
    priority: int
    protocol: int


def decode_tc_header(message: Message) -> TcHeader:
    """Return the tcmsg of a qdisc or filter message. Raises NetlinkDecodeError if short."""
    _family, ifindex, handle, parent, info = _unpack(TCMSG, message.payload, "tcmsg")
    return TcHeader(ifindex, handle, parent, info >> 16, socket.ntohs(info & 0xFFFF))


def _tc_header(message: Message) -> tuple[TcHeader, dict[int, bytes]]:
    return decode_tc_header(message), attribute_map(message.payload[TCMSG.size :])


def _kind(attributes: dict[int, bytes]) -> str:
    if TCA_KIND not in attributes:
        raise NetlinkDecodeError("a traffic-control message without a kind")
    return decode_string(attributes[TCA_KIND])


def decode_qdisc(message: Message) -> QdiscInfo:
    """Return the qdisc an RTM_NEWQDISC message (a dump entry) describes. Raises
    NetlinkDecodeError if it is short or has no kind."""
    header, attributes = _tc_header(message)
    return QdiscInfo(header.ifindex, header.handle, header.parent, _kind(attributes))


def _decode_action(body: bytes) -> ActionInfo:
    fields = attribute_map(body)
    if TCA_ACT_KIND not in fields:
        raise NetlinkDecodeError("an action without a kind")
    kind = decode_string(fields[TCA_ACT_KIND])
    options = attribute_map(fields.get(TCA_ACT_OPTIONS, b""))
    control = update_flags = None
    if kind == "csum" and TCA_CSUM_PARMS in options:
        *_gen, control, _refcnt, _bindcnt, update_flags = _unpack(
            _TC_CSUM, options[TCA_CSUM_PARMS], "tc_csum")
    elif kind == "mirred" and TCA_MIRRED_PARMS in options:
        _index, _capab, control, _refcnt, _bindcnt = _unpack(
            _TC_GEN, options[TCA_MIRRED_PARMS], "tc_mirred")
    return ActionInfo(kind, fields.get(TCA_ACT_COOKIE), control, update_flags)


def _decode_actions(payload: bytes) -> tuple[ActionInfo, ...]:
    return tuple(_decode_action(body) for _order, body in sorted(decode_attributes(payload)))


def _u32_matches_all(selector: bytes) -> bool:
    _flags, _shift, nkeys, *_rest = _unpack(_U32_SEL, selector, "tc_u32_sel")
    keys = selector[_U32_SEL.size :]
    if len(keys) < nkeys * _U32_KEY.size:
        raise NetlinkDecodeError(f"a u32 selector announcing {nkeys} keys holds {len(keys)} bytes")
    return all(_U32_KEY.unpack_from(keys, index * _U32_KEY.size)[0] == 0
               for index in range(nkeys))


def decode_filter(message: Message) -> FilterInfo:
    """Return the filter dump entry an RTM_NEWTFILTER message describes: for ``u32`` and
    ``matchall`` with its actions, for other kinds without. Raises NetlinkDecodeError if it
    is short, has no kind, or its options are malformed."""
    header, attributes = _tc_header(message)
    kind = _kind(attributes)
    options = attribute_map(attributes.get(TCA_OPTIONS, b""))
    actions: tuple[ActionInfo, ...] = ()
    hash_table = False
    match_all = None
    if kind == "u32":
        hash_table = TCA_U32_DIVISOR in options
        if TCA_U32_SEL in options:
            match_all = _u32_matches_all(options[TCA_U32_SEL])
        actions = _decode_actions(options.get(TCA_U32_ACT, b""))
    elif kind == "matchall":
        actions = _decode_actions(options.get(TCA_MATCHALL_ACT, b""))
    return FilterInfo(header.ifindex, header.parent, header.priority, header.protocol, kind,
                      header.handle, actions, hash_table, match_all)
