"""Capture what this machine's kernel answers to xenoffload's ethtool and tc requests.

Run as root: ``python tests/toggles/capture_replies.py`` rewrites
tests/toggles/fixtures/kernel-replies.json. Each conversation runs in a throwaway network
namespace (``xo-capture-<random>``, deleted at once) with a veth pair ``xo0``/``xo1``, and records,
per conversation, every request exactly as sent and every datagram answered, for the replay
tests (test_replay.py). What it records is what this kernel supports: ethtool features; clsact
creation and listing; a u32 catch-all filter (with ``mirred``, the one action this kernel has,
standing in for csum); removal of a filter carrying xenoffload's marker with the gso_max_segs
and clsact it records; and the kernel's real refusals for a missing action kind (act_csum), a
missing classifier (matchall) and the tc conflicts xenoffload's simulated kernel reproduces.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from xenoffload.schema import Family
from xenoffload.toggles import tc_codec as tc
from xenoffload.toggles.base import DeviceGone, DeviceRef
from xenoffload.toggles.netlink import NetlinkToggles
from xenoffload.toggles.nl_codec import Answer, ErrorAnswer, Request
from xenoffload.toggles.nl_socket import (
    NETLINK_GENERIC,
    NETLINK_ROUTE,
    NetlinkChannel,
    open_channel,
)
from xenoffload.toggles.tc_base import CsumRule, Hook
from xenoffload.toggles.tc_netlink import NetlinkTc
from xenoffload.toggles.tc_plan import DEFAULT_PRIORITY, Marker, TcConfig

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "fixtures" / "kernel-replies.json"


class TapSocket:
    """A socket that records what is sent and received through it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.exchanges: list[dict[str, Any]] = []
        self.label = ""

    def send(self, data: bytes) -> int:
        self.exchanges.append({"label": self.label, "request": data.hex(), "answers": []})
        return self.sock.send(data)

    def recv_into(self, buffer: bytearray, nbytes: int = 0, flags: int = 0) -> int:
        size = self.sock.recv_into(buffer, nbytes, flags)
        self.exchanges[-1]["answers"].append(bytes(buffer[:size]).hex())
        return size

    def close(self) -> None:
        self.sock.close()


class Recorder:
    """A transport recording its exchanges (a NetlinkChannel over a TapSocket)."""

    def __init__(self, protocol: int, netns_path: str | None) -> None:
        channel = open_channel(protocol, netns_path)
        self.tap = TapSocket(channel._sock)  # capturing needs the raw socket
        self.channel = NetlinkChannel(self.tap)  # type: ignore[arg-type]

    def exchange(self, request: Request, label: str) -> Answer | ErrorAnswer:
        self.tap.label = label
        return self.channel.exchange(request, label)

    def close(self) -> None:
        self.channel.close()


class Capture:
    """Records conversations, each in a namespace of its own, so that xo0 and xo1 always get
    the indices 2 and 3 (the peer is created first), which the simulated kernel reproduces."""

    def __init__(self) -> None:
        self.conversations: dict[str, Any] = {}

    def record(self, name: str, description: str, call: Any,
               setup: Any = lambda _index, _peer: []) -> None:
        """In a fresh namespace with a veth pair, send ``setup(index, peer)``'s requests, then
        record ``call(recorder, index, peer)`` (indices of xo0 and xo1)."""
        netns = f"xo-capture-{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        try:
            subprocess.run(["ip", "-n", netns, "link", "add", "name", "xo1", "type", "veth",
                            "peer", "name", "xo0"], check=True)
            self._record(f"/run/netns/{netns}", name, description, call, setup)
        finally:
            subprocess.run(["ip", "netns", "del", netns], check=False)

    def _record(self, path: str, name: str, description: str, call: Any, setup: Any) -> None:
        index, peer = self.ifindex(path, "xo0"), self.ifindex(path, "xo1")
        setup_recorder = Recorder(NETLINK_ROUTE, path)
        for label, request in setup(index, peer):
            answer = setup_recorder.exchange(request, label)
            assert answer == Answer(), (name, label, answer)
        setup_recorder.close()
        recorder = Recorder(NETLINK_GENERIC if name.startswith("ethtool") else NETLINK_ROUTE,
                            path)
        call(recorder, index, peer)
        recorder.close()
        self.conversations[name] = {"description": description,
                                    "setup": setup_recorder.tap.exchanges,
                                    "exchanges": recorder.tap.exchanges}
        print(f"{name}: {len(recorder.tap.exchanges)} exchanges", file=sys.stderr)

    @staticmethod
    def ifindex(path: str, name: str) -> int:
        channel = open_channel(NETLINK_ROUTE, path)
        answer = channel.exchange(tc.getlink_request(name), "GETLINK")
        channel.close()
        assert isinstance(answer, Answer)
        return tc.decode_link(answer.messages[0]).ifindex


def mirred(peer: int, cookie: bytes | None) -> bytes:
    """A mirred egress-mirror action to ``peer`` (continue): this kernel's stand-in action."""
    parms = struct.pack("=IIiiiiI", 0, 0, tc.TC_ACT_UNSPEC, 0, 0, 2, peer)
    return tc.action("mirred", tc.encode_attribute(tc.TCA_MIRRED_PARMS, parms), cookie)


def capture(session: Capture) -> None:
    xo0 = DeviceRef("xo0")
    egress4 = CsumRule(Hook.EGRESS, Family.IPV4)
    ingress = [CsumRule(Hook.INGRESS, Family.IPV4), CsumRule(Hook.INGRESS, Family.IPV6)]

    def toggles(recorder: Recorder) -> NetlinkToggles:
        return NetlinkToggles(opener=lambda _path: recorder)

    def tcs(recorder: Recorder, config: TcConfig | None = None) -> NetlinkTc:
        return NetlinkTc(config=config, transport_for=lambda _device: recorder)

    session.record("ethtool-read", "NetlinkToggles.read of a fresh veth",
                   lambda r, _i, _p: toggles(r).read(xo0))
    session.record("ethtool-apply-twice",
                   "NetlinkToggles.apply(tx-checksum-ip-generic off) twice on a fresh veth",
                   lambda r, _i, _p: _apply_twice(toggles(r), xo0))
    session.record("tc-fresh-without-act-csum",
                   "NetlinkTc.apply(egress ipv4) on a fresh veth: clsact created, the u32 filter "
                   "refused for the missing csum action, clsact deleted again",
                   lambda r, _i, _p: tcs(r).apply(xo0, [egress4]))
    session.record("tc-existing-clsact-without-act-csum",
                   "NetlinkTc.apply(ingress ipv4, ingress ipv6) with a clsact created before: "
                   "both filters refused, the clsact stays",
                   lambda r, _i, _p: tcs(r).apply(xo0, ingress),
                   lambda index, _p: [("NEWQDISC", tc.new_clsact_request(index))])
    planted = Marker(clsact_created=True, gso_max_segs_before=65535).encode()
    session.record("tc-remove-marked-filter",
                   "NetlinkTc.apply() with no rule on a device carrying a u32 filter marked as "
                   "xenoffload's (mirred standing in for csum) and gso_max_segs 1: the filter, "
                   "gso_max_segs and the clsact the marker records are undone",
                   lambda r, _i, _p: tcs(r).apply(xo0, []),
                   lambda index, peer: [
                       ("NEWQDISC", tc.new_clsact_request(index)),
                       ("NEWTFILTER", tc.new_filter_request(
                           index, Hook.EGRESS.parent, DEFAULT_PRIORITY, tc.ETH_P_IP, "u32",
                           (mirred(peer, planted),))),
                       ("NEWLINK", tc.set_gso_max_segs_request(index, 1))])
    session.record("tc-foreign-filter-at-priority",
                   "NetlinkTc.apply(egress ipv4) where another writer's u32 filter (no cookie) "
                   "sits at xenoffload's priority: refused, nothing sent",
                   lambda r, _i, _p: tcs(r).apply(xo0, [egress4]),
                   lambda index, peer: [
                       ("NEWQDISC", tc.new_clsact_request(index)),
                       ("NEWTFILTER", tc.new_filter_request(
                           index, Hook.EGRESS.parent, DEFAULT_PRIORITY, tc.ETH_P_IP, "u32",
                           (mirred(peer, None),)))])
    session.record("tc-matchall-missing",
                   "NetlinkTc(classifiers=(matchall,)).apply(egress ipv4): the kernel has no "
                   "matchall",
                   lambda r, _i, _p: tcs(r, TcConfig(classifiers=("matchall",))).apply(
                       xo0, [egress4]))
    session.record("tc-device-missing", "NetlinkTc.apply on a device that does not exist",
                   lambda r, _i, _p: _expect_gone(tcs(r), DeviceRef("xo-none")))

    def texts(recorder: Recorder, index: int, peer: int) -> None:
        egress = Hook.EGRESS.parent
        requests = [
            ("NEWTFILTER", tc.new_filter_request(index, egress, 49, tc.ETH_P_IP, "u32",
                                                 (mirred(peer, None),))),
            ("NEWQDISC", tc.new_clsact_request(index)),
            ("NEWQDISC", tc.new_clsact_request(index)),
            ("DELTFILTER", tc.delete_filter_request(index, egress, 49, tc.ETH_P_IP)),
            ("NEWTFILTER", tc.new_filter_request(index, egress, 49, tc.ETH_P_IP, "u32",
                                                 (mirred(peer, None),))),
            ("NEWTFILTER", tc.new_filter_request(index, egress, 49, tc.ETH_P_IPV6, "u32",
                                                 (mirred(peer, None),))),
            ("DELTFILTER", tc.delete_filter_request(index, egress, 50, tc.ETH_P_IP)),
            ("DELTFILTER", tc.delete_filter_request(index, egress, 49, tc.ETH_P_IP)),
            ("DELQDISC", tc.delete_clsact_request(index)),
            ("DELQDISC", tc.delete_clsact_request(index)),
        ]
        for label, request in requests:
            recorder.exchange(request, label)

    session.record("tc-kernel-texts",
                   "the kernel's answers the simulated kernel reproduces: a filter without a "
                   "qdisc, clsact twice, deleting from an empty chain, the IPv6 filter at the "
                   "IPv4 one's priority, deleting a priority that holds nothing, deleting the "
                   "clsact twice", texts)


def _apply_twice(toggles: NetlinkToggles, device: DeviceRef) -> None:
    for _ in range(2):
        toggles.apply(device, {"tx-checksum-ip-generic": False})


def _expect_gone(tcs: NetlinkTc, device: DeviceRef) -> None:
    try:
        tcs.apply(device, [])
    except DeviceGone:
        return
    raise AssertionError("expected DeviceGone")


def main() -> int:
    if os.geteuid() != 0:
        print("capture_replies: needs root (network namespaces)", file=sys.stderr)
        return 2
    session = Capture()
    capture(session)
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(json.dumps({
        "kernel": platform.release(),
        "captured_by": "tests/toggles/capture_replies.py",
        "conversations": session.conversations,
    }, indent=1) + "\n")
    print(f"wrote {OUTPUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
