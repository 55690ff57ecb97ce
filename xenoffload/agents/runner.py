"""The event loop both agents share: one XenStore connection, batched watch events,
reconnection with backoff, retries when they are due. Agents plug in what a batch means.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs

from xenoffload.store.base import Store, StoreUnavailable, TransactionAborted, WatchEvent

__all__ = ["AgentLogic", "Runner", "StoreFactory", "MAX_BATCH"]

log = logging.getLogger("xenoffload.agent")

StoreFactory = Callable[[], Store]

#: Most events taken from the connection as one batch.
MAX_BATCH = 8192
#: Longest single wait for events: a signal's request (SIGHUP's reload, SIGTERM's stop) is
#: seen at most this long after its handler ran, however long the idle wait.
WAKE_SLICE = 0.02


class AgentLogic(Protocol):
    """What an agent does; all calls come from the runner's one thread."""

    def attach(self, store: Store) -> None:
        """A (new) connection is up: register watches, rescan everything."""
        ...

    def handle(self, events: Sequence[WatchEvent]) -> None:
        """Process a batch of watch events (deduplicated by the logic itself)."""
        ...

    def tick(self) -> None:
        """Do what is due (retries)."""
        ...

    def next_due(self) -> float | None:
        """When :meth:`tick` has work next, on the runner's clock; None: nothing planned."""
        ...


@attrs.define
class Runner:
    """Drives an :class:`AgentLogic` until stopped. Reconnects (new store from the factory)
    whenever the connection is lost, with exponential backoff between attempts.

    ``clock`` is the logic's clock too (monotonic seconds); ``idle_seconds`` bounds a wait
    for events when nothing is due. A stop request or a pending reload (what the CLI's
    signal handlers set) ends any wait within :data:`WAKE_SLICE`.
    """

    factory: StoreFactory
    logic: AgentLogic
    idle_seconds: float = 1.0
    backoff_initial: float = 0.05
    backoff_max: float = 5.0
    clock: Callable[[], float] = time.monotonic
    stop_event: threading.Event = attrs.field(factory=threading.Event)
    store: Store | None = None
    reconnects: int = 0
    pending_reload: Callable[[], None] | None = None
    #: Called after every successful attach (watches registered, first rescan done): the CLI
    #: tells systemd it is ready (``sd_notify READY=1``).
    on_attached: Callable[[], None] | None = None

    def stop(self) -> None:
        self.stop_event.set()

    def _connect(self, attempts: int | None = None) -> Store:
        """Return a new attached store, retrying with backoff (at most ``attempts`` times;
        None: until stopped). Raises StoreUnavailable when out of attempts or stopped."""
        delay = self.backoff_initial
        tries = 0
        while not self.stop_event.is_set():
            tries += 1
            store: Store | None = None
            try:
                store = self.factory()
                self.logic.attach(store)
                if self.on_attached is not None:
                    self.on_attached()
                return store
            except (StoreUnavailable, OSError) as error:
                log.warning("XenStore unavailable (%s); retrying in %.2fs", error, delay)
            except TransactionAborted as error:
                log.warning("rescan kept conflicting (%s); retrying in %.2fs", error, delay)
            if store is not None:
                with contextlib.suppress(StoreUnavailable):
                    store.close()
            if attempts is not None and tries >= attempts:
                raise StoreUnavailable(f"gave up after {tries} attempts")
            self.stop_event.wait(delay)
            delay = min(delay * 2, self.backoff_max)
        raise StoreUnavailable("stopped")

    def run_once(self, settle_seconds: float = 0.2, max_seconds: float = 30.0,
                 attempts: int = 3) -> None:
        """Connect (``attempts`` tries), process events and due retries until nothing comes
        for ``settle_seconds`` and nothing is due sooner (or ``max_seconds`` pass), then
        return: the CLI's ``--once``. Raises StoreUnavailable if no connection could be made."""
        deadline = self.clock() + max_seconds
        self.store = self._connect(attempts)
        try:
            while self.clock() < deadline:
                if not self.pump(settle_seconds):
                    break
        finally:
            self.store.close()

    def run(self) -> None:
        """Process events until :meth:`stop`; survive any loss of the connection. Retries
        come when due even while events keep coming (a guest flapping its state must not
        starve another vif's retry)."""
        while not self.stop_event.is_set():
            self.turn(self.idle_seconds)
        self._drop()

    def turn(self, wait_seconds: float) -> bool:
        """One turn of :meth:`run`: connect if needed (with backoff), :meth:`pump`, then a
        pending policy reload. A lost connection is dropped, to be made again on the next
        turn. Return whether anything was handled or run."""
        try:
            if self.store is None:
                self.store = self._connect()
            moved = self.pump(wait_seconds)
            if self.pending_reload is not None:
                reload, self.pending_reload = self.pending_reload, None
                reload()
                moved = True
            return moved
        except (StoreUnavailable, TransactionAborted) as error:
            if not self.stop_event.is_set():
                log.warning("lost XenStore (%s); reconnecting", error)
            self._drop()
            return True

    def pump(self, wait_seconds: float) -> bool:
        """One turn of the loop on the current connection: wait for events at most
        ``wait_seconds`` (less when a retry is due sooner), handle the batch, then run what
        is due. Return whether anything was handled or run."""
        store = self.store
        assert store is not None
        due = self.logic.next_due()
        now = self.clock()
        timeout = wait_seconds if due is None else max(0.0, min(wait_seconds, due - now))
        batch = self._wait(store, timeout)
        if batch:
            self.logic.handle(batch)
        due = self.logic.next_due()
        ran = due is not None and due <= self.clock()
        if ran:
            self.logic.tick()
        return bool(batch) or ran

    def _wait(self, store: Store, timeout: float) -> list[WatchEvent]:
        """Wait at most ``timeout`` seconds for a batch of events, in slices of at most
        :data:`WAKE_SLICE`, returning early (with no events) once a reload is pending or a
        stop requested: a signal handler only sets those, and a Python signal handler cannot
        end a wait, so the wait has to look."""
        while True:
            wait = min(timeout, WAKE_SLICE)
            batch = store.next_events(wait, MAX_BATCH)
            timeout -= wait
            if batch or timeout <= 0 or self.pending_reload is not None or \
                    self.stop_event.is_set():
                return batch

    def _drop(self) -> None:
        if self.store is not None:
            with contextlib.suppress(StoreUnavailable):
                self.store.close()
            self.store = None
            self.reconnects += 1
