"""The event loop both agents share: one XenStore connection, batched watch events,
reconnection with backoff, retries when they are due. Agents plug in what a batch means.

An idle runner sleeps in one ``poll`` on two descriptors, with no timeout unless a retry is
due: the store's event descriptor (readable when an event is queued or the connection is
lost) and the runner's own self-pipe, which :meth:`Runner.stop` and
:meth:`Runner.request_reload` write to and which :meth:`Runner.run` makes the process's
``signal.set_wakeup_fd`` (so a signal whose handler only sets a flag ends the wait too). No
timer wakes it. A store without an event descriptor is waited on in slices of
:data:`WAKE_SLICE` instead.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs

from xenoffload.store.adapter import StoreAdapter
from xenoffload.store.base import Store, StoreUnavailable, TransactionAborted, WatchEvent
from xenoffload.store.doorbell import Doorbell

__all__ = ["AgentLogic", "Runner", "StoreFactory", "MAX_BATCH"]

log = logging.getLogger("xenoffload.agent")

StoreFactory = Callable[[], Store]

#: Most events taken from the connection as one batch.
MAX_BATCH = 8192
#: Longest single wait for events on a store without an event descriptor: a signal's request
#: (SIGHUP's reload, SIGTERM's stop) is seen at most this long after its handler ran.
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
    for events when nothing is due (None: no bound, the runner sleeps until an event, a
    signal or a request). :meth:`stop`, :meth:`request_reload` and (under :meth:`run`, in
    the main thread) any signal end a wait at once.
    """

    factory: StoreFactory
    logic: AgentLogic
    idle_seconds: float | None = None
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
    _wake: Doorbell = attrs.field(factory=Doorbell, init=False, repr=False)
    _poller: tuple[int, select.poll] | None = attrs.field(default=None, init=False, repr=False)

    def stop(self) -> None:
        """Stop :meth:`run` (from any thread or a signal handler)."""
        self.stop_event.set()
        self._wake.ring()

    def request_reload(self, reload: Callable[[], None]) -> None:
        """Have the runner's thread call ``reload`` at the end of its current turn, waking it
        if it waits (from any thread or a signal handler: SIGHUP's policy reload)."""
        self.pending_reload = reload
        self._wake.ring()

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
        restore = self._take_signal_wakeups()
        try:
            while not self.stop_event.is_set():
                self.turn(self.idle_seconds)
        finally:
            restore()
            self._drop()

    def _take_signal_wakeups(self) -> Callable[[], None]:
        """Make the runner's self-pipe the process's signal wakeup descriptor (main thread
        only; elsewhere signals are not delivered to this thread anyway) and return what
        restores the previous one."""
        try:
            previous = signal.set_wakeup_fd(self._wake.write_fd, warn_on_full_buffer=False)
        except ValueError:  # not the main thread
            return lambda: None

        def restore() -> None:
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(previous)
        return restore

    def turn(self, wait_seconds: float | None) -> bool:
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

    def pump(self, wait_seconds: float | None) -> bool:
        """One turn of the loop on the current connection: wait for events at most
        ``wait_seconds`` (None: without bound; less when a retry is due sooner), handle the
        batch, then run what is due. Return whether anything was handled or run."""
        store = self.store
        assert store is not None
        due = self.logic.next_due()
        timeout = wait_seconds
        if due is not None:
            until_due = max(0.0, due - self.clock())
            timeout = until_due if timeout is None else min(timeout, until_due)
        batch = self._wait(store, timeout)
        if batch:
            self.logic.handle(batch)
        due = self.logic.next_due()
        ran = due is not None and due <= self.clock()
        if ran:
            self.logic.tick()
        return bool(batch) or ran

    def _wait(self, store: Store, timeout: float | None) -> list[WatchEvent]:
        """Wait at most ``timeout`` seconds (None: without bound) for a batch of events,
        returning early (with no events) once a reload is pending or a stop requested."""
        fd = store.event_fd() if isinstance(store, StoreAdapter) else None
        if fd is None:
            return self._wait_in_slices(store, timeout)
        self._wake.clear()  # first: a request made after the look below rings again
        if self._requested():
            return []
        batch = store.next_events(0, MAX_BATCH)
        if batch or timeout == 0:
            return batch
        self._poll(fd, timeout)
        if self._requested():
            return []
        return store.next_events(0, MAX_BATCH)

    def _poll(self, fd: int, timeout: float | None) -> None:
        """Sleep until ``fd`` or the self-pipe is readable, or ``timeout`` passed."""
        if self._poller is None or self._poller[0] != fd:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.register(self._wake.fileno(), select.POLLIN)
            self._poller = (fd, poller)
        self._poller[1].poll(None if timeout is None else math.ceil(timeout * 1000))

    def _requested(self) -> bool:
        return self.pending_reload is not None or self.stop_event.is_set()

    def _wait_in_slices(self, store: Store, timeout: float | None) -> list[WatchEvent]:
        """:meth:`_wait` for a store without an event descriptor: waits of at most
        :data:`WAKE_SLICE`, looking for a request between them (a Python signal handler
        cannot end a wait on a condition)."""
        while True:
            wait = WAKE_SLICE if timeout is None else min(timeout, WAKE_SLICE)
            batch = store.next_events(wait, MAX_BATCH)
            if timeout is not None:
                timeout -= wait
            if batch or (timeout is not None and timeout <= 0) or self._requested():
                return batch

    def _drop(self) -> None:
        self._poller = None
        if self.store is not None:
            with contextlib.suppress(StoreUnavailable):
                self.store.close()
            self.store = None
            self.reconnects += 1
