"""The agents' event loop: retries are not starved by a stream of events."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from xenoffload.agents.runner import Runner
from xenoffload.store.base import Store, WatchEvent
from xenoffload.store.memory import MemoryStore, MemoryXenStore

from .helpers import World


class Busy:
    """Every batch it handles queues another event: the connection is never quiet. A retry
    is due every 50 ms of the runner's clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.store: MemoryStore | None = None
        self.ticks: list[float] = []
        self.batches = 0
        self.due = 0.05

    def attach(self, store: Store) -> None:
        assert isinstance(store, MemoryStore)
        self.store = store
        store.inject_event(WatchEvent("/noise", "t"))

    def handle(self, events: Sequence[WatchEvent]) -> None:
        self.batches += 1
        self.clock.now += 0.01  # each batch takes 10 ms
        assert self.store is not None
        self.store.inject_event(WatchEvent("/noise", "t"))

    def tick(self) -> None:
        self.ticks.append(self.clock.now)
        self.due = self.clock.now + 0.05

    def next_due(self) -> float:
        return self.due


@attrs.define
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


def test_retries_come_when_due_while_events_never_stop() -> None:
    xs = MemoryXenStore()
    clock = FakeClock()
    logic = Busy(clock)
    runner = Runner(lambda: xs.connect(0), logic, clock=clock)
    runner.store = runner._connect(1)
    for _ in range(100):  # one second of the runner's clock
        assert runner.pump(1.0)
    assert logic.batches == 100  # events kept coming all along
    assert len(logic.ticks) >= 16  # and retries still ran every 50-60 ms
    gaps = [b - a for a, b in zip(logic.ticks, logic.ticks[1:], strict=False)]
    assert max(gaps) <= 0.06 + 1e-9


def test_on_attached_runs_after_the_watches_and_the_first_rescan() -> None:
    world = World()
    world.add_guest(1, "guest", ["xenbr0"])
    seen: list[int] = []
    runner = Runner(lambda: world.xs.connect(0), world.backend)
    runner.on_attached = lambda: seen.append(len(world.backend.endpoints))
    runner.run_once(settle_seconds=0.0, max_seconds=1.0)
    assert seen == [1]
