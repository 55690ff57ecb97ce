"""The event loop both agents share: one XenStore connection, batched watch events,
reconnection with backoff, periodic retries. Agents plug in what a batch of events means.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import attrs

from xenoffload.store.base import Store, StoreUnavailable, TransactionAborted, WatchEvent

__all__ = ["AgentLogic", "Runner", "StoreFactory"]

log = logging.getLogger("xenoffload.agent")

StoreFactory = Callable[[], Store]

#: Most events taken from the connection before a batch is processed.
MAX_BATCH = 4096


class AgentLogic(Protocol):
    """What an agent does; all calls come from the runner's one thread."""

    def attach(self, store: Store) -> None:
        """A (new) connection is up: register watches, rescan everything."""
        ...

    def handle(self, events: list[WatchEvent]) -> None:
        """Process a batch of watch events (deduplicated by the logic itself)."""
        ...

    def tick(self) -> None:
        """Called when no event came for a while: retry what failed."""
        ...


@attrs.define
class Runner:
    """Drives an :class:`AgentLogic` until stopped. Reconnects (new store from the factory)
    whenever the connection is lost, with exponential backoff between attempts."""

    factory: StoreFactory
    logic: AgentLogic
    tick_seconds: float = 1.0
    backoff_initial: float = 0.05
    backoff_max: float = 5.0
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
            if attempts is not None and tries >= attempts:
                raise StoreUnavailable(f"gave up after {tries} attempts")
            self.stop_event.wait(delay)
            delay = min(delay * 2, self.backoff_max)
        raise StoreUnavailable("stopped")

    def run_once(self, settle_seconds: float = 0.2, max_seconds: float = 30.0,
                 attempts: int = 3) -> None:
        """Connect (``attempts`` tries), process events until none arrives for
        ``settle_seconds`` (or ``max_seconds`` pass), then return: the CLI's ``--once``.
        Raises StoreUnavailable if no connection could be made."""
        deadline = time.monotonic() + max_seconds
        self.store = self._connect(attempts)
        try:
            while time.monotonic() < deadline:
                batch = self._take_batch(self.store, settle_seconds)
                if not batch:
                    break
                self.logic.handle(batch)
        finally:
            self.store.close()

    def run(self) -> None:
        """Process events until :meth:`stop`; survive any loss of the connection. Retries
        (:meth:`AgentLogic.tick`) come every ``tick_seconds`` even while events keep coming
        (a guest flapping its state must not starve another vif's retry)."""
        next_tick = time.monotonic() + self.tick_seconds
        while not self.stop_event.is_set():
            try:
                if self.store is None:
                    self.store = self._connect()
                batch = self._take_batch(self.store, self.tick_seconds)
                if self.pending_reload is not None:
                    reload, self.pending_reload = self.pending_reload, None
                    reload()
                if batch:
                    self.logic.handle(batch)
                if not batch or time.monotonic() >= next_tick:
                    self.logic.tick()
                    next_tick = time.monotonic() + self.tick_seconds
            except (StoreUnavailable, TransactionAborted) as error:
                if self.stop_event.is_set():
                    break
                log.warning("lost XenStore (%s); reconnecting", error)
                self._drop()
        self._drop()

    def _drop(self) -> None:
        if self.store is not None:
            with contextlib.suppress(StoreUnavailable):
                self.store.close()
            self.store = None
            self.reconnects += 1

    def _take_batch(self, store: Store, timeout: float) -> list[WatchEvent]:
        first = store.next_event(timeout)
        if first is None:
            return []
        batch = [first]
        while len(batch) < MAX_BATCH:
            more = store.next_event(0)
            if more is None:
                break
            batch.append(more)
        return batch
