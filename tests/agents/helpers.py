"""A small world for agent tests: an in-memory XenStore, a guest, vifs, recording toggles."""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs

from xenoffload.agents.backend import BackendAgent
from xenoffload.agents.guest import GuestAgent
from xenoffload.enforce import TogglesEnforcer
from xenoffload.machine import Mode
from xenoffload.paths import VifPaths
from xenoffload.policy import Policy
from xenoffload.store.base import Store, WatchEvent
from xenoffload.store.memory import MemoryXenStore
from xenoffload.toggles.base import DeviceRef
from xenoffload.toggles.simulated import NETBACK_VIF, NETFRONT_ETH, SimulatedKernel
from xenoffload.toolstack import VifSpec, create_domain, create_vif


def drain(store: Store, handle: Callable[[list[WatchEvent]], None]) -> int:
    """Hand every queued event to ``handle`` in one batch; return how many there were."""
    batch = []
    while (event := store.next_event(0)) is not None:
        batch.append(event)
    if batch:
        handle(batch)
    return len(batch)


@attrs.define
class World:
    xs: MemoryXenStore = attrs.field(factory=MemoryXenStore)
    toggles: SimulatedKernel = attrs.field(factory=SimulatedKernel)
    backend_policy: Policy = Policy()
    guest_policy: Policy = Policy()
    mode: Mode = Mode.FULL
    clock: Callable[[], float] = time.monotonic
    dom0: Store = attrs.field(init=False)
    backend: BackendAgent = attrs.field(init=False)
    guests: dict[int, tuple[Store, GuestAgent]] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self.dom0 = self.xs.connect(0)
        create_domain(self.dom0, 0, "Domain-0")
        self.backend = BackendAgent(
            self.backend_policy, 0, self.mode,
            lambda vif: TogglesEnforcer(self.toggles, self.vif_device(vif.domid, vif.devid)),
            clock=self.clock)

    @staticmethod
    def vif_device(domid: int, devid: int) -> DeviceRef:
        return DeviceRef(f"vif{domid}.{devid}", "dom0")

    @staticmethod
    def eth_device(domid: int, devid: int) -> DeviceRef:
        return DeviceRef(f"eth{devid}", f"dom{domid}")

    def add_guest(self, domid: int, name: str, bridges: list[str]) -> list[VifPaths]:
        create_domain(self.dom0, domid, name)
        paths = []
        for devid, bridge in enumerate(bridges):
            self.toggles.add_device(self.vif_device(domid, devid), NETBACK_VIF)
            self.toggles.add_device(self.eth_device(domid, devid), NETFRONT_ETH)
            paths.append(create_vif(self.dom0, VifSpec(domid, devid, f"00:16:3e:00:{domid:02x}:"
                                                       f"{devid:02x}", bridge)))
        store = self.xs.connect(domid)
        agent = GuestAgent(self.guest_policy, domid, self.mode,
                           lambda vif: TogglesEnforcer(self.toggles,
                                                       self.eth_device(domid, vif.devid)),
                           follows=True)
        self.guests[domid] = (store, agent)
        return paths

    def start(self) -> None:
        self.backend.attach(self.dom0)
        for store, agent in self.guests.values():
            agent.attach(store)

    def settle(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            moved = drain(self.dom0, self.backend.handle)
            for store, agent in self.guests.values():
                moved += drain(store, agent.handle)
            if not moved:
                return
        raise AssertionError("agents did not settle")

    def state(self, path: str) -> bytes | None:
        return self.dom0.try_read(f"{path}/state")
