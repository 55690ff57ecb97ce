"""The agents' event loop: retries are not starved by a stream of events; an idle runner
sleeps on descriptors, woken by events, requests and signals, never by a timer."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import attrs
import pytest

from xenoffload.agents.runner import WAKE_SLICE, Runner
from xenoffload.store.base import Store, WatchEvent
from xenoffload.store.memory import MemoryStore, MemoryXenStore
from xenoffload.store.pyxs_store import PyxsStore
from xenoffload.xenstored.harness import EmbeddedXenstored

from .helpers import World


def inject_event(store: MemoryStore, event: WatchEvent) -> None:
    """Queue a spurious event on ``store``, as xenstored may send one (clients re-read)."""
    with store._cond:
        store._events.append(event)
        store._cond.notify_all()


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
        inject_event(store, WatchEvent("/noise", "t"))

    def handle(self, events: Sequence[WatchEvent]) -> None:
        self.batches += 1
        self.clock.now += 0.01  # each batch takes 10 ms
        assert self.store is not None
        inject_event(self.store, WatchEvent("/noise", "t"))

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


@pytest.fixture
def xenstored() -> Iterator[EmbeddedXenstored]:
    tmp = tempfile.mkdtemp(prefix="xsr", dir="/tmp")
    server = EmbeddedXenstored(f"{tmp}/socket", {})
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


class Recorder:
    """Watches ``/w``; records each batch and every wait the runner asks of the store."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def attach(self, store: Store) -> None:
        store.watch("/w", "t")

    def handle(self, events: Sequence[WatchEvent]) -> None:
        self.batches.append([event.path for event in events])

    def tick(self) -> None:
        pass

    def next_due(self) -> None:
        return None


class CountingPyxs(PyxsStore):
    """A PyxsStore recording the timeouts it is asked to wait for events."""

    def __init__(self, path: str) -> None:
        super().__init__(path, timeout=5.0)
        self.waits: list[float | None] = []

    def next_events(self, timeout: float | None, limit: int) -> list[WatchEvent]:
        self.waits.append(timeout)
        return super().next_events(timeout, limit)


def test_an_idle_runner_sleeps_on_descriptors_and_wakes_for_events_and_requests(
        xenstored: EmbeddedXenstored) -> None:
    stores: list[CountingPyxs] = []

    def connect() -> Store:
        stores.append(CountingPyxs(xenstored.socket_path))
        return stores[-1]

    logic = Recorder()
    runner = Runner(connect, logic)
    reloads: list[float] = []
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not logic.batches and time.monotonic() < deadline:
            time.sleep(0.01)
        writer = PyxsStore(xenstored.socket_path, timeout=5.0)
        time.sleep(0.3)  # idle: the runner sleeps in one poll
        waits_idle = len(stores[0].waits)
        time.sleep(0.5)
        assert len(stores[0].waits) == waits_idle  # no timer woke it
        writer.write("/w/a", b"1")
        while len(logic.batches) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert logic.batches[-1] == ["/w/a"]
        asked = time.monotonic()
        runner.request_reload(lambda: reloads.append(time.monotonic() - asked))
        while not reloads and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reloads and reloads[0] < 0.5
        writer.close()
    finally:
        runner.stop()
        thread.join(5)
    assert not thread.is_alive()
    assert all(wait == 0 for wait in stores[0].waits)  # events are only taken, never awaited


def test_a_signal_ends_the_runners_wait_in_the_main_thread(
        xenstored: EmbeddedXenstored) -> None:
    runner = Runner(lambda: PyxsStore(xenstored.socket_path, timeout=5.0), Recorder())
    previous = signal.signal(signal.SIGUSR1, lambda _n, _f: runner.stop_event.set())
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1))
    started = time.monotonic()
    timer.start()
    try:
        runner.run()  # what the CLI does: its handlers only set a flag
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert time.monotonic() - started < 3.0
    assert signal.set_wakeup_fd(-1) == -1  # the runner gave the wakeup descriptor back
