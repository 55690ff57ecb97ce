"""The tc enforcement end to end over the simulated kernel (the same NetlinkTc and requests as on
a real one): what it creates, that it is idempotent, removed again, restored on a re-created
device, honest where the kernel lacks something, and never touches what it did not create."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenoffload.schema import Family
from xenoffload.toggles import tc_codec as tc
from xenoffload.toggles.base import DeviceGone, DeviceRef, TogglePermissionDenied
from xenoffload.toggles.nl_codec import Answer, ErrorAnswer, Request
from xenoffload.toggles.simulated import (
    NETBACK_VIF,
    NETFRONT_ETH,
    NETFRONT_ETH_NO_ACT_CSUM,
    FeatureProfile,
    SimulatedKernel,
    TcSupport,
)
from xenoffload.toggles.tc_base import CSUM_UDP, CsumRule, Hook
from xenoffload.toggles.tc_netlink import NetlinkTc
from xenoffload.toggles.tc_plan import DEFAULT_PRIORITY, Marker, TcConfig, groups, is_exact

from .simkernel import remove_device, tc_changes, tc_request, tc_state

ETH = DeviceRef("eth0", "guest")
EGRESS4 = CsumRule(Hook.EGRESS, Family.IPV4)
INGRESS4 = CsumRule(Hook.INGRESS, Family.IPV4)
INGRESS6 = CsumRule(Hook.INGRESS, Family.IPV6)
ORIGINAL_GSO = NETFRONT_ETH.tso_max_segs


def simulated(profile: FeatureProfile = NETFRONT_ETH) -> tuple[SimulatedKernel, NetlinkTc]:
    world = SimulatedKernel()
    world.add_device(ETH, profile)
    return world, NetlinkTc(transport_for=world.rtnetlink)


def ifindex(world: SimulatedKernel) -> int:
    answer = tc_request(world, ETH, tc.getlink_request(ETH.name))
    assert isinstance(answer, Answer)
    return tc.decode_link(answer.messages[0]).ifindex


def other_writer(world: SimulatedKernel, request: Request) -> None:
    assert tc_request(world, ETH, request) == Answer()


def foreign_filter(world: SimulatedKernel, hook: Hook, priority: int,
                   protocol: int = tc.ETH_P_IP, cookie: bytes | None = None) -> Request:
    return tc.new_filter_request(ifindex(world), hook.parent, priority, protocol, "u32",
                                 (tc.csum_action(CSUM_UDP, cookie),))


def test_an_egress_rule_is_a_clsact_a_marked_csum_filter_and_gso_max_segs_1() -> None:
    world, tcs = simulated()
    result = tcs.apply(ETH, [EGRESS4])
    assert result.enforced == (EGRESS4,)
    slot, gso, filters = tc_state(world, ETH)
    assert (slot, gso) == ("clsact", 1)
    assert [(entry.block, entry.priority, entry.protocol, entry.kind) for entry in filters] == [
        ("egress", DEFAULT_PRIORITY, tc.ETH_P_IP, "u32")]
    (group,) = groups(tcs.read(ETH), tcs.config).values()
    (entry,) = group.filters
    (action,) = entry.actions
    assert (action.kind, action.control, action.update_flags) == ("csum", tc.TC_ACT_UNSPEC, 24)
    assert Marker.decode(action.cookie) == Marker(clsact_created=True,
                                                  gso_max_segs_before=ORIGINAL_GSO)


def test_applying_the_same_rules_again_sends_only_reads() -> None:
    world, tcs = simulated()
    first = tcs.apply(ETH, [EGRESS4])
    changes = tc_changes(world)
    second = tcs.apply(ETH, [EGRESS4])
    assert first.changes_sent == 3  # NEWQDISC, NEWTFILTER, NEWLINK
    assert second.changes_sent == 0 and tc_changes(world) == changes
    assert second.outcomes == first.outcomes


def test_rules_no_longer_wanted_are_removed_with_everything_created_for_them() -> None:
    world, tcs = simulated()
    tcs.apply(ETH, [EGRESS4])
    result = tcs.apply(ETH, [])
    assert result.outcomes == () and result.changes_sent == 3  # DELTFILTER, NEWLINK, DELQDISC
    assert tc_state(world, ETH) == (None, ORIGINAL_GSO, ())


def test_a_restarted_agent_undoes_what_the_marker_records() -> None:
    world, tcs = simulated()
    tcs.apply(ETH, [EGRESS4])
    restarted = NetlinkTc(transport_for=world.rtnetlink)
    restarted.apply(ETH, [])
    assert tc_state(world, ETH) == (None, ORIGINAL_GSO, ())


def test_a_clsact_qdisc_that_existed_before_stays() -> None:
    world, tcs = simulated()
    other_writer(world, tc.new_clsact_request(ifindex(world)))
    tcs.apply(ETH, [EGRESS4])
    (entry,) = groups(tcs.read(ETH), tcs.config)[Hook.EGRESS, Family.IPV4].filters
    assert Marker.decode(entry.actions[0].cookie) == Marker(False, ORIGINAL_GSO)
    tcs.apply(ETH, [])
    assert tc_state(world, ETH) == ("clsact", ORIGINAL_GSO, ())


def test_a_filter_at_xenoffloads_priority_that_is_not_ours_blocks_the_rule_untouched() -> None:
    world, tcs = simulated()
    other_writer(world, tc.new_clsact_request(ifindex(world)))
    other_writer(world, foreign_filter(world, Hook.EGRESS, DEFAULT_PRIORITY))
    before = tc_state(world, ETH)
    result = tcs.apply(ETH, [EGRESS4])
    assert result.outcome(EGRESS4).refused_reason == (
        f"priority {DEFAULT_PRIORITY} on egress holds a filter xenoffload did not create")
    assert result.changes_sent == 0
    tcs.apply(ETH, [])
    assert tc_state(world, ETH) == before


def test_other_writers_filters_elsewhere_survive_our_rules_coming_and_going() -> None:
    world, tcs = simulated()
    tcs.apply(ETH, [EGRESS4])
    other_writer(world, foreign_filter(world, Hook.EGRESS, 1000))
    tcs.apply(ETH, [])
    slot, gso, filters = tc_state(world, ETH)
    # The clsact xenoffload created stays: another writer's filter is on it.
    assert slot == "clsact" and gso == ORIGINAL_GSO
    assert [(entry.priority, entry.block) for entry in filters] == [(1000, "egress")]


def test_a_stale_filter_of_ours_is_replaced() -> None:
    world, tcs = simulated()
    other_writer(world, tc.new_clsact_request(ifindex(world)))
    other_writer(world, foreign_filter(world, Hook.EGRESS, DEFAULT_PRIORITY,
                                       cookie=Marker().encode()))
    before = len(world.tc_requests)
    result = tcs.apply(ETH, [EGRESS4])
    assert result.enforced == (EGRESS4,)
    assert [label for _netns, label, _refusal in world.tc_requests[before:]
            if not label.startswith("GET")] == ["DELTFILTER", "NEWTFILTER", "NEWLINK"]
    (group,) = groups(tcs.read(ETH), tcs.config).values()
    assert is_exact(group, EGRESS4, tcs.config)


def test_a_recreated_device_gets_its_rules_again() -> None:
    world, tcs = simulated()
    tcs.apply(ETH, [EGRESS4])
    old_index = ifindex(world)
    remove_device(world, ETH)
    world.add_device(ETH, NETFRONT_ETH)
    assert ifindex(world) != old_index
    result = tcs.apply(ETH, [EGRESS4])
    assert result.enforced == (EGRESS4,) and result.changes_sent == 3
    assert tc_state(world, ETH)[:2] == ("clsact", 1)


def test_ingress_rules_sit_at_adjacent_priorities_and_leave_gso_alone() -> None:
    world, tcs = simulated(NETBACK_VIF)
    result = tcs.apply(ETH, [INGRESS4, INGRESS6])
    assert result.enforced == (INGRESS4, INGRESS6)
    _slot, gso, filters = tc_state(world, ETH)
    assert gso == NETBACK_VIF.tso_max_segs
    assert [(entry.block, entry.priority, entry.protocol) for entry in filters] == [
        ("ingress", DEFAULT_PRIORITY, tc.ETH_P_IP), ("ingress", DEFAULT_PRIORITY + 1,
                                                      tc.ETH_P_IPV6)]


def test_a_kernel_without_act_csum_leaves_the_rule_unenforced_and_no_trace() -> None:
    world, tcs = simulated(NETFRONT_ETH_NO_ACT_CSUM)
    result = tcs.apply(ETH, [EGRESS4])
    assert result.outcome(EGRESS4).refused_reason == (
        "act_csum unavailable (ENOENT: Failed to load TC action module)")
    assert tc_state(world, ETH) == (None, ORIGINAL_GSO, ())


def test_without_u32_the_filter_falls_back_to_matchall() -> None:
    world, tcs = simulated(FeatureProfile("matchall-only", NETFRONT_ETH.features,
                                          TcSupport(classifiers=frozenset({"matchall"}))))
    assert tcs.apply(ETH, [EGRESS4]).enforced == (EGRESS4,)
    assert [entry.kind for entry in tc_state(world, ETH)[2]] == ["matchall"]
    assert tcs.apply(ETH, [EGRESS4]).changes_sent == 0


@pytest.mark.parametrize(("support", "reason"), [
    (TcSupport(classifiers=frozenset()),
     "no catch-all classifier (u32, matchall): ENOENT: TC classifier not found"),
    (TcSupport(clsact=False), "clsact unavailable (ENOENT: Specified qdisc kind is unknown)"),
])
def test_a_kernel_without_classifiers_or_clsact_says_which(support: TcSupport,
                                                           reason: str) -> None:
    world, tcs = simulated(FeatureProfile("lacking", NETFRONT_ETH.features, support))
    assert tcs.apply(ETH, [EGRESS4]).outcome(EGRESS4).refused_reason == reason
    assert tc_state(world, ETH) == (None, ORIGINAL_GSO, ())


def test_an_ingress_qdisc_takes_ingress_rules_but_has_no_egress_hook() -> None:
    world, tcs = simulated()
    other_writer(world, Request(tc.RTM_NEWQDISC, tc.new_clsact_request(0).flags,
                                tc.TCMSG.pack(0, ifindex(world), tc.CLSACT_HANDLE,
                                              tc.TC_H_CLSACT, 0)
                                + tc.string(tc.TCA_KIND, "ingress")))
    result = tcs.apply(ETH, [EGRESS4, INGRESS4])
    assert result.enforced == (INGRESS4,)
    assert result.outcome(EGRESS4).refused_reason == (
        "the ingress slot holds an ingress qdisc, not clsact: no egress hook")
    assert tc_state(world, ETH)[1] == ORIGINAL_GSO
    tcs.apply(ETH, [])
    assert tc_state(world, ETH) == ("ingress", ORIGINAL_GSO, ())


def test_a_gso_change_by_someone_else_is_put_back_while_enforcing() -> None:
    world, tcs = simulated()
    tcs.apply(ETH, [EGRESS4])
    other_writer(world, tc.set_gso_max_segs_request(ifindex(world), 10))
    assert tcs.apply(ETH, [EGRESS4]).changes_sent == 1
    assert tc_state(world, ETH)[1] == 1


def test_a_gso_value_someone_set_after_the_last_apply_is_left_on_removal() -> None:
    world, tcs = simulated()
    tcs.apply(ETH, [EGRESS4])
    other_writer(world, tc.set_gso_max_segs_request(ifindex(world), 10))
    tcs.apply(ETH, [])
    assert tc_state(world, ETH) == (None, 10, ())


def test_two_filters_of_ours_where_one_is_wanted_become_one() -> None:
    # Two xenoffload processes creating at once: u32 adds a second node instead of refusing.
    world, tcs = simulated()
    tcs.apply(ETH, [EGRESS4])
    (group,) = groups(tcs.read(ETH), tcs.config).values()
    duplicate = tc.new_filter_request(ifindex(world), Hook.EGRESS.parent, DEFAULT_PRIORITY,
                                      tc.ETH_P_IP, "u32", (tc.csum_action(
                                          EGRESS4.update_flags,
                                          group.filters[0].actions[0].cookie),))
    other_writer(world, duplicate)
    assert len(tc_state(world, ETH)[2]) == 2
    assert tcs.apply(ETH, [EGRESS4]).enforced == (EGRESS4,)
    assert len(tc_state(world, ETH)[2]) == 1
    assert tcs.apply(ETH, [EGRESS4]).changes_sent == 0


def test_another_priority_can_be_configured() -> None:
    world = SimulatedKernel()
    world.add_device(ETH, NETFRONT_ETH)
    tcs = NetlinkTc(config=TcConfig(priority=7, classifiers=("matchall", "u32")),
                    transport_for=world.rtnetlink)
    tcs.apply(ETH, [EGRESS4])
    assert [(entry.priority, entry.kind) for entry in tc_state(world, ETH)[2]] == [(7, "matchall")]


def test_an_unprivileged_caller_is_refused_and_a_missing_device_is_gone() -> None:
    world = SimulatedKernel(privileged=False)
    world.add_device(ETH, NETFRONT_ETH)
    tcs = NetlinkTc(transport_for=world.rtnetlink)
    assert tcs.apply(ETH, []).changes_sent == 0  # reading needs no privilege
    with pytest.raises(TogglePermissionDenied):
        tcs.apply(ETH, [EGRESS4])
    with pytest.raises(DeviceGone):
        tcs.apply(DeviceRef("eth9", "guest"), [EGRESS4])


def test_a_device_deleted_mid_apply_is_gone() -> None:
    world, _ = simulated()

    class Vanishing:
        def __init__(self) -> None:
            self.inner = world.rtnetlink(ETH)

        def exchange(self, request: Request, label: str) -> Answer | ErrorAnswer:
            if label == "NEWTFILTER":
                remove_device(world, ETH)
            return self.inner.exchange(request, label)

        def close(self) -> None:
            pass

    with pytest.raises(DeviceGone):
        NetlinkTc(transport_for=lambda _device: Vanishing()).apply(ETH, [EGRESS4])


def test_two_rules_for_one_hook_and_family_are_refused() -> None:
    _world, tcs = simulated()
    with pytest.raises(ValueError, match="one rule per hook and family"):
        tcs.apply(ETH, [EGRESS4, CsumRule(Hook.EGRESS, Family.IPV4, CSUM_UDP)])


rule_sets = st.sets(st.sampled_from([EGRESS4, CsumRule(Hook.EGRESS, Family.IPV6), INGRESS4,
                                     INGRESS6, CsumRule(Hook.INGRESS, Family.IPV4, CSUM_UDP)]))
interference = st.sampled_from(["none", "clsact", "foreign-elsewhere", "foreign-at-ours",
                                "gso"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(rule_sets, interference), min_size=1, max_size=6))
def test_any_sequence_converges_never_touches_others_and_cleans_up(
        steps: list[tuple[set[CsumRule], str]]) -> None:
    world, tcs = simulated()
    foreign: set[tuple[str, int]] = set()
    clsact_by_other = False
    for rules, other in steps:
        rules = {rule for rule in rules
                 if not any(r.hook == rule.hook and r.family == rule.family
                            and r.update_flags < rule.update_flags for r in rules)}
        slot = tc_state(world, ETH)[0]
        if other == "clsact" and slot is None:
            other_writer(world, tc.new_clsact_request(ifindex(world)))
            clsact_by_other = True
        elif other.startswith("foreign") and slot is not None:
            priority = DEFAULT_PRIORITY + 1 if other == "foreign-at-ours" else 500
            group = [entry for entry in tc_state(world, ETH)[2]
                     if entry.block == "egress" and entry.priority == priority]
            if not group:
                other_writer(world, foreign_filter(world, Hook.EGRESS, priority,
                                                   tc.ETH_P_IPV6))
                foreign.add(("egress", priority))
        elif other == "gso":
            other_writer(world, tc.set_gso_max_segs_request(ifindex(world), 5))
        result = tcs.apply(ETH, rules)
        state = tcs.read(ETH)
        found = groups(state, tcs.config)
        for outcome in result.outcomes:
            group = found.get((outcome.rule.hook, outcome.rule.family))
            exact = group is not None and is_exact(group, outcome.rule, tcs.config)
            assert outcome.enforced == (exact and (outcome.rule.hook is Hook.INGRESS
                                                   or state.link.gso_max_segs == 1))
        blocked = ("egress", DEFAULT_PRIORITY + 1) in foreign
        assert all(outcome.enforced or (blocked and outcome.rule.hook is Hook.EGRESS
                                        and outcome.rule.family is Family.IPV6)
                   for outcome in result.outcomes)
        assert tcs.apply(ETH, rules).changes_sent == 0
        remaining = {(entry.block, entry.priority) for entry in tc_state(world, ETH)[2]}
        assert foreign <= remaining
    tcs.apply(ETH, [])
    slot, _gso, filters = tc_state(world, ETH)
    assert {(entry.block, entry.priority) for entry in filters} == foreign
    assert all(Marker.decode(action.cookie) is None for group in groups(
        tcs.read(ETH), tcs.config).values() for entry in group.filters
        for action in entry.actions)
    if not foreign and not clsact_by_other:
        assert slot is None
    if clsact_by_other:
        assert slot == "clsact"
