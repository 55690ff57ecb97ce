"""System tests of NetlinkTc against this machine's kernel, in throwaway namespaces (root).

This kernel has clsact and u32 but no act_csum and no matchall: what it can show is that the
filter xenoffload builds is what ``tc`` itself shows as a u32 catch-all at xenoffload's
priority, that a missing csum action is reported and leaves nothing behind, that a filter
carrying xenoffload's marker is removed with the gso_max_segs and clsact its marker records,
and that nothing another writer made is touched. Each result is checked with ``tc`` and ``ip``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator

import pytest
from conftest import require_tool

from xenoffload.schema import Family
from xenoffload.toggles import tc_codec as tc
from xenoffload.toggles.base import DeviceRef
from xenoffload.toggles.nl_codec import Answer
from xenoffload.toggles.nl_socket import NETLINK_ROUTE, open_channel
from xenoffload.toggles.simulated import ACTION_MISSING
from xenoffload.toggles.tc_base import CsumRule, Hook
from xenoffload.toggles.tc_netlink import NetlinkTc
from xenoffload.toggles.tc_plan import DEFAULT_PRIORITY, Marker

from .netns import Namespace

pytestmark = pytest.mark.system

EGRESS4 = CsumRule(Hook.EGRESS, Family.IPV4)
INGRESS4 = CsumRule(Hook.INGRESS, Family.IPV4)
ACT_CSUM_MISSING = f"act_csum unavailable (ENOENT: {ACTION_MISSING})"


@pytest.fixture
def veth(netns: Namespace) -> DeviceRef:
    require_tool("tc", "iproute2")
    netns.add_veth("xo0", "xo1")
    return DeviceRef("xo0", netns.name)


@pytest.fixture
def tcs() -> Iterator[NetlinkTc]:
    with NetlinkTc() as netlink:
        yield netlink


def qdiscs(netns: Namespace) -> list[str]:
    return [entry["kind"] for entry in json.loads(
        netns.run("tc", "-j", "qdisc", "show", "dev", "xo0").stdout)]


def filters(netns: Namespace, hook: str) -> list[dict[str, object]]:
    shown = json.loads(netns.run("tc", "-j", "filter", "show", "dev", "xo0", hook).stdout or "[]")
    return [entry for entry in shown if "options" in entry and "actions" in entry["options"]]


def gso_max_segs(netns: Namespace) -> int:
    (link,) = json.loads(netns.run("ip", "-d", "-j", "link", "show", "xo0").stdout)
    return int(link["gso_max_segs"])


def plant(netns: Namespace, cookie: bytes | None, gso: int | None = None) -> None:
    """Put a u32 catch-all at xenoffload's egress priority (mirred standing in for csum,
    which this kernel lacks) carrying ``cookie``, as a previous run would have left it."""
    channel = open_channel(NETLINK_ROUTE, f"/run/netns/{netns.name}")
    try:
        link = channel.exchange(tc.getlink_request("xo0"), "GETLINK")
        peer = channel.exchange(tc.getlink_request("xo1"), "GETLINK")
        assert isinstance(link, Answer) and isinstance(peer, Answer)
        index = tc.decode_link(link.messages[0]).ifindex
        parms = struct.pack("=IIiiiiI", 0, 0, tc.TC_ACT_UNSPEC, 0, 0, 2,
                            tc.decode_link(peer.messages[0]).ifindex)
        mirred = tc.action("mirred", tc.encode_attribute(tc.TCA_MIRRED_PARMS, parms), cookie)
        requests = [tc.new_clsact_request(index),
                    tc.new_filter_request(index, Hook.EGRESS.parent, DEFAULT_PRIORITY,
                                          tc.ETH_P_IP, "u32", (mirred,))]
        if gso is not None:
            requests.append(tc.set_gso_max_segs_request(index, gso))
        for request in requests:
            assert channel.exchange(request, "PLANT") == Answer()
    finally:
        channel.close()


def test_the_filter_built_is_the_u32_catch_all_tc_shows_at_xenoffloads_priority(
        netns: Namespace, veth: DeviceRef) -> None:
    marker = Marker(clsact_created=True, gso_max_segs_before=65535)
    plant(netns, marker.encode())
    (shown,) = filters(netns, "egress")
    assert (shown["protocol"], shown["pref"], shown["kind"]) == ("ip", DEFAULT_PRIORITY, "u32")
    options = shown["options"]
    assert isinstance(options, dict)
    assert options["match"] == {"value": "0", "mask": "0", "offmask": "", "off": 0}
    (action,) = options["actions"]
    assert (action["kind"], action["control_action"]["type"], action["cookie"]) == (
        "mirred", "continue", marker.encode().hex())


def test_without_act_csum_a_rule_is_refused_and_the_device_left_as_it_was(
        netns: Namespace, veth: DeviceRef, tcs: NetlinkTc) -> None:
    result = tcs.apply(veth, [EGRESS4, INGRESS4])
    assert {outcome.refused_reason for outcome in result.outcomes} == {ACT_CSUM_MISSING}
    assert qdiscs(netns) in ([], ["noqueue"])
    assert gso_max_segs(netns) == 65535


def test_a_clsact_someone_else_created_stays(netns: Namespace, veth: DeviceRef,
                                             tcs: NetlinkTc) -> None:
    netns.run("tc", "qdisc", "add", "dev", "xo0", "clsact")
    assert tcs.apply(veth, [INGRESS4]).outcome(INGRESS4).refused_reason == ACT_CSUM_MISSING
    assert tcs.apply(veth, []).changes_sent == 0
    assert "clsact" in qdiscs(netns)


def test_a_marked_filter_goes_with_the_gso_max_segs_and_clsact_its_marker_records(
        netns: Namespace, veth: DeviceRef, tcs: NetlinkTc) -> None:
    plant(netns, Marker(clsact_created=True, gso_max_segs_before=65535).encode(), gso=1)
    assert gso_max_segs(netns) == 1
    result = tcs.apply(veth, [])
    assert result.changes_sent == 3 and result.notes == ()
    assert filters(netns, "egress") == []
    assert "clsact" not in qdiscs(netns)
    assert gso_max_segs(netns) == 65535


def test_another_writers_filter_at_xenoffloads_priority_is_left_alone(
        netns: Namespace, veth: DeviceRef, tcs: NetlinkTc) -> None:
    netns.run("tc", "qdisc", "add", "dev", "xo0", "clsact")
    netns.run("tc", "filter", "add", "dev", "xo0", "egress", "prio", str(DEFAULT_PRIORITY),
              "protocol", "ip", "u32", "match", "u32", "0", "0", "action", "mirred", "egress",
              "mirror", "dev", "xo1")
    before = filters(netns, "egress")
    result = tcs.apply(veth, [EGRESS4])
    assert result.outcome(EGRESS4).refused_reason == (
        f"priority {DEFAULT_PRIORITY} on egress holds a filter xenoffload did not create")
    assert tcs.apply(veth, []).changes_sent == 0
    assert filters(netns, "egress") == before and gso_max_segs(netns) == 65535
