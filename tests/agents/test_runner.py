"""The agents' event loop: retries are not starved by a stream of events."""

from __future__ import annotations

import threading
import time

from xenoffload.agents.runner import Runner
from xenoffload.store.base import Store, WatchEvent
from xenoffload.store.memory import MemoryStore, MemoryXenStore

from .helpers import World


class Busy:
    """Every batch it handles queues another event: the connection is never quiet."""

    def __init__(self) -> None:
        self.store: MemoryStore | None = None
        self.ticks = 0
        self.batches = 0

    def attach(self, store: Store) -> None:
        assert isinstance(store, MemoryStore)
        self.store = store
        store.inject_event(WatchEvent("/noise", "t"))

    def handle(self, events: list[WatchEvent]) -> None:
        self.batches += 1
        assert self.store is not None
        self.store.inject_event(WatchEvent("/noise", "t"))

    def tick(self) -> None:
        self.ticks += 1


def test_ticks_come_on_time_while_events_never_stop() -> None:
    xs = MemoryXenStore()
    logic = Busy()
    runner = Runner(lambda: xs.connect(0), logic, tick_seconds=0.05)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    time.sleep(0.5)
    runner.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert logic.batches > 20  # events kept coming all along
    assert logic.ticks >= 4  # and retries still ran about every 50 ms


def test_on_attached_runs_after_the_watches_and_the_first_rescan() -> None:
    world = World()
    world.add_guest(1, "guest", ["xenbr0"])
    seen: list[int] = []
    runner = Runner(lambda: world.xs.connect(0), world.backend)
    runner.on_attached = lambda: seen.append(len(world.backend.endpoints))
    runner.run_once(settle_seconds=0.0, max_seconds=1.0)
    assert seen == [1]
