"""Every face opens a vif the same way (xenoffload.vifends): the backend agent, the hotplug
hook and ``show`` name it alike and resolve the same policy for it, from the policy file,
xapi's other-config and the run-time overrides."""

from __future__ import annotations

from xenoffload.hotplug import resolve_vif
from xenoffload.negotiation import LinkPolicy, LinkResult
from xenoffload.override_store import vif_override_key, write_override
from xenoffload.overrides import OverrideSetting
from xenoffload.policy import DirectionSetting, parse_policy
from xenoffload.schema import FamilyFlags, Role
from xenoffload.show import collect, list_vifs

from .helpers import World

GUEST_ALLOWS = parse_policy({"default": {"to-guest": True, "from-guest": True}})
ALL = FamilyFlags(True, True)


def test_the_agent_the_hotplug_hook_and_show_open_a_vif_alike() -> None:
    policy = parse_policy({"rule": [
        {"domain": "xs*", "from-guest": True},          # the file: by the domain's name
        {"bridge": "xenpriv0", "to-guest": {"ipv6": True}},
    ]})
    world = World(backend_policy=policy, guest_policy=GUEST_ALLOWS)
    paths = world.add_guest(1, "xs1", ["xenbr0", "xenpriv0", "xenbr0"])
    # xapi's other-config steers vif 1/0 (xe vif-param-set ... other-config:ethtool-tx=on);
    # a run-time override (xenoffload set, keyed by the VM's UUID) steers vif 1/1.
    world.dom0.write("/xapi/1/private/vif/0/other-config/ethtool-tx", b"on")
    world.dom0.write("/xapi/1/private/vif/2/other-config/ethtool-rx", b"off")
    write_override(world.dom0, 0, Role.BACKEND, vif_override_key(world.dom0, 1, 1),
                   OverrideSetting(to_guest=DirectionSetting(True, None)))
    world.start()
    world.settle()

    expected = {0: LinkPolicy(ALL, ALL),                            # file + xapi
                1: LinkPolicy(ALL, ALL),                            # file + override
                2: LinkPolicy(FamilyFlags(), FamilyFlags())}        # xapi over the file
    assert list_vifs(world.dom0, 0) == paths
    reports = collect(world.dom0, paths)
    for devid, report in enumerate(reports):
        key = (1, devid)
        identity, hooked, _found = resolve_vif(world.dom0, policy, 0, 1, devid, None)
        agent = world.backend.endpoints[key].machine.policy
        assert hooked == agent == expected[devid], devid
        # Named alike: what the agent read (the fields its rules use), the hook and show.
        seen = world.backend.identities[key]
        assert (seen.domid, seen.devid, seen.domain, seen.bridge) == \
            (identity.domid, identity.devid, identity.domain, identity.bridge)
        assert (report.domain, report.bridge, report.mac, report.vifname) == \
            (identity.domain, identity.bridge, identity.mac, identity.vifname)
    assert world.backend.endpoints[(1, 0)].result == LinkResult(ALL, ALL)


def test_a_value_xapi_would_refuse_leaves_the_hook_on_the_other_sources() -> None:
    world = World()
    world.add_guest(1, "xs1", ["xenbr0"])
    world.dom0.write("/xapi/1/private/vif/0/other-config/ethtool-tx", b"maybe")
    world.start()
    world.settle()
    _identity, hooked, _found = resolve_vif(world.dom0, world.backend_policy, 0, 1, 0, None)
    assert hooked == world.backend.endpoints[(1, 0)].machine.policy == LinkPolicy()
