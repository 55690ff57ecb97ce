"""xapi's per-VIF other-config as a policy source: its grammar and the rules it makes."""

from __future__ import annotations

import pytest

from xenoffload.policy import DirectionSetting, Match, Policy, PolicyError, Rule, VifIdentity
from xenoffload.schema import FamilyFlags
from xenoffload.xapi import XapiSetting, parse_xapi_config, rules_from_xapi

ALL, NONE = FamilyFlags.both(True), FamilyFlags()


@pytest.mark.parametrize(("raw", "value"), [(b"true", True), (b"on", True), (b"false", False),
                                            (b"off", False)])
def test_the_four_values_xapi_takes_set_a_direction(raw: bytes, value: bool) -> None:
    assert parse_xapi_config("/x", {"ethtool-tx": raw}) == XapiSetting(to_guest=value)
    assert parse_xapi_config("/x", {"ethtool-rx": raw}) == XapiSetting(from_guest=value)


@pytest.mark.parametrize("raw", [b"", b"yes", b"On", b"1", b"off ", b"\xff"])
def test_any_other_value_is_refused_naming_the_key(raw: bytes) -> None:
    with pytest.raises(PolicyError, match="/x/ethtool-rx"):
        parse_xapi_config("/x", {"ethtool-rx": raw})


def test_absent_keys_set_nothing_and_make_no_rule() -> None:
    setting = parse_xapi_config("/x", {"ethtool-tx": None, "ethtool-sg": b"off"})
    assert setting == XapiSetting()
    assert rules_from_xapi({(1, 0): setting}) == []


def test_a_rule_applies_to_its_vif_only_and_to_both_families() -> None:
    policy = Policy().with_rules(rules_from_xapi({(1, 0): XapiSetting(to_guest=True)}))
    assert policy.for_vif(VifIdentity(1, 0)).to_guest == ALL
    assert policy.for_vif(VifIdentity(1, 0)).from_guest == NONE
    assert policy.for_vif(VifIdentity(1, 1)).to_guest == NONE


def test_overrides_after_xapi_win_and_xapi_wins_over_the_file() -> None:
    file_rule = Rule(Match(bridge="xenpriv0"), DirectionSetting(True, True),
                     DirectionSetting(True, True))
    xapi = rules_from_xapi({(1, 0): XapiSetting(to_guest=False)})
    override = Rule(Match(domid=1, devid=0), from_guest=DirectionSetting(False, False))
    policy = Policy(rules=(file_rule,)).with_rules([*xapi, override])
    resolved = policy.for_vif(VifIdentity(1, 0, bridge="xenpriv0"))
    assert resolved.to_guest == NONE  # xapi over the file
    assert resolved.from_guest == NONE  # the override over the file
