"""The agents' event loop: retries are not starved by a stream of events."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import pytest

from xenoffload.agents.runner import WAKE_SLICE, Runner
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


class Idle:
    """Logic with nothing to do and nothing due."""

    def attach(self, store: Store) -> None:
        pass

    def handle(self, events: Sequence[WatchEvent]) -> None:
        raise AssertionError("no event was queued")

    def tick(self) -> None:
        pass

    def next_due(self) -> None:
        return None


class Quiet(MemoryStore):
    """A connection where nothing happens; each wait for events returns at once and records
    how long it was asked to wait. ``during_wait`` runs in the third (a signal arriving)."""

    def __init__(self, xs: MemoryXenStore) -> None:
        super().__init__(xs, xs.model.connect(0))
        self.waits: list[float | None] = []
        self.during_wait: Callable[[], None] = lambda: None

    def next_events(self, timeout: float | None, limit: int) -> list[WatchEvent]:
        self.waits.append(timeout)
        if len(self.waits) == 3:
            self.during_wait()
        return super().next_events(0, limit)


@pytest.mark.parametrize("request_kind", ["reload", "stop"])
def test_a_signal_ends_a_long_wait_for_events_at_once(request_kind: str) -> None:
    store = Quiet(MemoryXenStore())
    runner = Runner(lambda: store, Idle())
    runner.store = store
    reloads: list[int] = []

    def signal_handler() -> None:  # what the CLI's SIGHUP / SIGTERM handlers do
        if request_kind == "reload":
            runner.pending_reload = lambda: reloads.append(1)
        else:
            runner.stop()

    store.during_wait = signal_handler
    moved = runner.turn(3600.0)
    assert len(store.waits) == 3  # the wait ended right after the signal
    assert all(wait is not None and wait <= WAKE_SLICE for wait in store.waits)
    assert (moved, reloads) == ((True, [1]) if request_kind == "reload" else (False, []))
