"""Endpoint drivers: one vif end (its machine, its two directories, an enforcer), and the
stepper that performs many ends' steps on one XenStore connection in a few round trips.

A step of one end is one XenStore transaction: read both ``state`` nodes (and, when the
machine needs them, the own keys and the peer's feature keys), let the
:class:`~xenoffload.machine.VifMachine` decide, bring the kernel device in line with the
result (:class:`Enforcer`), write the own keys, the status and result it announces and (full
mode) the new ``state`` in the same transaction, commit, and only then tell the machine that it
happened. The device is changed before the commit, so that the status written says what the
device does and an end that stops accepting blank checksums protects itself before its peer
can read the refusal (make before break). A conflicting commit (EAGAIN) changes nothing in the
store, but the device may have changed: the machine is told that its device is unknown
(:meth:`~xenoffload.machine.VifMachine.device_unknown`), and the step again, from a fresh
snapshot, enforces whatever it decides.

:func:`run_steps` does this for any number of ends at once: every end gets its own
transaction, and each phase (start, reads, writes, end) of all of them is sent before the
first reply is awaited, so a batch of 1,000 vifs costs a handful of round trips, not 1,000
times as many. :func:`backend_endpoint` and :func:`frontend_endpoint` build an end.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import attrs

from xenoffload.machine import (
    TRACKED_KEYS,
    Mode,
    Snapshot,
    Step,
    VifMachine,
    Violation,
    needs_peer_keys,
)
from xenoffload.negotiation import LinkPolicy, LinkResult
from xenoffload.paths import VifPaths, parse_backend_dir, parse_frontend_dir
from xenoffload.schema import READ_KEYS, Advertisement, FamilyFlags, Role
from xenoffload.store.base import Store, StoreUnavailable, Transaction, WriteGroup, XenStoreError
from xenoffload.xenbus import XenbusState

__all__ = [
    "Enforcement",
    "Enforcer",
    "NoEnforcer",
    "Notice",
    "PeerLinkError",
    "StepKind",
    "VifEndpoint",
    "backend_endpoint",
    "frontend_endpoint",
    "run_steps",
]

log = logging.getLogger("xenoffload.endpoint")

#: Refusals remembered per endpoint (to log each once, and bound what a hostile peer costs).
_VIOLATIONS_KEPT = 32
#: Commits of one end that may conflict (EAGAIN) in a row within one :func:`run_steps` call
#: before it is left for later (the caller retries it after a pause).
STEP_ATTEMPTS = 8


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


class PeerLinkError(Exception):
    """The own directory names a peer directory that is not the vif's canonical peer."""


class StepKind(enum.Enum):
    """What a step starts from."""

    #: Read a snapshot and decide from it (an event named the vif, a retry, a rescan).
    OBSERVE = "observe"
    #: Only the policy changed: decide from what the machine knows, checking in the same
    #: transaction that the own state still is what it believes (else observe instead).
    RECOMPUTE = "recompute"


class Notice(enum.Enum):
    """What a watch event means for one end."""

    ECHO = "echo"        # the echo of the end's own committed write: nothing to do
    STEP = "step"        # something changed: observe
    RENEW = "renew"      # the own directory itself changed (removed, re-created): start afresh


@attrs.define(eq=False)
class VifEndpoint:
    """One end of one vif. Not thread-safe; one caller drives it."""

    store: Store
    paths: VifPaths
    machine: VifMachine
    enforcer: Enforcer
    own_dir: str
    peer_dir: str
    on_result: Callable[[LinkResult], None] | None = None
    enforcement: Enforcement | None = None
    gone: bool = False
    violations: list[Violation] = attrs.field(factory=list)
    #: Own nodes written by committed steps whose watch events have not come back yet.
    echoes: collections.Counter[str] = attrs.field(factory=collections.Counter)
    #: The result last enforced by a committed step (the log names a result when it changes).
    logged_result: LinkResult | None = None

    @property
    def role(self) -> Role:
        return self.machine.role

    @property
    def result(self) -> LinkResult | None:
        """The result last decided (both ends Connected), whether or not it could be applied."""
        return self.machine.result

    @property
    def needs_retry(self) -> bool:
        """True when the last enforcement could not reach the device."""
        return self.enforcement is not None and self.enforcement.retry

    @property
    def label(self) -> str:
        return f"domid={self.paths.guest_domid} devid={self.paths.devid} {self.role.value}"

    def rebind(self, store: Store) -> None:
        """Use a new connection (after a reconnect): nothing remembered of the store holds."""
        self.store = store
        self.echoes.clear()
        self.machine.lost_track()

    def notice(self, path: str) -> Notice:
        """A watch event named ``path`` (in the own or the peer directory): return what the
        end must do about it. Own writes come back as events; each is recognised once, by
        count, so a foreign write of the same node (a second event) is never mistaken for an
        echo. A foreign change of a tracked own key makes the machine re-read its keys."""
        if self.echoes[path] > 0:
            self.echoes[path] -= 1
            if not self.echoes[path]:
                del self.echoes[path]
            return Notice.ECHO
        if path == self.own_dir or self.own_dir.startswith(path + "/"):
            return Notice.RENEW
        directory, _, name = path.rpartition("/")
        if directory == self.own_dir and name in TRACKED_KEYS:
            self.machine.lost_track()
        return Notice.STEP

    def set_policy(self, policy: LinkPolicy) -> bool:
        """Change the policy; return True when the end must step (:attr:`StepKind.RECOMPUTE`)."""
        if policy == self.machine.policy:
            return False
        if log.isEnabledFor(logging.INFO):
            log.info("%s policy %s -> %s", self.label, self.machine.policy.describe(),
                     policy.describe())
        return self.machine.set_policy(policy)

    def step(self, kind: StepKind = StepKind.OBSERVE) -> bool:
        """Step this end alone (:func:`run_steps`); return True if it must be retried later."""
        return bool(run_steps(self.store, {self: kind}))

    # ------------------------------------------------------------------ reporting

    def refused(self, violations: Iterable[Violation]) -> None:
        """Log each refusal once (not once per snapshot that still shows it)."""
        for violation in violations:
            if violation not in self.violations[-_VIOLATIONS_KEPT:]:
                where = self.peer_dir if violation.in_peer_directory else self.own_dir
                log.warning("%s refused: %s path=%s value=%r", self.label, violation.message,
                            f"{where}/{violation.key}" if violation.key else where,
                            (violation.value or b"")[:64])
            self.violations.append(violation)
        del self.violations[:-_VIOLATIONS_KEPT]

    def enforce(self, result: LinkResult) -> Enforcement:
        """Bring the device in line with ``result``; log what could not be done once."""
        enforcement = self.enforcer.enforce(self.role, result)
        changed = self.enforcement is None or self.enforcement.status != enforcement.status
        if enforcement.unsafe and changed:
            log.error("%s NOT ENFORCED: %s", self.label, "; ".join(enforcement.details))
        elif enforcement.retry and changed:
            log.warning("%s not applied yet (%s): %s; retrying with backoff", self.label,
                        enforcement.status, "; ".join(enforcement.details))
        self.enforcement = enforcement
        return enforcement

    def committed(self, step: Step, written: Mapping[str, bytes],
                  enforcement: Enforcement | None) -> None:
        """Tell the machine that ``step`` committed with ``written``; count the echoes to
        come; log the decisions."""
        applied = enforcement is None or not enforcement.retry
        self.machine.committed(step, written, applied)
        for name in written:
            self.echoes[f"{self.own_dir}/{name}"] += 1
        if step.state is not None:
            self.echoes[f"{self.own_dir}/state"] += 1
        if log.isEnabledFor(logging.INFO):  # the lines below cost more than the step
            self._log_committed(step, written)
        if step.enforce is not None:
            self.logged_result = step.enforce
        if step.enforce is not None and self.on_result is not None:
            self.on_result(step.enforce)
        if step.forget:
            self.gone = True
            log.info("%s device removed: %s gone", self.label, self.own_dir)


    def _log_committed(self, step: Step, written: Mapping[str, bytes]) -> None:
        if written:
            log.info("%s wrote %s", self.label,
                     " ".join(f"{k}={v.decode('ascii', 'replace')}"
                              for k, v in sorted(written.items())))
        if step.state is not None:
            log.info("%s state -> %s", self.label, step.state)
        if step.enforce is not None and step.enforce != self.logged_result:
            peer = step.peer.source if step.peer is not None else "nothing"
            log.info("%s negotiated %s (was %s; peer speaks %s)", self.label,
                     step.enforce.describe(),
                     self.logged_result.describe() if self.logged_result else "none", peer)


# ---------------------------------------------------------------------------- the stepper


@attrs.define(eq=False)
class _Work:
    """One end's step in one round of :func:`run_steps`."""

    endpoint: VifEndpoint
    kind: StepKind
    txn: Transaction | None = None
    own_state: bytes | None = None
    peer_state: bytes | None = None
    listing: list[str] | None = None
    listed: bool = False
    own_keys: dict[str, bytes | None] | None = None
    peer_keys: dict[str, bytes | None] = attrs.field(factory=dict)
    step: Step | None = None
    enforcement: Enforcement | None = None
    written: dict[str, bytes] = attrs.field(factory=dict)
    writing: bool = False
    #: Observe again in the next round (the walk goes on, or this round's view was stale).
    again: bool = False


def run_steps(store: Store, work: Mapping[VifEndpoint, StepKind],
              attempts: int = STEP_ATTEMPTS) -> list[VifEndpoint]:
    """Step every end of ``work`` (all on ``store``) until each has committed a step that
    needs no other, pipelining the ends' requests. Returns the ends left for later: their
    commits conflicted ``attempts`` times in a row, or a store error singled them out (it is
    logged). Raises StoreUnavailable when the connection is lost."""
    pending = {endpoint: kind for endpoint, kind in work.items() if not endpoint.gone}
    conflicts: collections.Counter[VifEndpoint] = collections.Counter()
    moves: collections.Counter[VifEndpoint] = collections.Counter()
    left: list[VifEndpoint] = []
    while pending:
        batch = [_Work(endpoint, kind) for endpoint, kind in pending.items()]
        pending = {}
        try:
            again = _round(store, batch)
        except XenStoreError as error:
            if len(batch) == 1:
                log.warning("%s step failed: %s; retrying later", batch[0].endpoint.label,
                            error)
                batch[0].endpoint.machine.lost_track()
                left.append(batch[0].endpoint)
                continue
            # One end's request failed: step each alone to find it.
            for item in batch:
                left.extend(run_steps(store, {item.endpoint: StepKind.OBSERVE}, attempts))
            continue
        for item, conflicted in again:
            endpoint = item.endpoint
            (conflicts if conflicted else moves)[endpoint] += 1
            if conflicts[endpoint] >= attempts:
                log.warning("%s commit conflicted (EAGAIN) %d times in a row; retrying later",
                            endpoint.label, conflicts[endpoint])
                left.append(endpoint)
            elif moves[endpoint] > len(XenbusState):
                log.error("%s did not settle after %d moves (a bug); retrying later",
                          endpoint.label, moves[endpoint])
                left.append(endpoint)
            else:
                pending[endpoint] = StepKind.OBSERVE
    return left


def _round(store: Store, batch: Sequence[_Work]) -> list[tuple[_Work, bool]]:
    """One pipelined round; return the ends to step again and whether because of a
    conflict (True) or because their walk goes on or their view was stale (False)."""
    txns = store.start_transactions(len(batch))
    for item, txn in zip(batch, txns, strict=True):
        item.txn = txn
    try:
        _read_states(store, batch)
        _read_keys(store, batch)
        for item in batch:
            _decide(item)
        writes = [item for item in batch if _has_writes(item)]
        for item in writes:
            item.writing = True
        if writes:
            store.write_batch([WriteGroup(item.txn, _values(item)) for item in writes])
    except BaseException:
        _device_unknown(batch)
        _abort_quietly(store, batch)
        raise
    try:
        commits = store.end_transactions([(_txn(item), item.writing) for item in batch])
    except BaseException:
        _device_unknown(batch)  # committed or not, nobody can tell: enforce again
        raise
    again: list[tuple[_Work, bool]] = []
    for item, committed in zip(batch, commits, strict=True):
        if item.step is None or (item.writing and not committed):
            _device_unknown([item])
            again.append((item, item.step is not None))
            continue
        item.endpoint.committed(item.step, item.written, item.enforcement)
        if item.step.again or item.again:
            again.append((item, False))
    return again


def _device_unknown(batch: Iterable[_Work]) -> None:
    """The ends of ``batch`` that enforced a result in a step that did not commit: their
    devices may now carry a decision the store never saw; the next step enforces again."""
    for item in batch:
        if item.enforcement is not None:
            item.endpoint.machine.device_unknown()


def _read_states(store: Store, batch: Sequence[_Work]) -> None:
    requests: list[tuple[Transaction | None, str]] = []
    for item in batch:
        requests.append((item.txn, f"{item.endpoint.own_dir}/state"))
        if item.kind is StepKind.OBSERVE:
            requests.append((item.txn, f"{item.endpoint.peer_dir}/state"))
    values = iter(store.read_batch(requests))
    listings = [item for item in batch
                if item.kind is StepKind.OBSERVE and not item.endpoint.machine.knows_own_keys]
    for item in batch:
        item.own_state = next(values)
        if item.kind is StepKind.OBSERVE:
            item.peer_state = next(values)
    if listings:
        found = store.directory_batch([(item.txn, item.endpoint.own_dir) for item in listings])
        for item, listing in zip(listings, found, strict=True):
            item.listing, item.listed = listing, True


def _read_keys(store: Store, batch: Sequence[_Work]) -> None:
    requests: list[tuple[Transaction | None, str]] = []
    plans: list[tuple[_Work, list[str], list[str]]] = []
    for item in batch:
        if item.kind is not StepKind.OBSERVE:
            continue
        own = [name for name in TRACKED_KEYS if name in (item.listing or ())]
        peer = list(READ_KEYS) if needs_peer_keys(item.peer_state) else []
        requests += [(item.txn, f"{item.endpoint.own_dir}/{name}") for name in own]
        requests += [(item.txn, f"{item.endpoint.peer_dir}/{name}") for name in peer]
        plans.append((item, own, peer))
    values = iter(store.read_batch(requests) if requests else [])
    for item, own, peer in plans:
        if item.listed:
            read = {name: next(values) for name in own}
            item.own_keys = {name: read.get(name) for name in TRACKED_KEYS}
        item.peer_keys = {name: next(values) for name in peer}


def _decide(item: _Work) -> None:
    endpoint, machine = item.endpoint, item.endpoint.machine
    if item.kind is StepKind.RECOMPUTE:
        step = machine.recompute()
        if step is None or item.own_state != step.own_state.wire:
            item.again = True  # the store moved on, or nothing is known: observe instead
            return
    else:
        present = item.own_state is not None or item.listing is not None
        if not present and not item.listed:
            machine.lost_track()  # no state node: list the directory to tell
            item.again = True
            return
        step = machine.observe(Snapshot(item.own_state, item.peer_state, item.peer_keys,
                                        item.own_keys, present))
        endpoint.refused(step.violations)
    item.step = step
    if step.enforce is not None:
        item.enforcement = endpoint.enforce(step.enforce)
    status = item.enforcement.status if item.enforcement is not None else None
    item.written = {**step.writes, **machine.announcement(step, status)}


def _has_writes(item: _Work) -> bool:
    return item.step is not None and not item.step.forget and (
        bool(item.written) or item.step.state is not None)


def _values(item: _Work) -> list[tuple[str, bytes]]:
    assert item.step is not None
    own_dir = item.endpoint.own_dir
    values = [(f"{own_dir}/{name}", value) for name, value in item.written.items()]
    if item.step.state is not None:
        values.append((f"{own_dir}/state", item.step.state.wire))
    return values


def _txn(item: _Work) -> Transaction:
    assert item.txn is not None
    return item.txn


def _abort_quietly(store: Store, batch: Sequence[_Work]) -> None:
    txns = [(item.txn, False) for item in batch if item.txn is not None]
    with contextlib.suppress(XenStoreError, StoreUnavailable):
        store.end_transactions(txns)


# ---------------------------------------------------------------------------- building ends


#: What a Linux netback/netfront device can do: blank checksums both ways, both families.
FULL_CAPABILITY = Advertisement(FamilyFlags.both(True), FamilyFlags.both(True))


def backend_endpoint(
    store: Store,
    paths: VifPaths,
    recorded_frontend: bytes | None,
    policy: LinkPolicy,
    enforcer: Enforcer | None = None,
    mode: Mode = Mode.COMPANION,
    capability: Advertisement = FULL_CAPABILITY,
) -> VifEndpoint:
    """Return the backend end of the vif at ``paths``. ``recorded_frontend`` is the
    backend's ``frontend`` key (None: absent, meaning the canonical directory); anything but
    the vif's canonical frontend directory raises PeerLinkError (a guest cannot write that
    key, but a broken toolstack could, and following it would act on another guest's
    device)."""
    if recorded_frontend is not None:
        parsed = parse_frontend_dir(recorded_frontend.decode("ascii", "replace"))
        if parsed != (paths.guest_domid, paths.devid):
            raise PeerLinkError(f"{paths.backend_dir}/frontend = {recorded_frontend[:200]!r} "
                                f"is not {paths.frontend_dir}")
    machine = VifMachine(Role.BACKEND, mode, policy, capability)
    return VifEndpoint(store, paths, machine, enforcer or NoEnforcer(), paths.backend_dir,
                       paths.frontend_dir)


def frontend_endpoint(
    store: Store,
    guest_domid: int,
    devid: int,
    recorded_backend: bytes | None,
    policy: LinkPolicy,
    enforcer: Enforcer | None = None,
    mode: Mode = Mode.COMPANION,
    capability: Advertisement = FULL_CAPABILITY,
    backend_domid: int | None = None,
) -> VifEndpoint:
    """Return the frontend end of vif ``devid`` in guest ``guest_domid``. The backend
    directory is ``recorded_backend`` (the frontend's ``backend`` key): it must be a canonical
    backend directory of this guest and devid, and of ``backend_domid`` when that is given
    (PeerLinkError otherwise; a missing key is allowed only with ``backend_domid``)."""
    frontend_dir = VifPaths(0, guest_domid, devid).frontend_dir
    if recorded_backend is None:
        if backend_domid is None:
            raise PeerLinkError(f"{frontend_dir}/backend is missing")
        paths = VifPaths(backend_domid, guest_domid, devid)
    else:
        parsed = parse_backend_dir(recorded_backend.decode("ascii", "replace"))
        if parsed is None or parsed[1:] != (guest_domid, devid) or (
                backend_domid is not None and parsed[0] != backend_domid):
            raise PeerLinkError(f"{frontend_dir}/backend = {recorded_backend[:200]!r} is not "
                                f"a backend directory of this vif")
        paths = VifPaths(parsed[0], guest_domid, devid)
    machine = VifMachine(Role.FRONTEND, mode, policy, capability)
    return VifEndpoint(store, paths, machine, enforcer or NoEnforcer(), paths.frontend_dir,
                       paths.backend_dir)
