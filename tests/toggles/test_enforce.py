"""TogglesEnforcer with both mechanisms over simulated devices: the status strings of
docs/toggles.md, "Status", for each driver and kernel, and what each result leaves on the device."""

from __future__ import annotations

import re
from collections.abc import Mapping

from xenoffload.enforce import TogglesEnforcer, make_enforcers
from xenoffload.negotiation import LinkResult
from xenoffload.schema import FamilyFlags, Role
from xenoffload.toggles.base import ApplyResult, DeviceRef, FeatureState
from xenoffload.toggles.simulated import (
    NETBACK_VIF,
    NETFRONT_ETH,
    NETFRONT_ETH_NO_ACT_CSUM,
    VETH,
    FeatureProfile,
    SimulatedKernel,
)
from xenoffload.toggles.tc_netlink import NetlinkTc

from .simkernel import remove_device, sets_sent, tc_changes, tc_state

ETH = DeviceRef("eth0", "guest")
VIF = DeviceRef("vif3.0")
COMPUTE = LinkResult()  # every direction, both families: checksums computed
BLANK = LinkResult(FamilyFlags.both(True), FamilyFlags.both(True))
ACT_CSUM_MISSING = "act_csum unavailable (ENOENT: Failed to load TC action module)"

#: docs/toggles.md's status grammar, as a regular expression.
STATUS = re.compile(
    r"ok( \(enforced-by-tc: (ingress|egress) ipv[46](, (ingress|egress) ipv[46])*\))?"
    r"|unenforced: .+|no-device: \S+|error: (permission denied|toggles unavailable|toggle failure)"
)


def enforcer(device: DeviceRef, profile: FeatureProfile,
             tc: bool = True) -> tuple[TogglesEnforcer, SimulatedKernel]:
    world = SimulatedKernel()
    world.add_device(device, profile)
    return TogglesEnforcer(world, device, NetlinkTc(transport_for=world.rtnetlink)
                           if tc else None), world


def test_netfront_with_act_csum_computes_what_its_fixed_ipv4_feature_leaves_blank() -> None:
    eth, world = enforcer(ETH, NETFRONT_ETH)
    enforcement = eth.enforce(Role.FRONTEND, COMPUTE)
    assert enforcement.status == "ok (enforced-by-tc: egress ipv4)"
    assert not enforcement.unsafe and not enforcement.retry
    assert world.read(ETH)["tx-checksum-ipv6"].active is False  # ethtool, as before
    assert tc_state(world, ETH)[:2] == ("clsact", 1)


def test_netfront_without_act_csum_stays_unenforced_and_says_why() -> None:
    eth, world = enforcer(ETH, NETFRONT_ETH_NO_ACT_CSUM)
    enforcement = eth.enforce(Role.FRONTEND, COMPUTE)
    assert enforcement.status == ("unenforced: tx-checksum-ipv4 stays on (fixed on by the "
                                  f"driver; tc egress ipv4: {ACT_CSUM_MISSING})")
    assert enforcement.unsafe and not enforcement.retry
    assert tc_state(world, ETH) == (None, NETFRONT_ETH.tso_max_segs, ())


def test_without_tc_the_status_is_what_it_always_was() -> None:
    eth, world = enforcer(ETH, NETFRONT_ETH, tc=False)
    enforcement = eth.enforce(Role.FRONTEND, COMPUTE)
    assert enforcement.status == "unenforced: tx-checksum-ipv4 stays on (fixed on by the driver)"
    assert world.tc_requests == []
    vif, world = enforcer(VIF, NETBACK_VIF, tc=False)
    assert vif.enforce(Role.BACKEND, COMPUTE).status == "ok"


def test_the_backend_computes_what_any_guest_sends_on_the_vifs_ingress() -> None:
    vif, world = enforcer(VIF, NETBACK_VIF)
    enforcement = vif.enforce(Role.BACKEND, COMPUTE)
    assert enforcement.status == "ok (enforced-by-tc: ingress ipv4, ingress ipv6)"
    assert world.read(VIF)["tx-checksum-ipv4"].active is False  # to-guest: ethtool
    only_v6_blank = LinkResult(FamilyFlags.both(False), FamilyFlags(False, True))
    assert vif.enforce(Role.BACKEND, only_v6_blank).status == (
        "ok (enforced-by-tc: ingress ipv4)")


def test_a_backend_on_a_kernel_without_act_csum_reports_each_family() -> None:
    vif, _world = enforcer(VIF, VETH)  # this machine's kernel: no act_csum
    assert vif.enforce(Role.BACKEND, COMPUTE).status == (
        f"unenforced: tc ingress ipv4: {ACT_CSUM_MISSING}; tc ingress ipv6: {ACT_CSUM_MISSING}")


def test_allowing_blank_checksums_removes_the_rules_and_restores_the_device() -> None:
    for device, profile, role in ((ETH, NETFRONT_ETH, Role.FRONTEND),
                                  (VIF, NETBACK_VIF, Role.BACKEND)):
        end, world = enforcer(device, profile)
        end.enforce(role, COMPUTE)
        assert end.enforce(role, BLANK).status == "ok"
        assert tc_state(world, device) == (None, profile.tso_max_segs, ())


def test_enforcing_the_same_result_twice_changes_nothing() -> None:
    eth, world = enforcer(ETH, NETFRONT_ETH)
    first = eth.enforce(Role.FRONTEND, COMPUTE)
    changes, sets = tc_changes(world), sets_sent(world)
    assert eth.enforce(Role.FRONTEND, COMPUTE) == first
    assert (tc_changes(world), sets_sent(world)) == (changes, sets)


def test_a_recreated_device_is_enforced_again_and_a_missing_one_retried() -> None:
    eth, world = enforcer(ETH, NETFRONT_ETH)
    eth.enforce(Role.FRONTEND, COMPUTE)
    remove_device(world, ETH)
    gone = eth.enforce(Role.FRONTEND, COMPUTE)
    assert gone.status == f"no-device: {ETH}" and gone.retry
    world.add_device(ETH, NETFRONT_ETH)
    assert eth.enforce(Role.FRONTEND, COMPUTE).status == "ok (enforced-by-tc: egress ipv4)"
    assert tc_state(world, ETH)[:2] == ("clsact", 1)


def test_every_status_matches_the_documented_grammar() -> None:
    for profile in (NETFRONT_ETH, NETFRONT_ETH_NO_ACT_CSUM, NETBACK_VIF, VETH):
        for role in Role:
            for result in (COMPUTE, BLANK, LinkResult(FamilyFlags(True, False),
                                                      FamilyFlags(False, True))):
                for tc in (True, False):
                    end, _world = enforcer(ETH, profile, tc)
                    assert STATUS.fullmatch(end.enforce(role, result).status)


def test_the_dry_run_mechanisms_enforce_by_tc_on_the_simulated_xen_devices() -> None:
    enforcers = make_enforcers("dry-run")
    assert enforcers.for_device(DeviceRef("eth0", "g")).enforce(Role.FRONTEND, COMPUTE).status \
        == "ok (enforced-by-tc: egress ipv4)"
    assert enforcers.for_device(DeviceRef("vif4.1")).enforce(Role.BACKEND, COMPUTE).status \
        == "ok (enforced-by-tc: ingress ipv4, ingress ipv6)"
    assert make_enforcers("dry-run", tc=False).tc is None
    netlink = make_enforcers("netlink")
    assert isinstance(netlink.tc, NetlinkTc)
    netlink.close()


class CountingToggles(SimulatedKernel):
    """Counts the reads of a device outside an apply, and the applies planned without a
    reading (each would read the device again)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.applies_reading_again = 0

    def read(self, device: DeviceRef) -> Mapping[str, FeatureState]:
        self.reads += 1
        return super().read(device)

    def apply(self, device: DeviceRef, wanted: Mapping[str, bool],
              before: Mapping[str, FeatureState] | None = None) -> ApplyResult:
        self.applies_reading_again += before is None
        return super().apply(device, wanted, before)


def test_a_backend_vif_costs_five_netlink_exchanges_unchanged_and_ten_changed() -> None:
    """docs/toggles.md, "Exchanges per vif": ethtool reads once (FEATURES_GET), then only a
    change is set and read back; tc reads the link, the ingress slot and each hook's filters,
    and after a change reads back only what the change touched."""
    world = CountingToggles()
    world.add_device(VIF, NETBACK_VIF)
    tc = NetlinkTc(transport_for=world.rtnetlink)
    vif = TogglesEnforcer(world, VIF, tc)
    expected = [
        # computed: ethtool GET, SET, GET; tc reads (3), clsact + 2 ingress filters, slot and
        # ingress filters read back
        (COMPUTE, True, {"GETLINK": 1, "GETQDISC": 2, "NEWQDISC": 1, "NEWTFILTER": 2,
                         "GETTFILTER": 1}),
        (COMPUTE, False, {"GETLINK": 1, "GETQDISC": 1, "GETTFILTER": 2}),  # ethtool GET
        (BLANK, True, {"GETLINK": 1, "GETQDISC": 2, "GETTFILTER": 3, "DELTFILTER": 2,
                       "DELQDISC": 1}),
        (BLANK, False, {"GETLINK": 1, "GETQDISC": 1}),
    ]
    for result, ethtool_set, tc_sent in expected:
        tc.sent.clear()
        reads = world.reads
        assert vif.enforce(Role.BACKEND, result).status.startswith("ok")
        assert world.reads - reads == 1
        assert world.applies[-1].result is not None
        assert world.applies[-1].result.set_issued is ethtool_set
        assert dict(tc.sent) == tc_sent
    assert world.applies_reading_again == 0
