"""The negotiation state machine of one vif end, as explicit tables. Sans-I/O.

Everything that decides XenbusState transitions and when feature keys are written or results
applied lives in this file. The tables are written per role (backend, frontend) but the machine
that runs them does not care which role it plays: both ends are judged by the same rules.

The machine is *level-triggered*: it is fed :class:`Snapshot` observations (what the own and
the peer directory hold now, read in one transaction) and answers with a :class:`Step`: what to
write, what to enforce, what was refused. It changes nothing of its own state until the driver
reports that the step's transaction committed (:meth:`VifMachine.committed`); a step whose
transaction conflicted is simply dropped and the driver observes again. Duplicated, late or
coalesced watch events therefore cannot confuse it; the same snapshot twice yields no write.

Everything the machine believes about the store is either read in the snapshot or was written
by its own committed steps; the driver tells it when that belief may be stale
(:meth:`VifMachine.lost_track`: a foreign write into the own directory, a removed and re-created
directory, a new connection), and the next snapshot reads the own keys again. So the keys an
end advertises always follow from its policy and what the store actually holds.

Two modes:

* ``FULL``: the machine owns the device's ``state`` node; its transitions come from
  :data:`TRANSITIONS` and are written together with the feature keys in one transaction.
* ``COMPANION``: a kernel driver owns ``state``; the machine never writes it. It writes its
  feature keys in the windows where the kernel driver (or the peer) reads them, and applies the
  result through kernel toggles.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from xenoffload.negotiation import LinkPolicy, LinkResult, advertise, decide, format_result
from xenoffload.schema import (
    READ_KEYS,
    RESULT_KEY,
    STATUS_KEY,
    Advertisement,
    FamilyFlags,
    ParsedAdvertisement,
    Role,
    parse_advertisement,
    render_advertisement,
)
from xenoffload.xenbus import XenbusState, parse_state

__all__ = [
    "Mode",
    "Snapshot",
    "Step",
    "Violation",
    "ViolationKind",
    "IllegalTransition",
    "LEGAL_TRANSITIONS",
    "TRANSITIONS",
    "Transitions",
    "freeze_transitions",
    "TRACKED_KEYS",
    "VifMachine",
    "advertise_window",
    "check_transition",
    "next_state",
    "apply_window",
    "needs_peer_keys",
    "walk",
]

S = XenbusState

#: A full-mode transition table: role -> own state -> peer state -> next own state.
Transitions = Mapping[Role, Mapping[XenbusState, Mapping[XenbusState, XenbusState]]]


def freeze_transitions(table: Transitions) -> Transitions:
    """Return ``table`` as read-only mappings (the tables cannot be changed at run time; a
    test that needs other tables builds them with this and puts them in place)."""
    return MappingProxyType({role: MappingProxyType({own: MappingProxyType(dict(row))
                                                     for own, row in rows.items()})
                             for role, rows in table.items()})



class Mode(enum.Enum):
    """Who owns the device's ``state`` node."""

    FULL = "full"
    COMPANION = "companion"


# --------------------------------------------------------------------------------------------
# Table 1: the transitions of an end's own state that the protocol permits. Used to judge the
# peer (an illegal peer transition is reported, never trusted) and the kernel driver in
# companion mode, and to check the machine's own moves. A node vanishing (→ UNKNOWN) and a
# device being created (UNKNOWN → INITIALISING) are always legal.
LEGAL_TRANSITIONS: Mapping[Role, frozenset[tuple[XenbusState, XenbusState]]] = MappingProxyType({
    Role.BACKEND: frozenset({
        (S.INITIALISING, S.INIT_WAIT),
        (S.INITIALISING, S.CLOSING),
        (S.INIT_WAIT, S.CONNECTED),
        (S.INIT_WAIT, S.CLOSING),
        (S.CONNECTED, S.CLOSING),
        (S.CONNECTED, S.RECONFIGURING),
        (S.RECONFIGURING, S.RECONFIGURED),
        (S.RECONFIGURED, S.CONNECTED),
        (S.RECONFIGURING, S.CLOSING),
        (S.RECONFIGURED, S.CLOSING),
        (S.CLOSING, S.CLOSED),
        (S.CLOSED, S.INIT_WAIT),
        (S.CLOSED, S.INITIALISING),
    }),
    Role.FRONTEND: frozenset({
        (S.INITIALISING, S.INIT_WAIT),
        (S.INITIALISING, S.INITIALISED),
        (S.INITIALISING, S.CONNECTED),
        (S.INITIALISING, S.CLOSING),
        (S.INITIALISING, S.CLOSED),
        (S.INIT_WAIT, S.INITIALISED),
        (S.INIT_WAIT, S.CONNECTED),
        (S.INIT_WAIT, S.CLOSING),
        (S.INITIALISED, S.CONNECTED),
        (S.INITIALISED, S.CLOSING),
        (S.INITIALISED, S.CLOSED),
        (S.CONNECTED, S.CLOSING),
        (S.CONNECTED, S.CLOSED),
        (S.CONNECTED, S.RECONFIGURING),
        (S.RECONFIGURING, S.RECONFIGURED),
        (S.RECONFIGURED, S.CONNECTED),
        (S.CLOSING, S.CLOSED),
        (S.CLOSED, S.INITIALISING),
    }),
})

# --------------------------------------------------------------------------------------------
# Table 2: full mode. own state -> peer state -> next own state. A pair not listed means "stay".
# One observation makes one move; the driver observes again after it committed, so a walk of
# several moves (Connected, peer restarted -> Closing -> Closed -> InitWait) writes each state
# in its own transaction, and every move is legal (tests check the table against Table 1).
TRANSITIONS: Transitions = freeze_transitions({
    Role.BACKEND: {
        # A new backend writes its features and waits for the frontend, whatever it is doing.
        S.INITIALISING: {peer: S.INIT_WAIT for peer in XenbusState},
        S.INIT_WAIT: {
            S.CONNECTED: S.CONNECTED,     # frontend connected: read its features, connect
            S.CLOSING: S.CLOSING,
            S.CLOSED: S.CLOSING,
        },
        S.CONNECTED: {
            S.INITIALISING: S.CLOSING,    # frontend restarted under us (guest reboot)
            S.CLOSING: S.CLOSING,
            S.CLOSED: S.CLOSING,
            S.UNKNOWN: S.CLOSING,         # frontend directory gone
        },
        S.CLOSING: {
            S.INITIALISING: S.CLOSED,
            S.CLOSING: S.CLOSED,
            S.CLOSED: S.CLOSED,
            S.UNKNOWN: S.CLOSED,
        },
        S.CLOSED: {
            S.INITIALISING: S.INIT_WAIT,  # frontend back: renegotiate from scratch
        },
    },
    Role.FRONTEND: {
        S.INITIALISING: {
            S.INIT_WAIT: S.CONNECTED,     # backend ready: write features (same txn), connect
            S.CLOSING: S.CLOSED,
            S.CLOSED: S.CLOSED,
        },
        S.CONNECTED: {
            # A backend back in InitWait (restarted) finds us Connected and connects again:
            # nothing to do here, as netfront does.
            S.CLOSING: S.CLOSED,
            S.CLOSED: S.CLOSED,
            S.UNKNOWN: S.CLOSED,          # backend directory gone
        },
        S.CLOSING: {
            S.CLOSING: S.CLOSED,
            S.CLOSED: S.CLOSED,
            S.UNKNOWN: S.CLOSED,
        },
        S.CLOSED: {
            S.INIT_WAIT: S.INITIALISING,  # backend waits again: renegotiate from scratch
        },
    },
})


def next_state(role: Role, own: XenbusState, peer: XenbusState) -> XenbusState:
    """Return where a full-mode end of ``role`` in ``own`` goes next when its peer is in
    ``peer`` (one move; ``own`` itself means stay)."""
    return TRANSITIONS[role].get(own, {}).get(peer, own)


def walk(role: Role, own: XenbusState, peer: XenbusState) -> tuple[XenbusState, ...]:
    """Return every own state a full-mode end passes through, from ``own`` until nothing
    changes while the peer stays in ``peer``. Raises IllegalTransition for a move outside
    Table 1 and RuntimeError if the table loops (both are bugs of the tables)."""
    path = [own]
    while (step := next_state(role, path[-1], peer)) != path[-1]:
        check_transition(role, path[-1], step)
        if step in path:
            raise RuntimeError(f"{role.value}: Table 2 loops at {path} -> {step} "
                               f"(peer {peer})")
        path.append(step)
    return tuple(path)


def advertise_window(role: Role, own: XenbusState, peer: XenbusState) -> bool:
    """Return whether an end's feature keys must be present now.

    Backend: from InitWait on (netback writes its keys before InitWait; the frontend reads them
    when it sees InitWait). Frontend: once the backend waits for it, and while connected
    (netback reads the frontend's keys when the frontend reaches Connected). Outside the window
    the keys are left alone.
    """
    if role is Role.BACKEND:
        return own in (S.INIT_WAIT, S.CONNECTED)
    if own is S.CONNECTED:
        return True
    return own in (S.INITIALISING, S.INIT_WAIT, S.INITIALISED) and peer in (
        S.INIT_WAIT, S.CONNECTED)


def apply_window(own: XenbusState, peer: XenbusState) -> bool:
    """Return whether the negotiated result is in force: both ends Connected."""
    return own is S.CONNECTED and peer is S.CONNECTED


def needs_peer_keys(peer_state: bytes | None) -> bool:
    """Return whether a snapshot must read the peer's feature keys: only a Connected peer's
    keys are used (they decide the result)."""
    return peer_state == S.CONNECTED.wire


# --------------------------------------------------------------------------------------------
# Observations, steps and the machine.

#: Keys of its own directory an end keeps track of: what it advertises (its own and the legacy
#: keys) and what it announces (status, result).
TRACKED_KEYS: tuple[str, ...] = (*READ_KEYS, STATUS_KEY, RESULT_KEY)


@attrs.frozen
class Snapshot:
    """What one end observes of its vif, read in one transaction.

    ``own_state``/``peer_state`` are the raw ``state`` node values (None: node absent).
    ``peer_keys`` maps each of the peer's feature keys to its raw value (None: absent); it is
    read only when :func:`needs_peer_keys` says so, and empty otherwise. ``own_keys`` maps each
    of :data:`TRACKED_KEYS` to its raw value when the machine asked for them
    (:attr:`VifMachine.knows_own_keys` False), else None. ``own_present`` is False when the own
    directory has gone (device removed).
    """

    own_state: bytes | None
    peer_state: bytes | None
    peer_keys: Mapping[str, bytes | None] = attrs.field(factory=dict)
    own_keys: Mapping[str, bytes | None] | None = None
    own_present: bool = True


class ViolationKind(enum.Enum):
    """Why something was refused."""

    PEER_STATE_MALFORMED = "peer state is not a XenbusState; read as Closed"
    PEER_SKIPPED_STATES = "peer moved outside the legal transitions"
    PEER_VALUE_REFUSED = "peer value refused; its advertisement read as the safe one"
    OWN_STATE_MALFORMED = "own state is not a XenbusState"
    DRIVER_ILLEGAL_MOVE = "the kernel driver moved outside the legal transitions"


@attrs.frozen
class Violation:
    """Something the peer (or a kernel driver) did is outside the protocol; logged, then the
    safe interpretation is used. ``key`` names the node in the directory the kind speaks of
    (the peer's, or the own one for OWN_STATE_MALFORMED and DRIVER_ILLEGAL_MOVE)."""

    kind: ViolationKind
    detail: str
    key: str | None = None
    value: bytes | None = None

    @property
    def in_peer_directory(self) -> bool:
        return self.kind in (ViolationKind.PEER_STATE_MALFORMED,
                             ViolationKind.PEER_SKIPPED_STATES, ViolationKind.PEER_VALUE_REFUSED)

    @property
    def message(self) -> str:
        return f"{self.kind.value}: {self.detail}"


@attrs.frozen(kw_only=True)
class Step:
    """What one observation asks the driver to do, and what the machine adopts once the
    driver reports that it was done (:meth:`VifMachine.committed`).

    ``writes``: own feature keys to write (only those that differ from what the store holds);
    ``state``: the own ``state`` to write in the same transaction (full mode), or None;
    ``enforce``: a result to bring the device in line with, or None; ``violations``: refusals
    to log; ``forget``: the own directory is gone; ``again``: the walk goes on, observe again
    as soon as this step committed. The remaining fields are the machine state to adopt.
    """

    writes: Mapping[str, bytes]
    state: XenbusState | None
    enforce: LinkResult | None
    violations: tuple[Violation, ...]
    forget: bool
    again: bool
    own_state: XenbusState
    peer_state: XenbusState
    own_keys: Mapping[str, bytes | None]
    peer: ParsedAdvertisement | None
    result: LinkResult | None

    @property
    def idle(self) -> bool:
        """True when the step asks for nothing (no write, no enforcement, nothing forgotten)."""
        return not (self.writes or self.state is not None or self.enforce is not None
                    or self.forget or self.again)


class IllegalTransition(Exception):
    """A move is not in :data:`LEGAL_TRANSITIONS`."""

    def __init__(self, role: Role, old: XenbusState, new: XenbusState) -> None:
        self.role = role
        self.old = old
        self.new = new
        super().__init__(f"{role.value}: illegal XenbusState transition {old} -> {new}")


def is_legal(role: Role, old: XenbusState, new: XenbusState) -> bool:
    """Return whether an end of ``role`` may move ``old`` -> ``new`` (staying, a node vanishing
    and a device being created are always legal)."""
    if old == new or new is S.UNKNOWN or old is S.UNKNOWN:
        return True
    return (old, new) in LEGAL_TRANSITIONS[role]


def check_transition(role: Role, old: XenbusState, new: XenbusState) -> None:
    """Raise IllegalTransition unless an end of ``role`` may move ``old`` -> ``new``."""
    if not is_legal(role, old, new):
        raise IllegalTransition(role, old, new)


_NOTHING_KNOWN: Mapping[str, bytes | None] = {}


@attrs.define
class VifMachine:
    """One end of one vif: turns snapshots and policy changes into steps.

    ``capability`` is what this end's device can do; ``policy`` caps it. The machine holds
    every piece of protocol state of the end: the own and peer states last seen, what its
    tracked own keys hold (None: unknown, the next snapshot reads them), the peer's last
    advertisement, and the result last applied. Only :meth:`committed`, :meth:`set_policy`,
    :meth:`lost_track` and :meth:`device_unknown` change it.
    """

    role: Role = attrs.field(on_setattr=attrs.setters.frozen)
    mode: Mode = attrs.field(on_setattr=attrs.setters.frozen)
    _policy: LinkPolicy = attrs.field(alias="policy")
    capability: Advertisement = attrs.field(
        default=Advertisement(FamilyFlags.both(True), FamilyFlags.both(True)),
        on_setattr=attrs.setters.frozen)
    _own_state: XenbusState = attrs.field(default=S.UNKNOWN, init=False)
    _peer_state: XenbusState = attrs.field(default=S.UNKNOWN, init=False)
    _own_keys: Mapping[str, bytes | None] | None = attrs.field(default=None, init=False)
    _peer: ParsedAdvertisement | None = attrs.field(default=None, init=False)
    _applied: LinkResult | None = attrs.field(default=None, init=False)
    _result: LinkResult | None = attrs.field(default=None, init=False)
    _observed: bool = attrs.field(default=False, init=False)

    # The state, read-only outside the methods below.

    @property
    def policy(self) -> LinkPolicy:
        """The local policy in force (:meth:`set_policy`)."""
        return self._policy

    @property
    def own_state(self) -> XenbusState:
        """The own state last committed (or seen)."""
        return self._own_state

    @property
    def peer_state(self) -> XenbusState:
        """The peer's state last seen in a committed snapshot."""
        return self._peer_state

    @property
    def own_keys(self) -> Mapping[str, bytes | None] | None:
        """What the tracked own keys hold (None: unknown, the next snapshot reads them)."""
        return self._own_keys

    @property
    def peer(self) -> ParsedAdvertisement | None:
        """The peer's advertisement last read (while it is Connected)."""
        return self._peer

    @property
    def applied(self) -> LinkResult | None:
        """The result enforced and announced, or None (not connected, or to apply again)."""
        return self._applied

    @property
    def result(self) -> LinkResult | None:
        """The result last decided (kept while the device could not be reached)."""
        return self._result

    @property
    def observed(self) -> bool:
        """Whether a snapshot was ever committed (a policy change alone can then be
        recomputed)."""
        return self._observed

    @property
    def advertisement(self) -> Advertisement:
        """What this end advertises now: capability capped by policy."""
        return advertise(self.role, self.capability, self.policy)

    @property
    def knows_own_keys(self) -> bool:
        """False when the next snapshot must read the own tracked keys."""
        return self.own_keys is not None

    @property
    def connected(self) -> bool:
        return apply_window(self.own_state, self.peer_state)

    # ---------------------------------------------------------------- what the driver reports

    def set_policy(self, policy: LinkPolicy) -> bool:
        """Change the local policy. Returns True when the end must step again (re-advertise
        or re-decide); nothing is written until it does."""
        if policy == self._policy:
            return False
        self._policy = policy
        return True

    def lost_track(self) -> None:
        """The own directory may hold something else than the machine believes (a foreign
        write, the directory removed and re-created, a new connection): read it again."""
        self._own_keys = None

    def device_unknown(self) -> None:
        """The kernel device may carry something else than the result the machine believes
        applied: a step changed it and then did not commit (a conflict, a lost connection, a
        store error), or it could not be brought in line. The next step that decides a
        result enforces it again, whatever it is (device effects are level-triggered, like
        keys: docs/protocol.md, R15 (c))."""
        self._applied = None

    def committed(self, step: Step, written: Mapping[str, bytes], applied: bool) -> None:
        """The transaction carrying ``step`` committed, with the own keys ``written`` (the
        step's writes plus its announcement). ``applied``: the step's result reached the
        device (False: apply it again on the next step)."""
        self._observed = True
        self._own_state = step.own_state
        self._peer_state = step.peer_state
        self._peer = step.peer
        self._result = step.result
        self._own_keys = {**step.own_keys, **written}
        if step.enforce is not None:
            self._applied = step.enforce if applied else None
        elif not apply_window(step.own_state, step.peer_state):
            self._applied = None  # link down: the next Connected applies afresh
        if step.forget:
            self._own_keys = None
            self._applied = None

    # ---------------------------------------------------------------- deciding

    def observe(self, snapshot: Snapshot) -> Step:
        """Return the step for what the directories hold now (the machine is unchanged)."""
        if not snapshot.own_present:
            return Step(writes={}, state=None, enforce=None, violations=(), forget=True,
                        again=False, own_state=S.UNKNOWN, peer_state=self.peer_state,
                        own_keys=_NOTHING_KNOWN, peer=None, result=None)
        violations: list[Violation] = []
        peer = parse_state(snapshot.peer_state)
        if peer is None:
            violations.append(Violation(ViolationKind.PEER_STATE_MALFORMED, "read as Closed",
                                        "state", snapshot.peer_state))
            peer = S.CLOSED
        elif not is_legal(self.role.peer, self.peer_state, peer):
            violations.append(Violation(ViolationKind.PEER_SKIPPED_STATES,
                                        f"{self.peer_state} -> {peer}", "state",
                                        snapshot.peer_state))
        own = self._observed_own(snapshot.own_state, violations)
        own_keys = snapshot.own_keys if snapshot.own_keys is not None else self.own_keys
        if own_keys is None:
            raise ValueError("snapshot lacks the own keys the machine does not know")
        parsed: ParsedAdvertisement | None = None
        if peer is S.CONNECTED:
            parsed = parse_advertisement("", snapshot.peer_keys)
            violations.extend(Violation(ViolationKind.PEER_VALUE_REFUSED, problem.reason,
                                        problem.path, problem.value)
                              for problem in parsed.problems)
        return self._plan(own, peer, own_keys, parsed, tuple(violations))

    def recompute(self) -> Step | None:
        """Return the step a policy change asks for without a new snapshot (the driver
        checks that the own state still is :attr:`own_state` in the same transaction), or
        None when nothing was observed yet or the own keys are unknown (observe instead)."""
        if not self.observed or self.own_keys is None:
            return None
        return self._plan(self.own_state, self.peer_state, self.own_keys, self.peer, ())

    def announcement(self, step: Step, status: str | None) -> dict[str, bytes]:
        """Return the status and result keys to write with ``step`` (those that differ from
        what the own directory holds): ``status`` is what the enforcer achieved, None when
        the step enforced nothing."""
        if status is None or step.result is None:
            return {}
        wanted = {STATUS_KEY: status.encode("ascii", "replace"),
                  RESULT_KEY: format_result(step.result)}
        return {name: value for name, value in wanted.items()
                if step.own_keys.get(name) != value}

    def _observed_own(self, raw: bytes | None, violations: list[Violation]) -> XenbusState:
        observed = parse_state(raw)
        if self.mode is Mode.COMPANION:
            if observed is None:
                violations.append(Violation(ViolationKind.OWN_STATE_MALFORMED,
                                            "the kernel driver's state; read as Closed",
                                            "state", raw))
                return S.CLOSED
            if not is_legal(self.role, self.own_state, observed):
                violations.append(Violation(ViolationKind.DRIVER_ILLEGAL_MOVE,
                                            f"{self.own_state} -> {observed}"))
            return observed
        # Full mode: the node is ours; the store holds the truth (the toolstack may have
        # reset it when it re-created the device). Missing or malformed: start afresh.
        if observed is None:
            violations.append(Violation(ViolationKind.OWN_STATE_MALFORMED,
                                        "restarting from Initialising", "state", raw))
            return S.INITIALISING
        return S.INITIALISING if observed is S.UNKNOWN else observed

    def _plan(self, own: XenbusState, peer: XenbusState, own_keys: Mapping[str, bytes | None],
              parsed: ParsedAdvertisement | None, violations: tuple[Violation, ...]) -> Step:
        state: XenbusState | None = None
        again = False
        if self.mode is Mode.FULL:
            target = next_state(self.role, own, peer)
            if target != own:
                check_transition(self.role, own, target)
                state, own = target, target
                again = next_state(self.role, own, peer) != own
        writes: dict[str, bytes] = {}
        if advertise_window(self.role, own, peer):
            wanted = render_advertisement(self.role, self.advertisement)
            writes = {name: value for name, value in wanted.items()
                      if own_keys.get(name) != value}
        enforce = result = None
        if apply_window(own, peer):
            peer_adv = (parsed or parse_advertisement("", {})).advertisement
            mine = self.advertisement
            if self.role is Role.BACKEND:
                result = decide(mine, peer_adv, self.policy)
            else:
                result = decide(peer_adv, mine, self.policy)
            if result != self.applied:
                enforce = result
        return Step(writes=writes, state=state, enforce=enforce, violations=violations,
                    forget=False, again=again, own_state=own, peer_state=peer,
                    own_keys={**own_keys, **writes}, peer=parsed, result=result)
