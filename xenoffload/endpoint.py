"""Endpoint drivers: one vif end = the state machine + a XenStore connection + an enforcer.

:class:`VifEndpoint` reads a :class:`~xenoffload.machine.Snapshot` in one transaction, feeds it
to its :class:`~xenoffload.machine.VifMachine`, and performs the actions: feature keys (and, in
full mode, ``state``) written in one transaction; the negotiated result handed to an
:class:`Enforcer` (kernel toggles, or a device model's own hook); refusals logged.
:func:`backend_endpoint` and :func:`frontend_endpoint` build one for either end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Protocol

import attrs

from xenoffload.machine import (
    Action,
    Enforce,
    Forget,
    Mode,
    Snapshot,
    VifMachine,
    Violation,
    WriteKeys,
)
from xenoffload.negotiation import LinkPolicy, LinkResult, format_result
from xenoffload.paths import VifPaths, parse_backend_dir, parse_frontend_dir
from xenoffload.schema import (
    LEGACY_IPV6_CSUM_OFFLOAD,
    LEGACY_NO_CSUM_OFFLOAD,
    READ_KEYS,
    RESULT_KEY,
    STATUS_KEY,
    Advertisement,
    FamilyFlags,
    Role,
)
from xenoffload.store.base import Store, Transaction, XenStoreError, run_transaction
from xenoffload.xenbus import XenbusState

__all__ = [
    "Enforcement",
    "Enforcer",
    "NoEnforcer",
    "VifEndpoint",
    "PeerLinkError",
    "backend_endpoint",
    "frontend_endpoint",
]

log = logging.getLogger("xenoffload.endpoint")

#: Keys of the own directory a snapshot reads (features, to rewrite only what differs).
_OWN_KEYS = (*READ_KEYS, STATUS_KEY, RESULT_KEY)
#: Refusals remembered per endpoint (to log each once, and bound what a hostile peer costs).
_VIOLATIONS_KEPT = 32
#: Own keys a stock driver of the same end may write too, always re-read: netback and netfront
#: write ``feature-ipv6-csum-offload``; some frontends ``feature-no-csum-offload``.
_SHARED_KEYS = {Role.BACKEND: (LEGACY_IPV6_CSUM_OFFLOAD,),
                Role.FRONTEND: (LEGACY_IPV6_CSUM_OFFLOAD, LEGACY_NO_CSUM_OFFLOAD)}


@attrs.frozen
class Enforcement:
    """What an enforcer achieved for one result: ``status`` is written to the own directory
    (``ok``, or what could not be enforced), ``unsafe`` is True when a direction that must
    compute checksums still may not (reported loudly); ``retry`` is True when the device could
    not be reached and the result must be applied again later."""

    status: str
    unsafe: bool = False
    details: tuple[str, ...] = ()
    retry: bool = False


class Enforcer(Protocol):
    """Makes a device behave as negotiated."""

    def enforce(self, role: Role, result: LinkResult) -> Enforcement:
        """Apply ``result`` for this end's device and say what was achieved."""
        ...


@attrs.frozen
class NoEnforcer:
    """For ends without a kernel device (test peers, conformance): records nothing, reports
    ``ok`` — the caller's ``on_result`` hook is the device model's enforcement."""

    def enforce(self, role: Role, result: LinkResult) -> Enforcement:
        return Enforcement("ok")


class _DirectoryGone(Exception):
    """The own directory vanished before a write (the transaction is aborted)."""


class PeerLinkError(Exception):
    """The own directory names a peer directory that is not the vif's canonical peer."""


def _read_optional(txn: Transaction, path: str) -> bytes | None:
    try:
        return txn.read(path)
    except XenStoreError as error:
        if error.errno_name in ("ENOENT", "EACCES"):
            return None
        raise


@attrs.define
class VifEndpoint:
    """One end of one vif, driven by snapshots. Not thread-safe; one caller drives it."""

    store: Store
    paths: VifPaths
    machine: VifMachine
    enforcer: Enforcer
    own_dir: str
    peer_dir: str
    on_result: Callable[[LinkResult], None] | None = None
    result: LinkResult | None = None
    enforcement: Enforcement | None = None
    gone: bool = False
    violations: list[Violation] = attrs.field(factory=list)
    #: What the own directory's feature and status keys hold, as last read or written by us.
    #: Only this end writes its xenoffload keys, so after the first full read a snapshot
    #: re-reads only the legacy keys a stock driver may also write (:data:`_SHARED_KEYS`).
    own_cache: dict[str, bytes | None] | None = None
    #: The ``state`` value this end last wrote (full mode), to recognise its echo.
    last_written_state: bytes | None = None

    def rebind(self, store: Store) -> None:
        """Use a new connection (after a reconnect): nothing cached is trusted any more."""
        self.store = store
        self.own_cache = None

    @property
    def needs_retry(self) -> bool:
        """True when the last enforcement could not reach the device."""
        return self.enforcement is not None and self.enforcement.retry

    @property
    def role(self) -> Role:
        return self.machine.role

    @property
    def label(self) -> str:
        return f"domid={self.paths.guest_domid} devid={self.paths.devid} {self.role.value}"

    def snapshot(self) -> Snapshot:
        """Read both states and both feature sets in one transaction.

        The peer's feature keys are read only when the peer is Connected (the only time the
        machine uses them); the own keys come from :attr:`own_cache` but for the ones a stock
        driver may write too.
        """
        cache = self.own_cache
        shared = _SHARED_KEYS[self.role]

        def read_all(txn: Transaction) -> Snapshot:
            if cache is None:
                # First look: which of our keys exist at all (one DIRECTORY, which also says
                # whether the device does), then read just those.
                try:
                    present = set(txn.directory(self.own_dir))
                except XenStoreError as error:
                    if error.errno_name not in ("ENOENT", "EACCES"):
                        raise
                    present, own_present = set(), False
                else:
                    own_present = True
                wanted = [name for name in ("state", *_OWN_KEYS) if name in present]
                *values, peer_state = txn.read_many(
                    [*(f"{self.own_dir}/{name}" for name in wanted), f"{self.peer_dir}/state"])
                found = dict(zip(wanted, values, strict=True))
                own_state = found.pop("state", None)
                own_keys = {name: found.get(name) for name in _OWN_KEYS}
            else:
                # Own state, the shared keys and the peer's state: one round trip.
                own_state, *values, peer_state = txn.read_many(
                    [f"{self.own_dir}/state", *(f"{self.own_dir}/{name}" for name in shared),
                     f"{self.peer_dir}/state"])
                own_present = own_state is not None or \
                    _read_optional(txn, self.own_dir) is not None
                own_keys = dict(cache)
                own_keys.update(zip(shared, values, strict=True))
            peer_keys: dict[str, bytes | None] = {}
            if peer_state == XenbusState.CONNECTED.wire:
                peer_keys = dict(zip(READ_KEYS, txn.read_many(
                    [f"{self.peer_dir}/{name}" for name in READ_KEYS]), strict=True))
            return Snapshot(own_state, peer_state, own_keys, peer_keys, self.peer_dir,
                            own_present)

        snapshot = run_transaction(self.store, read_all)
        self.own_cache = dict(snapshot.own_keys)
        return snapshot

    def step(self, changed: Collection[str] | None = None) -> list[Action]:
        """Take a snapshot, run the machine on it, perform its actions; return them.

        ``changed``: the paths watch events named, when the caller knows them. If they are
        all own nodes this end wrote itself (its ``state``, a legacy key) and still hold what
        it wrote, they are the echo of its own writes: one read checks that, and nothing else
        is done.
        """
        if self.gone:
            return []
        if changed and self._only_own_echoes(changed):
            return []
        actions = self.machine.observe(self.snapshot())
        self.perform(actions)
        return actions

    def _only_own_echoes(self, changed: Collection[str]) -> bool:
        expected: dict[str, bytes | None] = {}
        for path in changed:
            directory, _, name = path.rpartition("/")
            if directory != self.own_dir:
                return False
            if name == "state" and self.last_written_state is not None:
                expected[path] = self.last_written_state
            elif name in _SHARED_KEYS[self.role] and self.own_cache is not None:
                expected[path] = self.own_cache.get(name)
            else:
                return False
        paths = sorted(expected)
        return self.store.read_many(paths) == [expected[path] for path in paths]

    def set_policy(self, policy: LinkPolicy) -> list[Action]:
        """Change the policy; re-advertise and re-apply as the machine says. Returns actions."""
        if policy == self.machine.policy:
            return []
        log.info("%s policy %s -> %s", self.label, self.machine.policy.describe(),
                 policy.describe())
        if self.machine.last_snapshot is None:
            self.machine.policy = policy
            return self.step()
        actions = self.machine.set_policy(policy)
        self.perform(actions)
        return actions

    def perform(self, actions: list[Action]) -> None:
        """Carry out the machine's actions. The kernel device is brought in line first, so
        that the status it reached is written in the same transaction as the keys (and, in
        full mode, the state) that announce the result; states a walk passes through are
        written before, each on its own."""
        try:
            announce: dict[str, bytes] = {}
            for action in actions:
                if isinstance(action, Enforce):
                    announce = {STATUS_KEY: self._enforce(action).status.encode(),
                                RESULT_KEY: format_result(action.result)}
                elif isinstance(action, Violation):
                    # One log line per refusal, not one per snapshot that still shows it.
                    if action not in self.violations[-_VIOLATIONS_KEPT:]:
                        log.warning("%s refused: %s path=%s value=%r", self.label,
                                    action.message, action.path, (action.value or b"")[:64])
                    self.violations.append(action)
                    del self.violations[:-_VIOLATIONS_KEPT]
                elif isinstance(action, Forget):
                    self.gone = True
                    self.own_cache = None
                    log.info("%s device removed: %s gone", self.label, self.own_dir)
            writes = [action for action in actions if isinstance(action, WriteKeys)]
            cache = self.own_cache or {}
            announce = {name: value for name, value in announce.items()
                        if cache.get(name) != value}
            if announce:
                last = writes.pop() if writes else WriteKeys({})
                writes.append(WriteKeys({**last.keys, **announce}, last.state))
            for write in writes:
                if self.gone:
                    break
                self._write(write)
        except BaseException:
            # The machine counted the result as applied when it emitted the actions; a store
            # fault cut them short (an Enforce may not have been announced): apply again next
            # time, and re-read the own keys.
            self.machine.applied = None
            self.own_cache = None
            raise

    def _write(self, action: WriteKeys) -> None:
        values = [(f"{self.own_dir}/{name}", value) for name, value in action.keys.items()]
        if action.state is not None:
            values.append((f"{self.own_dir}/state", action.state.wire))

        def write_all(txn: Transaction) -> None:
            # Never re-create a removed device (writes would create the parents): the
            # existence check travels with the writes, and a missing directory aborts.
            if not txn.write_many_if_exists(self.own_dir, values):
                raise _DirectoryGone

        try:
            run_transaction(self.store, write_all)
        except _DirectoryGone:
            self.gone = True
            self.own_cache = None
            log.info("%s device removed before write: %s gone", self.label, self.own_dir)
            return
        if self.own_cache is not None:
            self.own_cache.update(action.keys)
        if action.state is not None:
            self.last_written_state = action.state.wire
        if action.keys:
            log.info("%s wrote %s", self.label,
                     " ".join(f"{k}={v.decode()}" for k, v in sorted(action.keys.items())))
        if action.state is not None:
            log.info("%s state -> %s", self.label, action.state)

    def _enforce(self, action: Enforce) -> Enforcement:
        old = self.result
        self.result = action.result
        log.info("%s negotiated %s (was %s; peer speaks %s)", self.label,
                 action.result.describe(), old.describe() if old else "none",
                 action.peer.source)
        enforcement = self.enforcer.enforce(self.role, action.result)
        if enforcement.unsafe:
            log.error("%s NOT ENFORCED: %s", self.label, "; ".join(enforcement.details))
        elif enforcement.retry:
            log.warning("%s not applied yet (%s): %s", self.label, enforcement.status,
                        "; ".join(enforcement.details))
            self.machine.applied = None  # the next step applies again
        self.enforcement = enforcement
        if self.on_result is not None:
            self.on_result(action.result)
        return enforcement


#: What a Linux netback/netfront device can do: blank checksums both ways, both families.
FULL_CAPABILITY = Advertisement(FamilyFlags.both(True), FamilyFlags.both(True))


def backend_endpoint(
    store: Store,
    backend_domid: int,
    guest_domid: int,
    devid: int,
    policy: LinkPolicy,
    enforcer: Enforcer | None = None,
    mode: Mode = Mode.COMPANION,
    capability: Advertisement = FULL_CAPABILITY,
) -> VifEndpoint:
    """Return the backend end of vif ``guest_domid``/``devid`` served by ``backend_domid``.

    The frontend directory is the one the toolstack recorded in the backend's ``frontend``
    key; it must be the vif's canonical frontend directory, else PeerLinkError (a guest cannot
    write that key, but a broken toolstack could, and following it would act on another
    guest's device). A missing ``frontend`` key means the canonical directory.
    """
    paths = VifPaths(backend_domid, guest_domid, devid)
    recorded = store.try_read(f"{paths.backend_dir}/frontend")
    if recorded is not None:
        parsed = parse_frontend_dir(recorded.decode("ascii", "replace"))
        if parsed != (guest_domid, devid):
            raise PeerLinkError(f"{paths.backend_dir}/frontend = {recorded[:200]!r} is not "
                                f"{paths.frontend_dir}")
    machine = VifMachine(Role.BACKEND, mode, policy, capability)
    return VifEndpoint(store, paths, machine, enforcer or NoEnforcer(), paths.backend_dir,
                       paths.frontend_dir)


def frontend_endpoint(
    store: Store,
    guest_domid: int,
    devid: int,
    policy: LinkPolicy,
    enforcer: Enforcer | None = None,
    mode: Mode = Mode.COMPANION,
    capability: Advertisement = FULL_CAPABILITY,
    backend_domid: int | None = None,
) -> VifEndpoint:
    """Return the frontend end of vif ``devid`` in guest ``guest_domid``.

    The backend directory is read from the frontend's ``backend`` key; it must be a canonical
    backend directory for this guest and devid (PeerLinkError otherwise).
    """
    frontend_dir = VifPaths(0, guest_domid, devid).frontend_dir
    recorded = store.try_read(f"{frontend_dir}/backend")
    if recorded is None:
        if backend_domid is None:
            raise PeerLinkError(f"{frontend_dir}/backend is missing")
        paths = VifPaths(backend_domid, guest_domid, devid)
    else:
        parsed = parse_backend_dir(recorded.decode("ascii", "replace"))
        if parsed is None or parsed[1:] != (guest_domid, devid) or (
                backend_domid is not None and parsed[0] != backend_domid):
            raise PeerLinkError(f"{frontend_dir}/backend = {recorded[:200]!r} is not a "
                                f"backend directory of this vif")
        paths = VifPaths(parsed[0], guest_domid, devid)
    machine = VifMachine(Role.FRONTEND, mode, policy, capability)
    return VifEndpoint(store, paths, machine, enforcer or NoEnforcer(), paths.frontend_dir,
                       paths.backend_dir)


def negotiated_state(endpoint: VifEndpoint) -> tuple[XenbusState, XenbusState]:
    """Return (own, peer) XenbusState as the endpoint last saw them."""
    return endpoint.machine.own_state, endpoint.machine.peer_state
