"""Deliberately broken implementations: xenoffload's agents with one bug each.

Each mutant is one small change to a conforming implementation (a store that misbehaves, an
enforcer that ignores the result, event handling that stops), so that a scenario failing for
it shows that scenario catches exactly that bug. ``blank-always`` is the seed's original bug:
it hard-codes "no checksum needed", advertising and allowing blank checksums whatever the
peer or the policy says.

Run one as a command (it is an implementation like any other)::

    python tests/conformance/mutants.py backend state-before-features [--device-log FILE]
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs

from xenoffload import machine as machine_module
from xenoffload.conformance.peer import linux_u
from xenoffload.conformance.subjects import AgentHooks, AgentSubject, PolicyLogic
from xenoffload.endpoint import Enforcement, Enforcer
from xenoffload.machine import Mode, freeze_transitions
from xenoffload.negotiation import LinkPolicy, LinkResult
from xenoffload.policy import Policy
from xenoffload.schema import (
    LEGACY_IPV6_CSUM_OFFLOAD,
    LEGACY_NO_CSUM_OFFLOAD,
    READ_KEYS,
    RESULT_KEY,
    FamilyFlags,
    Role,
)
from xenoffload.store.base import Store, WatchEvent, XenStoreError
from xenoffload.xenbus import XenbusState

S = XenbusState
_LEGACY = (LEGACY_NO_CSUM_OFFLOAD, LEGACY_IPV6_CSUM_OFFLOAD)
_VIF_DIR = re.compile(r"\A/local/domain/\d+/(backend/vif/\d+/\d+|device/vif/\d+)\Z")


class ProxyTransaction:
    """A transaction passed through; mutants override what they break."""

    def __init__(self, store: ProxyStore, inner: Any) -> None:
        self.store = store
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def read(self, path: str) -> bytes:
        value = self.try_read(path)
        if value is None:
            raise XenStoreError("ENOENT", path, "READ")
        return value

    def try_read(self, path: str) -> bytes | None:
        return self.store.mutant.read(self.store, self.inner, path)

    def write(self, path: str, value: bytes) -> None:
        self.store.mutant.write(self.store, self.inner, path, value)



class ProxyStore:
    """A store passed through; its transactions are :class:`ProxyTransaction`."""

    def __init__(self, inner: Store, mutant: StoreMutant) -> None:
        self.inner = inner
        self.mutant = mutant

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def transaction(self) -> ProxyTransaction:
        return ProxyTransaction(self, self.inner.transaction())

    def try_read(self, path: str) -> bytes | None:
        return self.mutant.read(self, self.inner, path)

    def write(self, path: str, value: bytes) -> None:
        self.mutant.write(self, self.inner, path, value)

    # The pipelined operations the agents use, one request at a time through the mutant.

    def start_transactions(self, count: int) -> list[ProxyTransaction]:
        return [self.transaction() for _ in range(count)]

    def _target(self, txn: Any) -> Any:
        return self.inner if txn is None else txn.inner

    def read_batch(self, requests: list[tuple[Any, str]]) -> list[bytes | None]:
        return [self.mutant.read(self, self._target(txn), path) for txn, path in requests]

    def directory_batch(self, requests: list[tuple[Any, str]]) -> list[list[str] | None]:
        return self.inner.directory_batch([(None if txn is None else txn.inner, path)
                                           for txn, path in requests])

    def write_batch(self, groups: list[Any]) -> None:
        for group in groups:
            target = self._target(group.transaction)
            for path, value in group.values:
                self.mutant.write(self, target, path, value)

    def end_transactions(self, ends: list[tuple[Any, bool]]) -> list[bool]:
        return self.inner.end_transactions([(txn.inner, commit) for txn, commit in ends])


class StoreMutant:
    """How a mutant store reads and writes (``target`` is the store or the transaction)."""

    def read(self, store: ProxyStore, target: Any, path: str) -> bytes | None:
        return target.try_read(path)  # type: ignore[no-any-return]

    def write(self, store: ProxyStore, target: Any, path: str, value: bytes) -> None:
        target.write(path, value)

    def hooks(self) -> AgentHooks:
        return AgentHooks(store=lambda inner: ProxyStore(inner, self))  # type: ignore[arg-type,return-value]


class OutsideDir(StoreMutant):
    """R1: mirrors every write into ``data/xenoffload-mirror`` of its own domain."""

    def write(self, store: ProxyStore, target: Any, path: str, value: bytes) -> None:
        target.write(path, value)
        target.write("data/xenoffload-mirror", value)


class StateBeforeFeatures(StoreMutant):
    """R9: writes ``state`` at once, outside the transaction that carries the feature keys."""

    def write(self, store: ProxyStore, target: Any, path: str, value: bytes) -> None:
        (store.inner if path.endswith("/state") else target).write(path, value)


class ReadsOutsideTransaction(StoreMutant):
    """R11: reads feature keys outside the snapshot transaction."""

    def read(self, store: ProxyStore, target: Any, path: str) -> bytes | None:
        if path.rsplit("/", 1)[-1] in READ_KEYS:
            return store.inner.try_read(path)
        return target.try_read(path)  # type: ignore[no-any-return]


class LenientValues(StoreMutant):
    """R2: reads feature keys as Linux's ``%u`` does (junk: absent, "1x": 1, "2": true)."""

    def read(self, store: ProxyStore, target: Any, path: str) -> bytes | None:
        raw = target.try_read(path)
        if path.rsplit("/", 1)[-1] not in READ_KEYS or raw is None:
            return raw  # type: ignore[no-any-return]
        number = linux_u(raw, -1)
        return None if number < 0 else (b"1" if number else b"0")


class LenientState(StoreMutant):
    """R13: reads ``state`` as Linux's ``%d`` does ("4\\n" and "04" are 4)."""

    def read(self, store: ProxyStore, target: Any, path: str) -> bytes | None:
        raw = target.try_read(path)
        if not path.endswith("/state") or raw is None:
            return raw  # type: ignore[no-any-return]
        number = linux_u(raw, -1)
        return raw if number < 0 else str(number).encode()


class NoLegacyRead(StoreMutant):
    """R4: ignores the legacy netif.h keys of the peer (its own, which it wrote, it reads)."""

    def __init__(self) -> None:
        self.own_dirs: set[str] = set()

    def write(self, store: ProxyStore, target: Any, path: str, value: bytes) -> None:
        self.own_dirs.add(path.rsplit("/", 1)[0])
        target.write(path, value)

    def read(self, store: ProxyStore, target: Any, path: str) -> bytes | None:
        directory, _, name = path.rpartition("/")
        if name in _LEGACY and directory not in self.own_dirs:
            return None
        return target.try_read(path)  # type: ignore[no-any-return]


class NoLegacyWrite(StoreMutant):
    """R4: writes its own keys but not the legacy ones a stock driver reads."""

    def write(self, store: ProxyStore, target: Any, path: str, value: bytes) -> None:
        if path.rsplit("/", 1)[-1] not in _LEGACY:
            target.write(path, value)


@attrs.define
class LogicWrapper:
    """An agent's logic passed through; mutants override what they break."""

    inner: PolicyLogic

    def attach(self, store: Store) -> None:
        self.inner.attach(store)

    def handle(self, events: Sequence[WatchEvent]) -> None:
        self.inner.handle(events)

    def tick(self) -> None:
        self.inner.tick()

    def next_due(self) -> float | None:
        return self.inner.next_due()

    def set_policy(self, policy: Policy) -> None:
        self.inner.set_policy(policy)


@attrs.define
class ResurrectsRemoved(LogicWrapper):
    """R14: believes its vif directories still exist after removal: once a device it served is
    gone, it writes the keys it last announced there again, without checking."""

    announced: dict[str, dict[str, bytes]] = attrs.field(factory=dict)
    store: Store | None = None

    def attach(self, store: Store) -> None:
        self.store = store
        self.inner.attach(store)

    def handle(self, events: Sequence[WatchEvent]) -> None:
        self.inner.handle(events)
        assert self.store is not None
        live = {endpoint.own_dir: endpoint
                for endpoint in getattr(self.inner, "endpoints", {}).values()}
        for directory, endpoint in live.items():
            keys = endpoint.machine.own_keys
            if keys is not None:
                self.announced[directory] = {k: v for k, v in keys.items() if v is not None}
        for directory in [d for d in self.announced if d not in live]:
            for name, value in self.announced.pop(directory).items():
                if name.startswith("feature-csum-"):
                    self.store.write(f"{directory}/{name}", value)


class RefreshesState(StoreMutant):
    """R10: a companion that "helpfully" rewrites the kernel's state beside its keys."""

    def write(self, store: ProxyStore, target: Any, path: str, value: bytes) -> None:
        target.write(path, value)
        if path.endswith("/feature-csum-tx"):
            state = path.rsplit("/", 1)[0] + "/state"
            target.write(state, target.try_read(state) or b"1")


class LegacyOutsideTransaction(StoreMutant):
    """R8: writes the legacy keys at once, outside the transaction of its own keys."""

    def write(self, store: ProxyStore, target: Any, path: str, value: bytes) -> None:
        (store.inner if path.rsplit("/", 1)[-1] in _LEGACY else target).write(path, value)


class RewritesStateOnApply(StoreMutant):
    """R8: with every result it publishes, writes its state again (unchanged while
    Connected: a transition that did not happen)."""

    def write(self, store: ProxyStore, target: Any, path: str, value: bytes) -> None:
        target.write(path, value)
        if path.endswith("/" + RESULT_KEY):
            state = path.rsplit("/", 1)[0] + "/state"
            current = target.try_read(state)
            if current is not None:
                target.write(state, current)


class ReadsStateAlone(StoreMutant):
    """R11: reads the snapshot, then acts on states read again outside it."""

    def read(self, store: ProxyStore, target: Any, path: str) -> bytes | None:
        value = target.try_read(path)
        if path.endswith("/state") and target is not store.inner:
            return store.inner.try_read(path)  # type: ignore[no-any-return]
        return value  # type: ignore[no-any-return]


class PublishesWrongResult(StoreMutant):
    """R6: publishes "everything allowed" whatever it decided and applied."""

    def write(self, store: ProxyStore, target: Any, path: str, value: bytes) -> None:
        if path.endswith("/" + RESULT_KEY):
            value = b"to-guest=ipv4+ipv6 from-guest=ipv4+ipv6"
        target.write(path, value)


class PublishesNoResult(StoreMutant):
    """Publishes no result (optional in R6): its decisions cannot be checked."""

    def write(self, store: ProxyStore, target: Any, path: str, value: bytes) -> None:
        if not path.endswith("/" + RESULT_KEY):
            target.write(path, value)


@attrs.frozen
class FixedResult:
    """An enforcer that applies ``result`` whatever was negotiated."""

    inner: Enforcer
    result: LinkResult

    def enforce(self, role: Role, result: LinkResult) -> Enforcement:
        return self.inner.enforce(role, self.result)


EVERYTHING = LinkResult(FamilyFlags.both(True), FamilyFlags.both(True))


@attrs.define
class Frozen(LogicWrapper):
    """Stops handling events once it has applied a result (never renegotiates)."""

    applied: list[bool] = attrs.field(factory=list)

    def handle(self, events: Sequence[WatchEvent]) -> None:
        if not self.applied:
            self.inner.handle(events)


@attrs.define
class Reapplies(LogicWrapper):
    """Forgets what it applied before every batch of events, so it applies again."""

    def handle(self, events: Sequence[WatchEvent]) -> None:
        for endpoint in getattr(self.inner, "endpoints", {}).values():
            endpoint.machine.device_unknown()
            endpoint.machine.lost_track()
        self.inner.handle(events)
        for endpoint in getattr(self.inner, "endpoints", {}).values():
            endpoint.step()


@attrs.define
class IgnoresPolicyChange(LogicWrapper):
    """R12: keeps the policy it started with (a reload is accepted and dropped)."""

    def set_policy(self, policy: Policy) -> None:
        pass


@attrs.define
class Polls(LogicWrapper):
    """R11: reads its vifs' states over and over instead of waiting for events."""

    store: Store | None = None

    def attach(self, store: Store) -> None:
        self.store = store
        self.inner.attach(store)

    def tick(self) -> None:
        self.inner.tick()
        if self.store is not None:
            for _ in range(100):
                self.store.try_read("/local/domain/0/backend/vif/1/0/state")

    def next_due(self) -> float | None:
        return 0.0  # always something to do: it polls instead of waiting


@attrs.define
class RearmsWatches(LogicWrapper):
    """R11: registers a new watch on every path an event names (each fires at once: it spins
    and the watches pile up)."""

    store: Store | None = None
    count: int = 0

    def attach(self, store: Store) -> None:
        self.store = store
        self.inner.attach(store)

    def handle(self, events: Sequence[WatchEvent]) -> None:
        self.inner.handle(events)
        assert self.store is not None
        for event in events:
            self.count += 1
            self.store.watch(event.path, f"rearm-{self.count}")


@attrs.frozen
class Recorder:
    """An enforcer that notes it was called."""

    inner: Enforcer
    calls: list[bool]

    def enforce(self, role: Role, result: LinkResult) -> Enforcement:
        self.calls.append(True)
        return self.inner.enforce(role, result)


def _frozen() -> AgentHooks:
    applied: list[bool] = []
    return AgentHooks(enforcer=lambda inner: Recorder(inner, applied),
                      logic=lambda inner: Frozen(inner, applied))


def _logic(wrapper: Callable[[PolicyLogic], LogicWrapper]) -> Callable[[], AgentHooks]:
    return lambda: AgentHooks(logic=wrapper)


def _blank_always() -> AgentHooks:
    # Whatever it is configured with, it advertises everything; whatever the peer says, it
    # applies everything.
    return AgentHooks(policy=lambda given: LinkPolicy(FamilyFlags.both(True),
                                                      FamilyFlags.both(True)),
                      enforcer=lambda inner: FixedResult(inner, EVERYTHING))


#: Mutants built only from hooks: name -> (what it breaks, hooks factory).
HOOK_MUTANTS: dict[str, tuple[str, Callable[[], AgentHooks]]] = {
    "outside-dir": ("writes a key outside its own directory", lambda: OutsideDir().hooks()),
    "state-before-features": ("writes state before its feature keys",
                              lambda: StateBeforeFeatures().hooks()),
    "reads-outside-transaction": ("reads the peer's features outside a snapshot",
                                  lambda: ReadsOutsideTransaction().hooks()),
    "lenient-values": ("parses values as Linux %u", lambda: LenientValues().hooks()),
    "lenient-state": ("parses state as Linux %d", lambda: LenientState().hooks()),
    "no-legacy-read": ("ignores the peer's legacy keys", lambda: NoLegacyRead().hooks()),
    "no-legacy-write": ("does not write legacy keys", lambda: NoLegacyWrite().hooks()),
    "resurrects-removed": ("writes into a removed device",
                           lambda: AgentHooks(logic=lambda inner: ResurrectsRemoved(inner))),
    "blank-always": ("hard-codes 'no checksum needed' (the seed's bug)", _blank_always),
    "checksums-always": ("never allows blank checksums, whatever was negotiated",
                         lambda: AgentHooks(enforcer=lambda inner: FixedResult(
                             inner, LinkResult()))),
    "frozen-after-connect": ("stops reacting once connected", _frozen),
    "reapplies-every-event": ("re-applies its result on every event", _logic(Reapplies)),
    "companion-writes-state": ("rewrites state although the kernel driver owns it",
                               lambda: RefreshesState().hooks()),
    "legacy-outside-transaction": ("writes its legacy keys outside its announcement",
                                   lambda: LegacyOutsideTransaction().hooks()),
    "rewrites-state-on-apply": ("writes its unchanged state with every result",
                                lambda: RewritesStateOnApply().hooks()),
    "reads-state-alone": ("acts on states read outside the snapshot",
                          lambda: ReadsStateAlone().hooks()),
    "publishes-wrong-result": ("publishes a result it did not decide",
                               lambda: PublishesWrongResult().hooks()),
    "publishes-no-result": ("publishes no xenoffload-csum-result",
                            lambda: PublishesNoResult().hooks()),
    "ignores-policy-change": ("keeps its first policy", _logic(IgnoresPolicyChange)),
    "polls": ("polls XenStore instead of waiting for events", _logic(Polls)),
    "rearms-watches": ("registers a new watch on every event", _logic(RearmsWatches)),
}


@contextmanager
def patched_tables(changes: dict[tuple[Role, S], dict[S, S | None]]) -> Iterator[None]:
    """Put other full-mode transition tables in place for a while: the frozen tables with
    ``changes`` applied (``None`` removes an entry)."""
    original = machine_module.TRANSITIONS
    altered = {role: {own: dict(row) for own, row in rows.items()}
               for role, rows in original.items()}
    for (role, own), row in changes.items():
        table = altered[role].setdefault(own, {})
        for peer, new in row.items():
            if new is None:
                table.pop(peer, None)
            else:
                table[peer] = new
    machine_module.TRANSITIONS = freeze_transitions(altered)
    try:
        yield
    finally:
        machine_module.TRANSITIONS = original


#: Mutants that change the state tables: name -> (what it breaks, changes).
TABLE_MUTANTS: dict[str, tuple[str, dict[tuple[Role, S], dict[S, S | None]]]] = {
    "trusts-skipped-states": ("connects to a peer that skipped states", {
        (Role.BACKEND, S.CLOSED): {S.CONNECTED: S.INIT_WAIT},
        (Role.FRONTEND, S.INITIALISING): {S.CONNECTED: S.CONNECTED}}),
    "ignores-peer-closing": ("does not follow a peer that closes", {
        (Role.BACKEND, S.INIT_WAIT): {S.CLOSING: None, S.CLOSED: None},
        (Role.FRONTEND, S.CONNECTED): {S.CLOSING: None, S.CLOSED: None}}),
}


@contextmanager
def walk_end_only() -> Iterator[None]:
    """The bug fixed in c96a2be: of a walk of several states only the last is written."""
    original_next, original_check = machine_module.next_state, machine_module.check_transition

    def jump(role: Role, own: S, peer: S) -> S:
        while (step := original_next(role, own, peer)) != own:
            own = step
        return own

    machine_module.next_state = jump  # type: ignore[assignment]
    machine_module.check_transition = lambda role, old, new: None  # type: ignore[assignment]
    try:
        yield
    finally:
        machine_module.next_state = original_next  # type: ignore[assignment]
        machine_module.check_transition = original_check  # type: ignore[assignment]


MUTANT_NAMES = (*HOOK_MUTANTS, *TABLE_MUTANTS, "walk-end-only")


@contextmanager
def mutant(name: str) -> Iterator[AgentSubject]:
    """Yield the subject of mutant ``name`` (table and class patches last as long as the
    context)."""
    if name in HOOK_MUTANTS:
        yield AgentSubject(f"mutant {name}", HOOK_MUTANTS[name][1]())
    elif name in TABLE_MUTANTS:
        with patched_tables(TABLE_MUTANTS[name][1]):
            yield AgentSubject(f"mutant {name}")
    elif name == "walk-end-only":
        with walk_end_only():
            yield AgentSubject(f"mutant {name}")
    else:
        raise KeyError(name)


def main(argv: list[str]) -> int:
    """Run mutant ``argv[1]`` as the ``argv[0]`` role's agent over $XENSTORED_PATH (full
    mode, allowing everything, like the suite's default policy) until SIGTERM; with
    ``--device-log FILE`` it reports its device actions there (docs/conformance.md)."""
    import argparse
    import os
    import signal
    import threading
    from pathlib import Path

    from xenoffload.conformance.subjects import Setup
    from xenoffload.devicelog import DeviceLogEnforcer

    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=[role.value for role in Role])
    parser.add_argument("name", choices=MUTANT_NAMES)
    parser.add_argument("--device-log", type=Path)
    args = parser.parse_args(argv)
    role, log = Role(args.role), args.device_log
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with mutant(args.name) as subject:
        if log is not None:
            # The log records what reaches the device: it wraps the device's own enforcer,
            # under whatever the mutant does to results.
            bug = subject.hooks.enforcer
            subject = attrs.evolve(subject, hooks=attrs.evolve(
                subject.hooks, enforcer=lambda made: (bug or (lambda e: e))(
                    DeviceLogEnforcer(made, log, 1, 0))))
        running = subject.start(Setup(
            role, Mode.FULL, os.environ["XENSTORED_PATH"],
            LinkPolicy(FamilyFlags.both(True), FamilyFlags.both(True)), Path("."), 1, 0))
        while not done.wait(0.1):
            if running.gone() is not None:
                return 1
        running.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
