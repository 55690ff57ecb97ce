"""The negotiation state machine of one vif end, as explicit tables. Sans-I/O.

Everything that decides XenbusState transitions and when feature keys are written or results
applied lives in this file. The tables are written per role (backend, frontend) but the machine
that runs them does not care which role it plays: both ends are judged by the same rules.

The machine is *level-triggered*: it is fed :class:`Snapshot` observations (what the own and
the peer directory hold now, read in one transaction) and answers with actions. Duplicated,
late or coalesced watch events therefore cannot confuse it; the same snapshot twice yields no
new action.

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

import attrs

from xenoffload.negotiation import LinkPolicy, LinkResult, advertise, decide
from xenoffload.schema import (
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
    "WriteKeys",
    "Enforce",
    "Violation",
    "Forget",
    "Action",
    "IllegalTransition",
    "LEGAL_TRANSITIONS",
    "TRANSITIONS",
    "VifMachine",
    "advertise_window",
    "next_state",
    "apply_window",
]

S = XenbusState


class Mode(enum.Enum):
    """Who owns the device's ``state`` node."""

    FULL = "full"
    COMPANION = "companion"


# --------------------------------------------------------------------------------------------
# Table 1: the transitions of an end's own state that the protocol permits. Used to judge the
# peer (an illegal peer transition is reported, never trusted) and the kernel driver in
# companion mode, and to check the machine's own moves. A node vanishing (→ UNKNOWN) and a
# device being created (UNKNOWN → INITIALISING) are always legal.
LEGAL_TRANSITIONS: Mapping[Role, frozenset[tuple[XenbusState, XenbusState]]] = {
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
}

# --------------------------------------------------------------------------------------------
# Table 2: full mode. own state -> peer state -> next own state. A pair not listed means "stay".
# Applied repeatedly until nothing changes (a fixed point), so one observation can walk several
# steps (Connected, peer restarted -> Closing -> Closed -> InitWait), each of them legal.
TRANSITIONS: Mapping[Role, Mapping[XenbusState, Mapping[XenbusState, XenbusState]]] = {
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
}

#: Own states a full-mode machine may start from (the toolstack writes 1; a restart finds any).
_MAX_FIXED_POINT_STEPS = 8


def next_state(role: Role, own: XenbusState, peer: XenbusState) -> XenbusState:
    """Return where a full-mode end of ``role`` in ``own`` goes next when its peer is in
    ``peer`` (one step; ``own`` itself means stay)."""
    return TRANSITIONS[role].get(own, {}).get(peer, own)


def advertise_window(role: Role, own: XenbusState, peer: XenbusState) -> bool:
    """Return whether an end's feature keys must be present now.

    Backend: from InitWait on (netback writes its keys before InitWait; the frontend reads them
    when it sees InitWait). Frontend: once the backend waits for it, and while connected
    (netback reads the frontend's keys when the frontend reaches Connected). Outside the window
    the keys are left alone.
    """
    if role is Role.BACKEND:
        return own in (S.INIT_WAIT, S.INITIALISED, S.CONNECTED)
    if own is S.CONNECTED:
        return True
    return own in (S.INITIALISING, S.INIT_WAIT, S.INITIALISED) and peer in (
        S.INIT_WAIT, S.CONNECTED)


def apply_window(own: XenbusState, peer: XenbusState) -> bool:
    """Return whether the negotiated result is in force: both ends Connected."""
    return own is S.CONNECTED and peer is S.CONNECTED


# --------------------------------------------------------------------------------------------
# Observations and actions.


@attrs.frozen
class Snapshot:
    """What one end observes of its vif, read in one transaction.

    ``own_state``/``peer_state`` are the raw ``state`` node values (None: node absent).
    ``own_keys``/``peer_keys`` map each feature key name to its raw value (None: absent).
    ``own_present`` is False when the end's own directory has gone (device removed).
    """

    own_state: bytes | None
    peer_state: bytes | None
    own_keys: Mapping[str, bytes | None]
    peer_keys: Mapping[str, bytes | None]
    peer_dir: str
    own_present: bool = True


@attrs.frozen
class WriteKeys:
    """Write these keys into the own directory, and (full mode) ``state``, in one transaction."""

    keys: Mapping[str, bytes]
    state: XenbusState | None = None


@attrs.frozen
class Enforce:
    """Bring the kernel device in line with ``result`` (both ends are Connected)."""

    result: LinkResult
    peer: ParsedAdvertisement


@attrs.frozen
class Violation:
    """Something the peer (or a kernel driver) did is outside the protocol; logged, then the
    safe interpretation is used."""

    message: str
    path: str | None = None
    value: bytes | None = None


@attrs.frozen
class Forget:
    """The own directory is gone: the device was removed; drop all state for it."""


Action = WriteKeys | Enforce | Violation | Forget


class IllegalTransition(Exception):
    """A requested own-state change is not in :data:`LEGAL_TRANSITIONS`."""

    def __init__(self, role: Role, old: XenbusState, new: XenbusState) -> None:
        self.role = role
        self.old = old
        self.new = new
        super().__init__(f"{role.value}: illegal XenbusState transition {old} -> {new}")


def _check_legal(role: Role, old: XenbusState, new: XenbusState) -> bool:
    if old == new or new is S.UNKNOWN or old is S.UNKNOWN:
        return True
    return (old, new) in LEGAL_TRANSITIONS[role]


@attrs.define
class VifMachine:
    """One end of one vif: turns snapshots and policy changes into actions.

    ``capability`` is what this end's device can do; ``policy`` caps it. The machine remembers
    the last snapshot (to recompute on a policy change), the peer's last valid state (to judge
    its next move) and the last result it asked to apply (so that the same result is not
    applied twice).
    """

    role: Role
    mode: Mode
    policy: LinkPolicy
    capability: Advertisement = Advertisement(FamilyFlags.both(True), FamilyFlags.both(True))
    own_state: XenbusState = S.UNKNOWN
    peer_state: XenbusState = S.UNKNOWN
    applied: LinkResult | None = None
    last_snapshot: Snapshot | None = None
    #: Every own state the last observation walked through (full mode), for logs and tests.
    last_path: tuple[XenbusState, ...] = ()

    @property
    def advertisement(self) -> Advertisement:
        """What this end advertises now: capability capped by policy."""
        return advertise(self.role, self.capability, self.policy)

    def request_state(self, new: XenbusState) -> WriteKeys:
        """Full mode: return the action moving the own state to ``new`` (e.g. a toolstack
        closing the device). Raises IllegalTransition if the tables forbid it, ValueError in
        companion mode."""
        if self.mode is Mode.COMPANION:
            raise ValueError("companion mode never writes state")
        if not _check_legal(self.role, self.own_state, new):
            raise IllegalTransition(self.role, self.own_state, new)
        self.own_state = new
        return WriteKeys({}, new)

    def set_policy(self, policy: LinkPolicy) -> list[Action]:
        """Change the local policy; return the actions that re-advertise and re-apply."""
        self.policy = policy
        if self.last_snapshot is None:
            return []
        return self._react(self.last_snapshot, judge_peer=False)

    def observe(self, snapshot: Snapshot) -> list[Action]:
        """Feed what the directories hold now; return the actions to perform, in order."""
        return self._react(snapshot, judge_peer=True)

    # ----------------------------------------------------------------------------------------

    def _react(self, snapshot: Snapshot, judge_peer: bool) -> list[Action]:
        self.last_snapshot = snapshot
        actions: list[Action] = []
        if not snapshot.own_present:
            self.applied = None
            return [Forget()]

        peer = parse_state(snapshot.peer_state)
        peer_path = f"{snapshot.peer_dir}/state"
        if peer is None:
            actions.append(Violation("peer state is not a XenbusState; treated as Closed",
                                     peer_path, snapshot.peer_state))
            peer = S.CLOSED
        elif judge_peer and not _check_legal(self.role.peer, self.peer_state, peer):
            actions.append(Violation(
                f"peer skipped states: {self.peer_state} -> {peer}", peer_path,
                snapshot.peer_state))
        self.peer_state = peer

        observed_own = parse_state(snapshot.own_state)
        if self.mode is Mode.COMPANION:
            if observed_own is None:
                actions.append(Violation("own state (kernel driver's) is not a XenbusState",
                                         None, snapshot.own_state))
                observed_own = S.CLOSED
            elif not _check_legal(self.role, self.own_state, observed_own):
                actions.append(Violation(
                    f"kernel driver moved {self.own_state} -> {observed_own}"))
            own = observed_own
        else:
            # Full mode: the node is ours; what we last wrote is authoritative, but adopt what
            # we find after a restart (nothing remembered yet) or when it no longer holds what
            # we wrote (the toolstack re-created the device, e.g. after xenstored lost its tree).
            # A policy change re-reacts to the last snapshot, read before our last write.
            fresh = judge_peer or self.own_state is S.UNKNOWN
            if fresh and self.own_state is not observed_own and \
                    observed_own not in (None, S.UNKNOWN):
                assert observed_own is not None
                self.own_state = observed_own
            own = self.own_state if self.own_state is not S.UNKNOWN else S.INITIALISING
            if own is not S.CONNECTED:
                self.applied = None  # the link is down, even if this walk reconnects it
            path: list[XenbusState] = [own]
            for _ in range(_MAX_FIXED_POINT_STEPS):
                step = next_state(self.role, own, peer)
                if step == own:
                    break
                if not _check_legal(self.role, own, step):  # the tables are checked by tests
                    raise IllegalTransition(self.role, own, step)
                own = step
                path.append(own)
            self.last_path = tuple(path)
        state_change = own if (self.mode is Mode.FULL and
                               (own != self.own_state or observed_own != own)) else None
        self.own_state = own

        keys: dict[str, bytes] = {}
        if advertise_window(self.role, own, peer):
            wanted = render_advertisement(self.role, self.advertisement)
            keys = {name: value for name, value in wanted.items()
                    if snapshot.own_keys.get(name) != value}
        if state_change is not None:
            # Each state of a walk is written on its own (as Linux does), so that a peer sees
            # only legal transitions: Connected -> Closing -> Closed -> InitWait, not 4 -> 2.
            actions.extend(WriteKeys({}, between) for between in self.last_path[1:-1])
        if keys or state_change is not None:
            actions.append(WriteKeys(keys, state_change))

        if apply_window(own, peer):
            parsed = parse_advertisement(self.role.peer, snapshot.peer_dir, snapshot.peer_keys)
            actions.extend(Violation(f"refused peer value: {problem.reason}", problem.path,
                                     problem.value) for problem in parsed.problems)
            mine = self.advertisement
            if self.role is Role.BACKEND:
                result = decide(mine, parsed.advertisement, self.policy)
            else:
                result = decide(parsed.advertisement, mine, self.policy)
            if result != self.applied:
                self.applied = result
                actions.append(Enforce(result, parsed))
        elif self.applied is not None and own is not S.CONNECTED:
            # Link down: forget what was applied so that the next Connected applies afresh.
            self.applied = None
        return actions
