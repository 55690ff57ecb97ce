"""The mapping from a negotiated result to kernel features, as a table and as properties checked
on the real-device profiles."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenoffload.schema import Family, FamilyFlags, Role
from xenoffload.toggles.base import DeviceRef, FeatureState
from xenoffload.toggles.mapping import (
    TX_CHECKSUM_FEATURES,
    blank_send_allowed,
    covered_families,
    csum_rules,
    wanted_features,
)
from xenoffload.toggles.simulated import (
    NETBACK_VIF,
    NETFRONT_ETH,
    VETH,
    FeatureProfile,
    SimulatedKernel,
)
from xenoffload.toggles.tc_base import CSUM_SCTP, CSUM_TCP_UDP, CsumRule, Hook

from .simkernel import request_as_other_writer, sets_sent

DEVICE = DeviceRef("dev0")
PROFILES = {Role.BACKEND: [NETBACK_VIF, VETH], Role.FRONTEND: [NETFRONT_ETH, VETH]}
DEPENDENT = ("tx-tcp-segmentation", "tx-tcp6-segmentation", "tx-generic-segmentation")


def device_with(profile: FeatureProfile) -> SimulatedKernel:
    toggles = SimulatedKernel()
    toggles.add_device(DEVICE, profile)
    return toggles


@pytest.mark.parametrize(
    ("profile", "v4", "v6", "expected"),
    [
        (NETBACK_VIF, True, True, {"tx-checksum-ipv4": True, "tx-checksum-ipv6": True}),
        (NETBACK_VIF, True, False, {"tx-checksum-ipv4": True, "tx-checksum-ipv6": False,
                                    "tx-checksum-ip-generic": False, "tx-checksum-sctp": False}),
        (NETBACK_VIF, False, False, {"tx-checksum-ipv4": False, "tx-checksum-ipv6": False,
                                     "tx-checksum-ip-generic": False, "tx-checksum-sctp": False}),
        (NETFRONT_ETH, True, True, {"tx-checksum-ipv4": True, "tx-checksum-ipv6": True}),
        (NETFRONT_ETH, True, False, {"tx-checksum-ipv4": True, "tx-checksum-ipv6": False,
                                     "tx-checksum-ip-generic": False, "tx-checksum-sctp": False}),
        (VETH, True, True, {"tx-checksum-ip-generic": True, "tx-checksum-sctp": True}),
        (VETH, False, True, {"tx-checksum-ipv4": False,
                             "tx-checksum-ip-generic": False, "tx-checksum-sctp": False}),
    ],
)  # fmt: skip
def test_table(profile: FeatureProfile, v4: bool, v6: bool, expected: dict[str, bool]) -> None:
    available = device_with(profile).read(DEVICE)
    assert wanted_features(v4, v6, available) == expected


def test_generic_checksum_is_on_only_when_both_families_allow_it() -> None:
    combinations = [(v4, v6) for v4 in (False, True) for v6 in (False, True)]
    allowed = [blank_send_allowed("tx-checksum-ip-generic", v4, v6) for v4, v6 in combinations]
    assert allowed == [False, False, False, True]


def flags(v4: bool, v6: bool) -> FamilyFlags:
    return FamilyFlags(v4, v6)


def test_netfront_gets_an_egress_rule_for_its_fixed_ipv4_checksum_only_when_it_must_compute(
) -> None:
    available = device_with(NETFRONT_ETH).read(DEVICE)
    assert csum_rules(Role.FRONTEND, flags(False, False), flags(False, False), available) == (
        CsumRule(Hook.EGRESS, Family.IPV4),)
    assert csum_rules(Role.FRONTEND, flags(True, False), flags(False, False), available) == ()


def test_only_the_backend_computes_what_it_receives_on_ingress() -> None:
    available = device_with(NETBACK_VIF).read(DEVICE)
    assert csum_rules(Role.BACKEND, flags(False, False), flags(False, True), available) == (
        CsumRule(Hook.INGRESS, Family.IPV4),)
    assert csum_rules(Role.BACKEND, flags(True, True), flags(False, False), available) == (
        CsumRule(Hook.INGRESS, Family.IPV4), CsumRule(Hook.INGRESS, Family.IPV6))
    assert csum_rules(Role.FRONTEND, flags(True, True), flags(False, False),
                      device_with(NETFRONT_ETH).read(DEVICE)) == ()


def test_a_fixed_generic_or_sctp_checksum_gets_rules_for_each_family_it_must_not_send_blank(
) -> None:
    fixed_on = FeatureState(True, True, fixed=True)
    generic = {"tx-checksum-ip-generic": fixed_on}
    assert csum_rules(Role.FRONTEND, flags(True, False), flags(True, True), generic) == (
        CsumRule(Hook.EGRESS, Family.IPV6),)
    sctp = {"tx-checksum-sctp": fixed_on, "tx-checksum-ipv4": fixed_on}
    assert csum_rules(Role.FRONTEND, flags(False, False), flags(True, True), sctp) == (
        CsumRule(Hook.EGRESS, Family.IPV4, CSUM_TCP_UDP | CSUM_SCTP),
        CsumRule(Hook.EGRESS, Family.IPV6, CSUM_TCP_UDP | CSUM_SCTP))


def test_a_changeable_feature_never_gets_a_tc_rule() -> None:
    for profile in (NETBACK_VIF, VETH):
        available = device_with(profile).read(DEVICE)
        assert csum_rules(Role.FRONTEND, flags(False, False), flags(True, True), available) == ()


scenario = st.fixed_dictionaries(
    {
        "role": st.sampled_from(list(Role)),
        "v4": st.booleans(),
        "v6": st.booleans(),
        "rx4": st.booleans(),
        "rx6": st.booleans(),
        "profile_index": st.integers(0, 1),
        # What other writers requested before, and driver limits (netback capped by keys).
        "prior": st.dictionaries(st.sampled_from(sorted(VETH.features)), st.booleans()),
        "limited": st.sets(st.sampled_from(TX_CHECKSUM_FEATURES)),
    }
)


def prepared(case: dict[str, object]) -> tuple[SimulatedKernel, FeatureProfile]:
    role = case["role"]
    assert isinstance(role, Role)
    index = case["profile_index"]
    assert isinstance(index, int)
    profile = PROFILES[role][index]
    toggles = device_with(profile)
    prior = case["prior"]
    assert isinstance(prior, dict)
    request_as_other_writer(toggles, DEVICE, prior)
    limited = case["limited"]
    assert isinstance(limited, set)
    for feature in limited:
        toggles.limit(DEVICE, feature, allowed=False)
    return toggles, profile


def apply_negotiated(toggles: SimulatedKernel, case: dict[str, object]) -> dict[str, bool]:
    wanted = wanted_features(bool(case["v4"]), bool(case["v6"]), toggles.read(DEVICE))
    toggles.apply(DEVICE, wanted)
    return wanted


@settings(max_examples=300, deadline=None)
@given(scenario)
def test_never_leaves_a_forbidden_blank_checksum_send_enabled_unreported(
    case: dict[str, object],
) -> None:
    toggles, _profile = prepared(case)
    apply_negotiated(toggles, case)
    result = toggles.applies[-1].result
    assert result is not None
    reported = {outcome.feature for outcome in result.unsafe}
    for feature in TX_CHECKSUM_FEATURES:
        state = toggles.read(DEVICE)[feature]
        if state.active and not blank_send_allowed(feature, bool(case["v4"]), bool(case["v6"])):
            assert feature in reported, feature
            assert state.fixed  # only a driver that does not let go may keep it on


@settings(max_examples=200, deadline=None)
@given(scenario)
def test_dom0_and_veth_can_always_enforce_computed_checksums(case: dict[str, object]) -> None:
    toggles, profile = prepared(case)
    apply_negotiated(toggles, case)
    result = toggles.applies[-1].result
    assert result is not None
    if profile is not NETFRONT_ETH:
        assert result.unsafe == ()


@settings(max_examples=200, deadline=None)
@given(scenario)
def test_only_transmit_checksum_features_are_requested(case: dict[str, object]) -> None:
    toggles, _profile = prepared(case)
    wanted = apply_negotiated(toggles, case)
    assert set(wanted) <= set(TX_CHECKSUM_FEATURES)
    assert all(not dict(recorded.sent).keys() - set(TX_CHECKSUM_FEATURES)
               for recorded in toggles.applies)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(scenario)
def test_applying_the_same_negotiation_twice_sends_nothing_the_second_time(
    case: dict[str, object],
) -> None:
    toggles, _profile = prepared(case)
    apply_negotiated(toggles, case)
    sets_before = sets_sent(toggles)
    apply_negotiated(toggles, case)
    assert sets_sent(toggles) == sets_before


@settings(max_examples=200, deadline=None)
@given(scenario)
def test_dependent_features_come_back_when_checksums_are_allowed_again(
    case: dict[str, object],
) -> None:
    toggles, _profile = prepared(case)
    before = toggles.read(DEVICE)
    apply_negotiated(toggles, case)
    for feature in TX_CHECKSUM_FEATURES:
        toggles.limit(DEVICE, feature, allowed=True)
    apply_negotiated(toggles, {**case, "v4": True, "v6": True})
    after = toggles.read(DEVICE)
    for feature in DEPENDENT:
        if feature in before:
            # Never requested off by the mapping: the other writer's wish stands.
            assert after[feature].requested == before[feature].requested
    for feature in ("tx-tcp-segmentation", "tx-tcp6-segmentation"):
        if (
            feature in after
            and after[feature].requested
            and after["tx-scatter-gather"].active
            and not after[feature].fixed
        ):
            assert after[feature].active, feature


@settings(max_examples=200, deadline=None)
@given(scenario)
def test_every_blank_send_ethtool_cannot_stop_gets_an_egress_rule_and_only_the_backend_ingress(
    case: dict[str, object],
) -> None:
    toggles, _profile = prepared(case)
    available = toggles.read(DEVICE)
    sends = FamilyFlags(bool(case["v4"]), bool(case["v6"]))
    receives = FamilyFlags(bool(case["rx4"]), bool(case["rx6"]))
    role = case["role"]
    assert isinstance(role, Role)
    rules = csum_rules(role, sends, receives, available)
    egress = {rule.family for rule in rules if rule.hook is Hook.EGRESS}
    for feature in TX_CHECKSUM_FEATURES:
        state = available.get(feature)
        if state is not None and state.fixed and state.active and not blank_send_allowed(
                feature, sends.ipv4, sends.ipv6):
            assert set(covered_families(feature, sends)) <= egress, feature
    assert egress <= {family for family in Family if not sends[family]}
    ingress = {rule.family for rule in rules if rule.hook is Hook.INGRESS}
    expected = {family for family in Family if not receives[family]}
    assert ingress == (expected if role is Role.BACKEND else set())
