"""Both agents over the in-memory store: discovery, negotiation, policy flips, reboots."""

from __future__ import annotations

import logging

import pytest
from toggles.simkernel import remove_device, sets_sent

from xenoffload.agents.guest import GuestAgent
from xenoffload.negotiation import LinkResult
from xenoffload.override_store import write_override
from xenoffload.overrides import OverrideSetting, vif_key
from xenoffload.policy import DirectionSetting, Match, Rule, VifIdentity, parse_policy, vm_uuid
from xenoffload.schema import RESULT_KEY, STATUS_KEY, FamilyFlags, Role
from xenoffload.toggles.simulated import NETBACK_VIF
from xenoffload.toolstack import VifSpec, create_domain, create_vif

from .helpers import World

PRIVATE = parse_policy({"rule": [{"bridge": "xenpriv0", "to-guest": True,
                                  "from-guest": True}]})
GUEST_ALLOWS = parse_policy({"default": {"to-guest": True, "from-guest": True}})
ALL = FamilyFlags(True, True)


def test_guest_appears_and_both_ends_connect_with_the_safe_default() -> None:
    world = World()
    paths = world.add_guest(1, "guest", ["xenbr0"])
    world.start()
    world.settle()
    assert world.state(paths[0].backend_dir) == b"4"
    assert world.state(paths[0].frontend_dir) == b"4"
    assert world.backend.endpoints[(1, 0)].result == LinkResult()
    vif = world.toggles.read(world.vif_device(1, 0))
    assert not vif["tx-checksum-ipv4"].active and not vif["tx-checksum-ipv6"].active


def test_private_bridge_suppresses_only_where_both_ends_allow() -> None:
    world = World(backend_policy=PRIVATE, guest_policy=GUEST_ALLOWS)
    world.add_guest(1, "nfs", ["xenbr0", "xenpriv0"])
    world.start()
    world.settle()
    public, private = (world.backend.endpoints[(1, d)].result for d in (0, 1))
    assert public == LinkResult()
    assert private == LinkResult(ALL, ALL)
    guest_view = world.guests[1][1].endpoints[(1, 1)].result
    assert guest_view == private
    vif1 = world.toggles.read(world.vif_device(1, 1))
    assert vif1["tx-checksum-ipv4"].active and vif1["tx-checksum-ipv6"].active


def test_both_ends_publish_the_result_they_applied_beside_their_status() -> None:
    world = World(backend_policy=PRIVATE, guest_policy=GUEST_ALLOWS)
    paths = world.add_guest(1, "nfs", ["xenbr0", "xenpriv0"])
    world.start()
    world.settle()
    for vif, expected in zip(paths, (b"to-guest=none from-guest=none",
                                     b"to-guest=ipv4+ipv6 from-guest=ipv4+ipv6"), strict=True):
        for directory in (vif.backend_dir, vif.frontend_dir):
            assert world.dom0.try_read(f"{directory}/{RESULT_KEY}") == expected
            assert world.dom0.try_read(f"{directory}/{STATUS_KEY}") is not None


def test_the_toolstacks_vifname_names_the_backend_device() -> None:
    world = World()
    world.add_guest(1, "named", ["xenbr0"])
    seen: list[VifIdentity] = []
    factory = world.backend.enforcer_factory
    world.backend.enforcer_factory = lambda vif: seen.append(vif) or factory(vif)
    world.dom0.write("/local/domain/0/backend/vif/1/0/vifname", b"nfs-eth0")
    world.start()
    world.settle()
    assert [vif.vifname for vif in seen] == ["nfs-eth0"]


def test_policy_flip_reapplies_exactly_the_affected_vif() -> None:
    world = World(guest_policy=GUEST_ALLOWS)
    world.add_guest(1, "a", ["xenbr0", "xenpriv0"])
    world.add_guest(2, "b", ["xenbr0"])
    world.start()
    world.settle()
    before = len(world.toggles.applies)
    world.backend.set_policy(PRIVATE)
    world.settle()
    touched = {rec.device for rec in world.toggles.applies[before:] if rec.sent}
    assert touched == {world.vif_device(1, 1), world.eth_device(1, 1)}
    assert world.backend.endpoints[(1, 1)].result == LinkResult(ALL, ALL)
    assert world.backend.endpoints[(2, 0)].result == LinkResult()


def test_backend_agent_restart_changes_nothing() -> None:
    world = World(backend_policy=PRIVATE, guest_policy=GUEST_ALLOWS)
    paths = world.add_guest(1, "a", ["xenpriv0"])
    world.start()
    world.settle()
    sets = sets_sent(world.toggles)
    tree = world.xs.model.dump(paths[0].backend_dir)
    from xenoffload.agents.backend import BackendAgent
    world.backend = BackendAgent(PRIVATE, 0, world.mode, world.backend.enforcer_factory)
    world.dom0 = world.xs.connect(0)
    world.backend.attach(world.dom0)
    world.settle()
    assert sets_sent(world.toggles) == sets  # no kernel toggle flapped
    assert world.xs.model.dump(paths[0].backend_dir) == tree  # nothing rewritten


def test_guest_reboot_renegotiates() -> None:
    world = World(guest_policy=GUEST_ALLOWS)
    paths = world.add_guest(1, "a", ["xenbr0"])
    world.start()
    world.settle()
    store, _ = world.guests[1]
    store.write(f"{paths[0].frontend_dir}/state", b"6")  # guest shuts its frontend down
    world.settle()
    assert world.state(paths[0].backend_dir) == b"6"
    store.write(f"{paths[0].frontend_dir}/state", b"1")  # and boots again
    world.settle()
    assert world.state(paths[0].backend_dir) == b"4"
    assert world.state(paths[0].frontend_dir) == b"4"


def test_device_removal_is_forgotten_cleanly() -> None:
    world = World()
    paths = world.add_guest(1, "a", ["xenbr0"])
    world.start()
    world.settle()
    from xenoffload.toolstack import destroy_vif
    destroy_vif(world.dom0, paths[0])
    world.settle()
    assert (1, 0) not in world.backend.endpoints
    assert world.dom0.try_read(paths[0].backend_dir) is None  # never re-created
    assert (1, 0) not in world.guests[1][1].endpoints


def test_keys_each_end_writes_carry_libxls_permissions() -> None:
    from xenoffload.store.base import Access, Perm

    world = World()
    paths = world.add_guest(1, "a", ["xenbr0"])
    world.start()
    world.settle()
    vif = paths[0]
    for directory, expected in (
            (vif.backend_dir, (Perm(Access.NONE, 0), Perm(Access.READ, 1))),
            (vif.frontend_dir, (Perm(Access.NONE, 1), Perm(Access.READ, 0)))):
        for key in ("feature-csum-tx", "feature-csum-rx-ipv6", "xenoffload-csum-status"):
            assert world.dom0.get_perms(f"{directory}/{key}") == expected, (directory, key)


def test_each_end_writes_only_inside_its_own_directory() -> None:
    world = World()
    paths = world.add_guest(1, "a", ["xenbr0"])
    before = world.xs.model.dump("/")
    world.start()
    world.settle()
    after = world.xs.model.dump("/")
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert changed, "nothing was written"
    assert all(p.startswith((paths[0].backend_dir, paths[0].frontend_dir)) for p in changed), \
        sorted(changed)


def test_the_echo_of_an_own_write_costs_nothing_and_a_foreign_write_is_news() -> None:
    world = World(guest_policy=GUEST_ALLOWS)
    paths = world.add_guest(1, "a", ["xenbr0"])
    world.start()
    world.settle()
    started: list[int] = []
    inner = world.dom0.start_transactions
    world.dom0.start_transactions = lambda count: (  # type: ignore[method-assign]
        started.append(count) or inner(count))
    world.backend.set_policy(PRIVATE.with_rules(
        [Rule(Match(domid=1), DirectionSetting(True, True))]))  # writes keys: echoes follow
    assert started == [1]
    echoes = []
    while (event := world.dom0.next_event(0)) is not None:
        echoes.append(event)
    own = [e for e in echoes if e.path.startswith(paths[0].backend_dir + "/")]
    assert own, echoes
    world.backend.handle(own)
    assert started == [1]  # no snapshot, no transaction for the echoes
    world.dom0.write(f"{paths[0].backend_dir}/feature-csum-tx", b"0")  # another writer
    world.backend.handle([e for e in [world.dom0.next_event(0)] if e is not None])
    assert started == [1, 1]
    assert world.dom0.read(f"{paths[0].backend_dir}/feature-csum-tx") == b"1"


def test_xapis_ethtool_settings_steer_a_vif_and_a_change_applies_at_once() -> None:
    world = World(guest_policy=GUEST_ALLOWS)
    world.add_guest(1, "xs", ["xenbr0", "xenbr0"])
    config = "/xapi/1/private/vif/0/other-config"
    world.dom0.write(f"{config}/ethtool-tx", b"on")
    world.dom0.write(f"{config}/ethtool-rx", b"true")
    world.start()
    world.settle()
    assert world.backend.endpoints[(1, 0)].result == LinkResult(ALL, ALL)
    assert world.backend.endpoints[(1, 1)].result == LinkResult()
    world.dom0.write(f"{config}/ethtool-tx", b"off")  # xe vif-param-set ... ethtool-tx=off
    world.settle()
    assert world.backend.endpoints[(1, 0)].result == LinkResult(FamilyFlags(), ALL)
    world.dom0.rm(config)
    world.settle()
    assert world.backend.endpoints[(1, 0)].result == LinkResult()


def test_xapis_tree_created_after_the_agent_started_is_read() -> None:
    # xapi creates /xapi/<domid> with a domain's private data: on a host whose agent started
    # with no /xapi (no VM yet, or the first VM migrated in), the first node written under
    # it is the first news of the tree.
    world = World(guest_policy=GUEST_ALLOWS)
    world.start()
    world.settle()
    world.dom0.write("/xapi/1/private/vif/0/other-config/ethtool-tx", b"on")
    world.dom0.write("/xapi/1/private/vif/0/other-config/ethtool-rx", b"on")
    world.settle()
    world.add_guest(1, "xs", ["xenbr0"])
    store, agent = world.guests[1]
    agent.attach(store)
    world.settle()
    assert world.backend.endpoints[(1, 0)].result == LinkResult(ALL, ALL)
    world.dom0.write("/xapi/1/private/vif/0/other-config/ethtool-rx", b"off")
    world.settle()
    assert world.backend.endpoints[(1, 0)].result == LinkResult(ALL, FamilyFlags())


def test_a_renamed_domain_is_matched_again_against_the_name_rules() -> None:
    # libxl's migration: the domain arrives as "web--incoming", is renamed "web" once it runs.
    policy = parse_policy({"rule": [{"domain": "web", "to-guest": True,
                                     "from-guest": True}]})
    world = World(backend_policy=policy, guest_policy=GUEST_ALLOWS)
    world.add_guest(1, "web--incoming", ["xenbr0"])
    world.start()
    world.settle()
    assert world.backend.endpoints[(1, 0)].result == LinkResult()
    world.dom0.write("/local/domain/1/name", b"web")
    world.settle()
    assert world.backend.endpoints[(1, 0)].result == LinkResult(ALL, ALL)
    world.dom0.write("/local/domain/1/name", b"web--migratedaway")
    world.settle()
    assert world.backend.endpoints[(1, 0)].result == LinkResult()


def test_a_value_xapi_would_refuse_is_ignored() -> None:
    world = World(guest_policy=GUEST_ALLOWS)
    world.add_guest(1, "xs", ["xenbr0"])
    world.dom0.write("/xapi/1/private/vif/0/other-config/ethtool-tx", b"sure")
    world.start()
    world.settle()
    assert world.backend.endpoints[(1, 0)].result == LinkResult()


def test_a_missing_device_is_logged_once_and_retried_with_growing_delays(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    now = [100.0]
    world = World(clock=lambda: now[0])
    world.add_guest(1, "g", ["xenbr0"])
    remove_device(world.toggles, world.vif_device(1, 0))  # netback has not made vif1.0 yet
    world.start()
    world.settle()
    delays = []
    for _ in range(6):
        due = world.backend.next_due()
        assert due is not None
        delays.append(due - now[0])
        now[0] = due
        world.backend.tick()
        world.settle()
    assert delays == sorted(delays) and delays[-1] >= 8 * delays[0], delays
    lines = [r.getMessage() for r in caplog.records if "domid=1 devid=0 backend" in r.getMessage()]
    assert sum("not applied yet" in line for line in lines) == 1, lines
    assert sum("negotiated" in line for line in lines) == 1, lines
    world.toggles.add_device(world.vif_device(1, 0), NETBACK_VIF)  # there it is
    now[0] = world.backend.next_due() or now[0]
    world.backend.tick()
    world.settle()
    assert world.backend.next_due() is None
    status = world.dom0.read("/local/domain/0/backend/vif/1/0/xenoffload-csum-status")
    assert status.startswith(b"ok"), status


def test_a_restored_guest_is_followed_and_both_ends_overrides_hold() -> None:
    """xl save + xl restore: the same VM comes back as a new domain (new domid, new home,
    its kernel's connection now the new domain's, its watches registered again). The guest
    agent acts for the new domain and carries its own override there; dom0's override, keyed
    by the VM's UUID, applies to the new domain's vif."""
    world = World(backend_policy=PRIVATE, guest_policy=GUEST_ALLOWS)
    world.add_guest(3, "g", ["xenbr0", "xenpriv0"])
    world.start()
    world.settle()
    store, agent = world.guests[3]
    uuid = vm_uuid(world.dom0.read("/local/domain/3/vm"))
    off = DirectionSetting(False, False)
    write_override(world.dom0, 0, Role.BACKEND, vif_key(uuid, 3, 1), OverrideSetting(off))
    write_override(store, 3, Role.FRONTEND, "vif/1", OverrideSetting(from_guest=off))
    world.settle()
    assert world.backend.endpoints[(3, 1)].result == LinkResult()
    assert world.backend.endpoints[(3, 0)].result == LinkResult()

    world.dom0.rm("/local/domain/3")  # xl save: the domain is gone
    world.dom0.rm("/local/domain/0/backend/vif/3")
    world.settle()
    create_domain(world.dom0, 4, "g", uuid)  # xl restore: the same VM as domain 4
    for devid, bridge in enumerate(["xenbr0", "xenpriv0"]):
        world.toggles.add_device(world.vif_device(4, devid), NETBACK_VIF)
        create_vif(world.dom0, VifSpec(4, devid, f"00:16:3e:00:03:{devid:02x}", bridge))
    store.resume_as(4)
    world.settle()

    assert agent.domid == 4 and set(agent.endpoints) == {(4, 0), (4, 1)}
    assert world.dom0.read("/local/domain/4/data/xenoffload/policy/vif/1") == \
        b"from-guest-ipv4=off from-guest-ipv6=off"
    for devid in (0, 1):
        assert world.state(f"/local/domain/4/device/vif/{devid}") == b"4"
        backend = world.dom0.read(f"/local/domain/0/backend/vif/4/{devid}/{RESULT_KEY}")
        assert world.dom0.read(f"/local/domain/4/device/vif/{devid}/{RESULT_KEY}") == backend
    assert world.backend.endpoints[(4, 1)].result == LinkResult()  # both overrides held
    assert agent.endpoints[(4, 1)].result == LinkResult()


def test_a_guest_agent_given_its_domid_does_not_follow_the_connection() -> None:
    """An agent told which guest it acts for (``--domid``, e.g. on dom0's connection in a
    test rig) never takes the connection's own domain for its guest."""
    world = World(guest_policy=GUEST_ALLOWS)
    world.add_guest(1, "a", ["xenbr0"])
    agent = GuestAgent(GUEST_ALLOWS, 1, world.mode)
    agent.attach(world.dom0)
    assert agent.domid == 1 and set(agent.endpoints) == {(1, 0)}
