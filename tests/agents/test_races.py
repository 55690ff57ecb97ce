"""Races down to the device: a step that changed its kernel device and then did not commit.

A step brings the device in line with its decision before its transaction commits (so the
status it writes says what the device does). When that commit conflicts (EAGAIN: the peer
changed what the step read), the store is as before, but the device is not: the next step must
enforce again, whatever it decides (docs/protocol.md, R15 (c)). These tests put a peer's policy
change between an end's reads and its commit, at chosen points, and check the devices.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from xenoffload.negotiation import LinkResult, decide, parse_result
from xenoffload.policy import Policy, parse_policy
from xenoffload.schema import RESULT_KEY, FamilyFlags, Role, parse_advertisement
from xenoffload.store.base import Store, Transaction
from xenoffload.toggles.mapping import wanted_features

from .helpers import World

ALLOW = parse_policy({"default": {"to-guest": True, "from-guest": True}})
REFUSE = parse_policy({"default": {"to-guest": False, "from-guest": False}})
SAFE = Policy()
ALLOW_FLAGS = FamilyFlags(True, True)


class Interleaved:
    """A connection that runs ``hooks`` (one per coming commit, None: none) just before it
    sends its transactions' ends: another actor acts between this one's reads and its commit.
    Counts the commits that conflicted."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.hooks: list[Callable[[], None] | None] = []
        self.conflicts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def end_transactions(self, ends: Sequence[tuple[Transaction, bool]]) -> list[bool]:
        if self.hooks:
            hook = self.hooks.pop(0)
            if hook is not None:
                hook()
        outcome = self.inner.end_transactions(ends)
        self.conflicts += outcome.count(False)
        return outcome


def world_with_interleaving(backend_policy: Policy, guest_policy: Policy
                            ) -> tuple[World, Interleaved, Interleaved]:
    world = World(backend_policy=backend_policy, guest_policy=guest_policy)
    world.add_guest(1, "nfs", ["xenpriv0"])
    dom0 = Interleaved(world.dom0)
    world.dom0 = dom0  # type: ignore[assignment]
    store, agent = world.guests[1]
    guest = Interleaved(store)
    world.guests[1] = (guest, agent)  # type: ignore[assignment]
    world.start()
    world.settle()
    return world, dom0, guest


def assert_devices_carry_the_store(world: World) -> LinkResult:
    """Both ends' devices carry decide() of the two advertisements in the store, and both
    ends publish it; return it."""
    back, front = world.backend.endpoints[(1, 0)], world.guests[1][1].endpoints[(1, 0)]
    keys = {end: {name: world.dom0.try_read(f"{end.own_dir}/{name}")
                  for name in ("feature-csum-tx", "feature-csum-rx", "feature-csum-tx-ipv6",
                               "feature-csum-rx-ipv6", "feature-no-csum-offload",
                               "feature-ipv6-csum-offload")}
            for end in (back, front)}
    expected = decide(parse_advertisement("", keys[back]).advertisement,
                      parse_advertisement("", keys[front]).advertisement)
    for end, device in ((back, world.vif_device(1, 0)), (front, world.eth_device(1, 0))):
        published = world.dom0.try_read(f"{end.own_dir}/{RESULT_KEY}")
        assert published is not None and parse_result(published) == expected, (end.label,
                                                                                 published)
        sends = expected.sends(end.role)
        available = world.toggles.read(device)
        for feature, wanted in wanted_features(sends.ipv4, sends.ipv6, available).items():
            if not available[feature].fixed:
                assert available[feature].active == wanted, (
                    f"{device} {feature} is {available[feature].active}, the store says "
                    f"{expected.describe()}")
    return expected


def test_a_revocation_between_the_guests_reads_and_its_commit_reaches_the_guests_device(
) -> None:
    """The issue's scenario: ``set --tx on --rx on`` then ``set --clear`` at the backend; the
    clear commits while the guest's step that applied the allowance waits to commit."""
    world, _dom0, guest = world_with_interleaving(SAFE, ALLOW)
    world.backend.set_policy(ALLOW)
    guest.hooks = [lambda: world.backend.set_policy(SAFE)]
    world.settle()
    assert guest.conflicts >= 1  # the race happened
    assert assert_devices_carry_the_store(world) == LinkResult()


def test_a_guests_revocation_between_the_backends_reads_and_its_commit_reaches_the_vif(
) -> None:
    world, dom0, _guest = world_with_interleaving(SAFE, ALLOW)
    guest_agent = world.guests[1][1]
    dom0.hooks = [lambda: guest_agent.set_policy(REFUSE)]
    world.backend.set_policy(ALLOW)
    world.settle()
    assert dom0.conflicts >= 1
    assert assert_devices_carry_the_store(world) == LinkResult()


def _flip(world: World, role: Role, policy: Policy) -> Callable[[], None]:
    agent = world.backend if role is Role.BACKEND else world.guests[1][1]
    return lambda: agent.set_policy(policy)


def test_rapid_flips_converge_on_the_devices_every_time() -> None:
    """50 runs of an allow-then-revoke flip at one end (chosen at random), the revocation
    landing just before one of the other end's next commits (chosen at random): every run
    ends with both devices carrying what the store says, and the race did happen."""
    rng = random.Random(19)
    raced = 0
    for _run in range(50):
        flipper = rng.choice([Role.BACKEND, Role.FRONTEND])
        if flipper is Role.BACKEND:
            world, victim, _other = world_with_interleaving(SAFE, ALLOW)
            victim = world.guests[1][0]  # type: ignore[assignment]
            revoke = SAFE
        else:
            world, victim, _other = world_with_interleaving(ALLOW, REFUSE)
            revoke = REFUSE
        assert isinstance(victim, Interleaved)
        assert_devices_carry_the_store(world)
        before = victim.conflicts
        victim.hooks = [*[None] * rng.randrange(3), _flip(world, flipper, revoke)]
        _flip(world, flipper, ALLOW)()
        world.settle()
        if victim.hooks:  # the other end committed less often than that: revoke now
            victim.hooks = []
            _flip(world, flipper, revoke)()
            world.settle()
        raced += victim.conflicts > before
        assert assert_devices_carry_the_store(world) == LinkResult()
    assert raced >= 10, f"only {raced} of 50 runs raced: the test does not exercise the race"


@pytest.mark.parametrize("role", [Role.BACKEND, Role.FRONTEND])
def test_a_policy_change_handled_before_the_removal_event_never_recreates_the_device(
        role: Role) -> None:
    """R14: the toolstack removes a vif; before the end sees the event, its policy changes
    (``set``, SIGHUP). The step the change asks for must not write into the removed
    directory (a WRITE creates missing parents): the directory stays gone."""
    world, _dom0, _guest = world_with_interleaving(SAFE, ALLOW)
    end = (world.backend if role is Role.BACKEND else world.guests[1][1]).endpoints[(1, 0)]
    toolstack = world.xs.connect(0)
    toolstack.rm(end.own_dir)
    agent = world.backend if role is Role.BACKEND else world.guests[1][1]
    agent.set_policy(ALLOW if role is Role.BACKEND else REFUSE)
    assert toolstack.try_read(f"{end.own_dir}/state") is None
    assert toolstack.try_read(end.own_dir) is None, "the removed device was re-created"
    world.settle()
    assert toolstack.try_read(end.own_dir) is None, "the removed device was re-created"
    assert (1, 0) not in agent.endpoints


def test_every_vif_of_every_pipeline_chunk_left_for_later_is_stepped_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A flip that makes more vifs dirty than one pipeline chunk holds, while commits keep
    conflicting: the vifs each chunk leaves for later are all retried (none only from the
    last chunk) and all converge."""
    from xenoffload.agents import fleet

    monkeypatch.setattr(fleet, "CHUNK", 2)
    now = [100.0]
    world = World(clock=lambda: now[0], guest_policy=ALLOW)
    world.add_guest(1, "nfs", ["xenpriv0"] * 5)
    world.start()
    world.settle()
    world.xs.fail_next_commits(16)  # the first chunk's two vifs: 8 conflicts each
    world.backend.set_policy(ALLOW)
    assert sorted(world.backend.due) == [(1, 0), (1, 1)], world.backend.due
    for _ in range(10):
        world.settle()
        due = world.backend.next_due()
        if due is None:
            break
        now[0] = due
        world.backend.tick()
    allowed = LinkResult(ALLOW_FLAGS, ALLOW_FLAGS)
    for devid in range(5):
        assert world.backend.endpoints[(1, devid)].result == allowed, devid
        assert world.guests[1][1].endpoints[(1, devid)].result == allowed, devid
