"""What the fleet asks of XenStore when it attaches: one rescan, whatever its watches'
registration events do."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from xenoffload.agents import fleet
from xenoffload.store.memory import MemoryStore
from xenoffload.xs.errors import XenStoreError
from xenoffload.xs.requests import Request
from xenoffload.xs.values import WatchEvent, parse_perm
from xenoffload.xs.wire import Op

from .helpers import World, drain

ROOT = "/local/domain/0/backend/vif"


def counted(store: MemoryStore) -> list[Request]:
    """Return the list every request ``store`` sends from now on is appended to."""
    sent: list[Request] = []
    exchange = store.exchange

    def counting(batch: Sequence[Request]) -> list[bytes | XenStoreError]:
        sent.extend(batch)
        return exchange(batch)

    store.exchange = counting  # type: ignore[method-assign]
    return sent


def rescans(sent: list[Request]) -> int:
    """How many times the backend root was listed."""
    return sum(1 for request in sent
               if request.op == Op.DIRECTORY and request.payload == ROOT.encode() + b"\0")


def world_with_vifs() -> World:
    world = World()
    for domid in (1, 2, 3):
        world.add_guest(domid, f"guest{domid}", ["xenbr0", "xenbr1"])
    return world


def test_attach_rescans_once_its_watches_registration_events_cost_nothing() -> None:
    world = world_with_vifs()
    sent = counted(world.dom0)
    world.backend.attach(world.dom0)
    assert rescans(sent) == 1
    assert len(world.backend.endpoints) == 6
    steps = sum(1 for request in sent if request.op == Op.TRANSACTION_START)
    while drain(world.dom0, world.backend.handle):  # the echoes of its own writes
        pass
    assert rescans(sent) == 1
    # Nothing but the echoes came: no vif was stepped again.
    assert sum(1 for request in sent if request.op == Op.TRANSACTION_START) == steps


def test_a_change_of_the_watched_node_itself_after_attach_still_rescans() -> None:
    world = world_with_vifs()
    sent = counted(world.dom0)
    world.backend.attach(world.dom0)
    while drain(world.dom0, world.backend.handle):
        pass
    world.dom0.set_perms("/local/domain", [parse_perm("n0")])  # an event on /local/domain
    while drain(world.dom0, world.backend.handle):
        pass
    assert rescans(sent) == 2


class LosesRegistrations(MemoryStore):
    """A session whose server dropped the event of every watch's registration."""

    def watch(self, path: str, token: str) -> None:
        super().watch(path, token)
        with self._cond:
            self._events = type(self._events)(
                event for event in self._events if event != WatchEvent(path, token))


def test_lost_registration_events_delay_attach_and_skip_nothing_later(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet, "REGISTRATION_WAIT", 0.1)
    world = world_with_vifs()
    store = LosesRegistrations(world.xs, world.xs.model.connect(0))
    sent = counted(store)
    world.backend.attach(store)
    assert rescans(sent) == 1 and len(world.backend.endpoints) == 6
    while drain(store, world.backend.handle):
        pass
    # The first event naming the watched path after the rescan is a change: rescanned.
    store.set_perms("/local/domain", [parse_perm("n0")])
    while drain(store, world.backend.handle):
        pass
    assert rescans(sent) == 2


def identity_reads(sent: list[Request]) -> int:
    """How many reads of a backend's ``vifname`` (part of every end's identity) were sent."""
    return sum(1 for request in sent
               if request.op == Op.READ and request.payload.endswith(b"/vifname\0"))


def test_an_override_rereads_what_vifs_are_only_when_it_matches_on_something_new() -> None:
    """A bridge override matches on what every end's identity already holds: no vif is read
    again. The first override keyed by a VM's UUID needs each vif's ``vm`` node: one reread."""
    from xenoffload.override_store import write_override
    from xenoffload.overrides import OverrideSetting, bridge_key, vif_key
    from xenoffload.policy import DirectionSetting, vm_uuid
    from xenoffload.schema import Role

    world = world_with_vifs()
    world.start()
    world.settle()
    sent = counted(world.dom0)
    allow = OverrideSetting(DirectionSetting(True, True))
    write_override(world.dom0, 0, Role.BACKEND, bridge_key("xenbr1"), allow)
    world.settle()
    assert identity_reads(sent) == 0
    uuid = vm_uuid(world.dom0.read("/local/domain/2/vm"))
    write_override(world.dom0, 0, Role.BACKEND, vif_key(uuid, 2, 0), allow)
    world.settle()
    assert identity_reads(sent) == 6  # each of the 6 vifs once
    assert world.backend.identities[(2, 0)].uuid == uuid
    assert world.backend.endpoints[(2, 0)].machine.policy.to_guest.ipv4


def test_building_a_vif_reads_its_own_state_only_in_its_first_step() -> None:
    """The backend reads ``frontend``, ``bridge`` and ``vifname`` to build a vif's end, not
    its own ``state``: the first step reads that (its guard) before writing anything."""
    world = world_with_vifs()
    sent = counted(world.dom0)
    world.backend.attach(world.dom0)
    own_state = [request for request in sent if request.op == Op.READ and
                 request.payload.startswith(ROOT.encode()) and
                 request.payload.endswith(b"/state\0")]
    outside = [request for request in own_state if request.tx_id == 0]
    assert not outside  # none outside the steps' transactions
    assert len(own_state) == 6  # one guard read per vif in its first step
