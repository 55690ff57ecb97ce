"""Run-time overrides: node grammar, rule order, storage in XenStore."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenoffload.override_store import (
    clear_override,
    read_overrides,
    refresh_overrides,
    write_override,
)
from xenoffload.overrides import (
    OverrideSetting,
    format_override,
    parse_override,
    rules_from_overrides,
    vif_key,
)
from xenoffload.policy import (
    DirectionSetting,
    Policy,
    PolicyError,
    VifIdentity,
    parse_policy,
    vm_uuid,
)
from xenoffload.schema import FamilyFlags, Role
from xenoffload.store.memory import MemoryXenStore

opt = st.one_of(st.none(), st.booleans())
settings_st = st.builds(OverrideSetting, st.builds(DirectionSetting, opt, opt),
                        st.builds(DirectionSetting, opt, opt)).filter(
    lambda s: any(v is not None for v in (s.to_guest.ipv4, s.to_guest.ipv6,
                                          s.from_guest.ipv4, s.from_guest.ipv6)))


@given(settings_st)
def test_override_values_round_trip(setting: OverrideSetting) -> None:
    assert parse_override("/p", format_override(setting)) == setting


def test_a_token_without_family_sets_both() -> None:
    assert parse_override("/p", b"to-guest=on") == OverrideSetting(DirectionSetting(True, True))


@pytest.mark.parametrize("raw", [b"", b"to-guest=yes", b"tx=on", b"to-guest=on\xff",
                                 b"to-guest-ipv5=on", b"x" * 3000])
def test_malformed_override_is_refused_with_its_path(raw: bytes) -> None:
    with pytest.raises(PolicyError, match="/p"):
        parse_override("/p", raw)


def test_vif_override_wins_over_bridge_override() -> None:
    rules = rules_from_overrides({
        "vif/1/1": OverrideSetting(DirectionSetting(False, False)),
        "bridge/xenpriv0": OverrideSetting(DirectionSetting(True, True)),
    })
    policy = Policy().with_rules(rules)
    on_bridge = VifIdentity(1, 0, bridge="xenpriv0")
    overridden = VifIdentity(1, 1, bridge="xenpriv0")
    assert policy.for_vif(on_bridge).to_guest == FamilyFlags(True, True)
    assert policy.for_vif(overridden).to_guest == FamilyFlags(False, False)


def test_overrides_are_read_back_from_xenstore_and_junk_is_reported() -> None:
    store = MemoryXenStore().connect(0)
    setting = OverrideSetting(DirectionSetting(True, None))
    write_override(store, 0, Role.BACKEND, "vif/3/1", setting)
    store.write("/local/domain/0/xenoffload/policy/bridge/br0", b"nonsense")
    found, problems = read_overrides(store, 0, Role.BACKEND)
    assert found == {"vif/3/1": setting}
    assert len(problems) == 1 and "bridge/br0" in problems[0]


def test_a_guests_overrides_live_in_the_one_directory_libxl_lets_it_write() -> None:
    store = MemoryXenStore().connect(0)
    path = write_override(store, 5, Role.FRONTEND, "vif/0", OverrideSetting(
        DirectionSetting(True, True)))
    assert path == "/local/domain/5/data/xenoffload/policy/vif/0"


ON = OverrideSetting(DirectionSetting(True, True))


def test_overrides_lost_with_xenstores_tree_are_restored() -> None:
    store = MemoryXenStore().connect(0)
    known = {"vif/3/1": ON}
    assert refresh_overrides(store, 0, Role.BACKEND, known, restore=True) == known
    assert read_overrides(store, 0, Role.BACKEND)[0] == known


def test_a_cleared_override_is_never_restored() -> None:
    store = MemoryXenStore().connect(0)
    write_override(store, 0, Role.BACKEND, "vif/3/1", ON)
    clear_override(store, 0, Role.BACKEND, "vif/3/1")  # the operator's --clear, while away
    assert refresh_overrides(store, 0, Role.BACKEND, {"vif/3/1": ON}, restore=True) == {}
    assert read_overrides(store, 0, Role.BACKEND)[0] == {}


UUID = "8e0b4bd2-3c1a-4a8e-9c0d-2f6c1d1e5a77"


def test_a_vif_override_keyed_by_uuid_follows_the_vm_whatever_its_domid() -> None:
    rules = rules_from_overrides({vif_key(UUID.upper(), 3, 1): OverrideSetting(
        DirectionSetting(True, True))})
    policy = Policy().with_rules(rules)
    assert vif_key(UUID, 3, 1) == f"vif/{UUID}/1" and vif_key(None, 3, 1) == "vif/3/1"
    for domid in (3, 4):  # before and after xl restore
        assert policy.for_vif(VifIdentity(domid, 1, uuid=UUID)).to_guest == FamilyFlags(True, True)
    assert policy.for_vif(VifIdentity(3, 1)).to_guest == FamilyFlags()  # UUID unknown
    assert policy.for_vif(VifIdentity(3, 0, uuid=UUID)).to_guest == FamilyFlags()
    assert rules_from_overrides({"vif/not-a-uuid/1": OverrideSetting(
        DirectionSetting(True, True))}) == []


def test_a_policy_rule_may_match_a_uuid_and_refuses_what_is_not_one() -> None:
    policy = parse_policy({"rule": [{"uuid": UUID.upper(), "to-guest": True}]})
    assert policy.rules[0].match.uuid == UUID and policy.selectors() == {"uuid"}
    with pytest.raises(PolicyError, match=r"rule\[0\]\.uuid: not a UUID"):
        parse_policy({"rule": [{"uuid": "8e0b4bd2", "to-guest": True}]})
    assert vm_uuid(f"/vm/{UUID}".encode()) == UUID
    assert vm_uuid(b"/vm/../x") is None and vm_uuid(None) is None
