"""Policy files: default computes checksums; rules select vifs and override in order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from xenoffload.negotiation import LinkPolicy
from xenoffload.policy import PolicyError, VifIdentity, load_policy, parse_policy
from xenoffload.schema import FamilyFlags

PRIVATE = """
[[rule]]
name = "private NFS network"
bridge = "xenpriv*"
to-guest = true
from-guest = true

[[rule]]
domain = "router-*"
to-guest = false
from-guest = { ipv6 = false }
"""


def test_empty_policy_computes_every_checksum() -> None:
    assert parse_policy({}).for_vif(VifIdentity(1, 0)) == LinkPolicy()


def test_the_opposite_default_is_one_table_away() -> None:
    policy = parse_policy({"default": {"to-guest": True, "from-guest": True}})
    assert policy.for_vif(VifIdentity(7, 3)) == LinkPolicy(FamilyFlags(True, True),
                                                           FamilyFlags(True, True))


def test_rules_select_by_bridge_and_later_rules_override(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(PRIVATE)
    policy = load_policy(path)
    eth1 = VifIdentity(1, 1, domain="nfs-client", bridge="xenpriv0")
    eth0 = VifIdentity(1, 0, domain="nfs-client", bridge="xenbr0")
    router = VifIdentity(2, 1, domain="router-a", bridge="xenpriv0")
    assert policy.for_vif(eth1) == LinkPolicy(FamilyFlags(True, True), FamilyFlags(True, True))
    assert policy.for_vif(eth0) == LinkPolicy()
    assert policy.for_vif(router) == LinkPolicy(FamilyFlags(False, False),
                                                FamilyFlags(True, False))


def test_match_by_domid_devid_and_mac_case_insensitively() -> None:
    policy = parse_policy({"rule": [{"domid": 3, "devid": 1, "mac": "00:16:3E:AA:BB:CC",
                                     "to-guest": {"ipv4": True}}]})
    hit = VifIdentity(3, 1, mac="00:16:3e:aa:bb:cc")
    assert policy.for_vif(hit).to_guest == FamilyFlags(True, False)
    assert policy.for_vif(VifIdentity(3, 0, mac="00:16:3e:aa:bb:cc")) == LinkPolicy()
    assert policy.for_vif(VifIdentity(3, 1)) == LinkPolicy()  # MAC unknown: no match


@pytest.mark.parametrize("document, where", [
    ({"rule": [{"bridge": "x", "to-guest": "yes"}]}, "rule[0].to-guest"),
    ({"rule": [{"bridge": 3}]}, "rule[0].bridge"),
    ({"rule": [{"colour": "red"}]}, "unknown keys"),
    ({"default": {"to-guest": {"ipv5": True}}}, "unknown family"),
    ({"rules": []}, "unknown top-level"),
    ({"rule": [{"domid": True}]}, "rule[0].domid"),
])
def test_malformed_policy_names_where(document: dict[str, object], where: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(where)):
        parse_policy(document)


def test_invalid_toml_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[[rule]\n")
    with pytest.raises(PolicyError, match=r"bad\.toml"):
        load_policy(path)


def test_a_file_default_applies_over_the_callers_builtin(tmp_path: Path) -> None:
    # The guest agent's built-in default allows both directions; a guest file that only
    # restricts to-guest leaves from-guest as built in.
    path = tmp_path / "guest.toml"
    path.write_text("[default]\nto-guest = false\n")
    allow = LinkPolicy(FamilyFlags(True, True), FamilyFlags(True, True))
    policy = load_policy(path, builtin=allow)
    assert policy.for_vif(VifIdentity(1, 0)) == LinkPolicy(FamilyFlags(False, False),
                                                           FamilyFlags(True, True))
