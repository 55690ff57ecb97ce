"""``xenoffload demo``: the whole system on one machine, from empty XenStore to applied toggles.

Starts the embedded XenStore server (dom0 socket + a guest socket for domid 1), lays out a
guest with two vifs as libxl does — eth0 on the public bridge ``xenbr0`` (checksums computed),
eth1 on the private, uplink-less ``xenpriv0`` (checksums suppressed) — runs the backend agent
over the dom0 socket and the guest agent over the guest's unprivileged socket (full mode: the
agents play the device models), applies toggles to veth stand-ins in private network
namespaces when run as root (dry run otherwise, said so), prints the ``show`` table and each
device's checksum features, and tears everything down. Exit 0 only if both vifs reach
Connected with the expected results.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from xenoffload.agents.backend import BackendAgent
from xenoffload.agents.guest import GuestAgent
from xenoffload.agents.runner import Runner
from xenoffload.devices import netback_name
from xenoffload.enforce import TogglesEnforcer
from xenoffload.machine import Mode
from xenoffload.negotiation import LinkResult
from xenoffload.netns import Namespaces, netns_available
from xenoffload.policy import builtin_policy, parse_policy
from xenoffload.schema import FamilyFlags, Role
from xenoffload.show import collect, enforced_status, list_vifs, render_table
from xenoffload.store.base import Store
from xenoffload.store.pyxs_store import connect_store
from xenoffload.toggles.base import DeviceRef, Toggles
from xenoffload.toggles.simulated import NETBACK_VIF, NETFRONT_ETH, SimulatedKernel
from xenoffload.toggles.tc_base import TcChecksum
from xenoffload.toolstack import VifSpec, create_domain, create_vif
from xenoffload.xenbus import XenbusState
from xenoffload.xenstored.harness import EmbeddedXenstored

__all__ = ["run_demo", "DEMO_BACKEND_POLICY", "DEMO_VIFS", "EXPECTED"]

GUEST = 1
#: (devid, guest interface, bridge) of the demo guest's vifs.
DEMO_VIFS = ((0, "eth0", "xenbr0"), (1, "eth1", "xenpriv0"))
#: dom0's policy: the private, entirely virtual network may skip checksums.
DEMO_BACKEND_POLICY = parse_policy({"rule": [{"name": "private NFS network",
                                              "bridge": "xenpriv0", "to-guest": True,
                                              "from-guest": True}]})
#: The guest agent's built-in policy: it defers to what its backend offers (docs/agents.md).
DEMO_GUEST_POLICY = builtin_policy(Role.FRONTEND)
EXPECTED = {0: LinkResult(),
            1: LinkResult(FamilyFlags.both(True), FamilyFlags.both(True))}
CHECKSUM_FEATURES = ("tx-checksum-ipv4", "tx-checksum-ipv6", "tx-checksum-ip-generic",
                     "rx-checksum")


@contextlib.contextmanager
def _devices(use_netns: bool) -> Iterator[tuple[Toggles, TcChecksum, dict[str, DeviceRef]]]:
    """Yield the toggles, tc and the device of each end: veth pairs in fresh namespaces (the
    kernel's tc), or simulated netback/netfront devices (their simulated tc). tc is what
    enforces what ethtool cannot (docs/toggles.md): without it the demo would claim ``ok``
    for a direction nothing enforces."""
    from xenoffload.toggles.tc_netlink import NetlinkTc

    if use_netns:
        from xenoffload.toggles.netlink import NetlinkToggles

        with Namespaces(f"xo-demo-{os.getpid()}") as spaces, \
                contextlib.closing(NetlinkTc()) as tc:
            dom0, guest = spaces.add("dom0"), spaces.add("dom1")
            devices: dict[str, DeviceRef] = {}
            for devid, ifname, _bridge in DEMO_VIFS:
                vif = netback_name(GUEST, devid)
                spaces.veth(dom0, vif, guest, ifname)
                devices[vif] = DeviceRef(vif, dom0)
                devices[ifname] = DeviceRef(ifname, guest)
            toggles = NetlinkToggles()
            try:
                yield toggles, tc, devices
            finally:
                toggles.close()
        return
    recording = SimulatedKernel()
    devices = {}
    for devid, ifname, _bridge in DEMO_VIFS:
        vif = netback_name(GUEST, devid)
        devices[vif] = DeviceRef(vif, "dom0")
        devices[ifname] = DeviceRef(ifname, f"dom{GUEST}")
        recording.add_device(devices[vif], NETBACK_VIF)
        recording.add_device(devices[ifname], NETFRONT_ETH)
    yield recording, NetlinkTc(transport_for=recording.rtnetlink), devices


def run_demo(out: TextIO = sys.stdout, dry_run: bool | None = None,
             timeout: float = 20.0) -> int:
    """Run the demo; return 0 if both vifs connected with the expected results, else 1."""
    use_netns = netns_available() if dry_run is None else not dry_run
    say = out.write
    with tempfile.TemporaryDirectory(prefix="xenoffload-demo-") as tmp, \
            EmbeddedXenstored(Path(tmp, "xenstored.sock"),
                              {GUEST: Path(tmp, "dom1.sock")}) as xenstored, \
            _devices(use_netns) as (toggles, tc, devices):
        say(f"embedded xenstored on {xenstored.socket_path} (guest socket for domid {GUEST})\n")
        say("kernel toggles: " + ("veth stand-ins in private network namespaces (netlink)\n"
                                  if use_netns else
                                  "DRY RUN (not root or no netns): simulated netback/netfront "
                                  "devices\n"))
        toolstack = connect_store(xenstored.socket_path)
        create_domain(toolstack, 0, "Domain-0")
        create_domain(toolstack, GUEST, "demo-guest")
        for devid, ifname, bridge in DEMO_VIFS:
            create_vif(toolstack, VifSpec(GUEST, devid, f"00:16:3e:5a:00:{devid:02x}", bridge))
            say(f"created vif {GUEST}/{devid}: guest {ifname} on bridge {bridge}\n")

        backend = BackendAgent(
            DEMO_BACKEND_POLICY, 0, Mode.FULL,
            lambda vif: TogglesEnforcer(toggles, devices[netback_name(vif.domid, vif.devid)], tc))
        guest = GuestAgent(
            DEMO_GUEST_POLICY, GUEST, Mode.FULL,
            lambda vif: TogglesEnforcer(toggles, devices[DEMO_VIFS[vif.devid][1]], tc))
        guest_socket = xenstored.domain_sockets[GUEST]
        runners = [Runner(lambda: connect_store(xenstored.socket_path), backend, 0.1),
                   Runner(lambda: connect_store(guest_socket), guest, 0.1)]
        threads = [threading.Thread(target=r.run, name=f"agent-{i}", daemon=True)
                   for i, r in enumerate(runners)]
        for thread in threads:
            thread.start()
        try:
            ok = _wait(toolstack, timeout)
        finally:
            for runner in runners:
                runner.stop()
            for thread in threads:
                thread.join(5)
        reports = collect(toolstack, list_vifs(toolstack, 0, GUEST))
        say("\n" + render_table(reports, full_status=True) + "\n\n")
        for devid, ifname, _bridge in DEMO_VIFS:
            for name in (netback_name(GUEST, devid), ifname):
                features = toggles.read(devices[name])
                shown = " ".join(f"{f}={'on' if features[f].active else 'off'}"
                                 f"{' [fixed]' if features[f].fixed else ''}"
                                 for f in CHECKSUM_FEATURES if f in features)
                say(f"{name:8} {shown}\n")
        toolstack.close()
    all_enforced = True
    for devid, ifname, bridge in DEMO_VIFS:
        report = next((r for r in reports if r.devid == devid), None)
        got = report.result if report else None
        connected = report is not None and report.backend_state is XenbusState.CONNECTED \
            and report.frontend_state is XenbusState.CONNECTED
        negotiated = connected and got == EXPECTED[devid]
        statuses = (report.backend_status, report.frontend_status) if report else (None, None)
        enforced = all(enforced_status(status) for status in statuses)
        verdict = ("OK" if enforced else "NOT ENFORCED") if negotiated else "UNEXPECTED"
        wanted = ("blank checksums allowed both ways" if EXPECTED[devid].to_guest.ipv4
                  else "checksums computed both ways")
        say(f"{verdict}: {ifname} on {bridge}: {wanted} expected, "
            f"got {got.describe() if got else 'nothing'}"
            + ("" if enforced or not negotiated else
               f" (backend {statuses[0] or 'no status'}; frontend {statuses[1] or 'no status'})")
            + "\n")
        ok = ok and negotiated
        all_enforced = all_enforced and enforced
    if not ok:
        return 1
    return 0 if all_enforced else 7  # 7: negotiated but not enforced (docs/cli.md)


def _wait(store: Store, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reports = collect(store, list_vifs(store, 0, GUEST))
        if len(reports) == len(DEMO_VIFS) and all(
                r.backend_state is XenbusState.CONNECTED and
                r.frontend_state is XenbusState.CONNECTED and
                r.result == EXPECTED[r.devid] and r.backend_status is not None and
                r.frontend_status is not None for r in reports):
            return True
        time.sleep(0.05)
    logging.getLogger("xenoffload.demo").error("vifs did not all connect in %.0fs", timeout)
    return False
