"""The scenario catalogue: each scenario names the rule of docs/protocol.md it checks, the
peer's script and the judges that decide the verdict, for either role of the IUT.

Scenario ids start with the rule numbers (``R9-...``). Every scenario is built per role by
:meth:`Scenario.build`, which returns the steps the harness plays and the judges applied to
what the IUT did. docs/conformance.md is generated from this module
(``python -m xenoffload.conformance.doc --write docs/conformance.md``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs

from xenoffload.conformance.judges import (
    AdvertisesOwnKeys,
    AtomicAnnouncements,
    AtQuietPoint,
    BoundedWatches,
    Judge,
    KeysBeforeState,
    LeftAndReturned,
    LegacyKeysConsistent,
    LegalOwnTransitions,
    NeverWritesState,
    NoConnectedBetween,
    NoStateChangeAfter,
    NoWritesAfterRemoval,
    OwnDirectoryOnly,
    QuietAfter,
    QuietWhenIdle,
    ReachesState,
    ResultAgrees,
    SendsBlank,
    SnapshotInOneTransaction,
    StateOnlyOnChange,
    StatusWritten,
)
from xenoffload.conformance.peer import (
    NETBACK_PROBE_KEYS,
    Actor,
    AwaitIut,
    ChangePolicy,
    CloseMidTransaction,
    Keys,
    Publish,
    Reconnect,
    RemoveDevice,
    Settle,
    Step,
    SwitchState,
    Withdraw,
    WriteRaw,
    linux_netback,
    linux_netfront,
    xo_keys,
)
from xenoffload.machine import Mode
from xenoffload.negotiation import LinkPolicy
from xenoffload.schema import FamilyFlags, Role
from xenoffload.xenbus import XenbusState

__all__ = ["CATALOGUE", "LENIENT_VALUES", "IutPolicy", "Scenario", "by_id", "every_run"]

S = XenbusState
Steps = tuple[Step, ...]
Judges = tuple[Judge, ...]
ALL = ((True, True), (True, True))


class IutPolicy(enum.Enum):
    """The policy the IUT is configured with for a scenario."""

    ALLOW_ALL = "allows blank checksums both ways"
    NOTHING = "built-in default: allows nothing"
    RECEIVE_NOTHING = "may send blank checksums, accepts none"

    def link_policy(self, role: Role) -> LinkPolicy:
        """Return the policy for an IUT of ``role`` (to-guest is the backend's send)."""
        every, none = FamilyFlags.both(True), FamilyFlags()
        if self is IutPolicy.ALLOW_ALL:
            return LinkPolicy(every, every)
        if self is IutPolicy.NOTHING:
            return LinkPolicy()
        return LinkPolicy(every, none) if role is Role.BACKEND else LinkPolicy(none, every)


@attrs.frozen
class Scenario:
    """One entry of the catalogue."""

    id: str
    rule: str
    title: str
    make: Callable[[Role], tuple[Steps, Judges]]
    roles: tuple[Role, ...] = (Role.BACKEND, Role.FRONTEND)
    mode: Mode = Mode.FULL
    policy: IutPolicy = IutPolicy.ALLOW_ALL
    #: The script changes the IUT's policy while it runs (needs ``{config}`` for a command).
    changes_policy: bool = False

    def build(self, role: Role) -> tuple[Steps, Judges]:
        """Return the peer's steps and the judges for an IUT of ``role``."""
        if role not in self.roles:
            raise ValueError(f"{self.id} does not apply to a {role.value}")
        return self.make(role)


# ---------------------------------------------------------------------------- script parts

def peer_keys(iut: Role, tx: tuple[bool, bool] = (True, True),
              rx: tuple[bool, bool] = (True, True)) -> Keys:
    """The keys of a xenoffload peer (the other role than ``iut``)."""
    return xo_keys(iut.peer, tx, rx)


def handshake(iut: Role, keys: Keys) -> Steps:
    """A well-behaved full-mode peer writing ``keys``, up to both ends Connected."""
    if iut is Role.BACKEND:
        return (AwaitIut((S.INIT_WAIT,)), Publish(keys, S.CONNECTED),
                AwaitIut((S.CONNECTED,)))
    return (Publish(keys, S.INIT_WAIT), AwaitIut((S.CONNECTED,)), SwitchState(S.CONNECTED))


def restart(iut: Role, keys: Keys) -> Steps:
    """The peer restarts (guest reboot / backend reconnect) and comes back with ``keys``."""
    if iut is Role.BACKEND:
        return (Publish(keys, S.INITIALISING), AwaitIut((S.INIT_WAIT,)),
                SwitchState(S.CONNECTED), AwaitIut((S.CONNECTED,)))
    return (SwitchState(S.CLOSING), AwaitIut((S.CLOSED,)), SwitchState(S.CLOSED),
            Publish(keys, S.INIT_WAIT), AwaitIut((S.CONNECTED,)), SwitchState(S.CONNECTED))


def _safe_sends() -> SendsBlank:
    return SendsBlank(False, False)


# ---------------------------------------------------------------------------- scenarios

def _own_directory(iut: Role) -> tuple[Steps, Judges]:
    steps = (*handshake(iut, peer_keys(iut)), Settle(),
             Publish(peer_keys(iut, rx=(False, False))), Settle(),
             *restart(iut, peer_keys(iut)))
    return steps, (OwnDirectoryOnly(),)


def _keys_before_state(iut: Role) -> tuple[Steps, Judges]:
    steps = (*handshake(iut, peer_keys(iut)), Settle(), *restart(iut, peer_keys(iut)))
    return steps, (KeysBeforeState(),)


def _snapshot(iut: Role) -> tuple[Steps, Judges]:
    steps = (*handshake(iut, peer_keys(iut)), Settle(),
             Publish(peer_keys(iut, rx=(False, True))))
    return steps, (SnapshotInOneTransaction(),)


def _level_triggered(iut: Role) -> tuple[Steps, Judges]:
    keys = peer_keys(iut)
    pre = (*handshake(iut, keys), Settle())
    again = (Publish(keys, S.CONNECTED), Publish(keys), Reconnect(), Publish(keys, S.CONNECTED))
    return (*pre, *again), (QuietAfter(len(pre)),)


def _negotiates(iut: Role) -> tuple[Steps, Judges]:
    return handshake(iut, peer_keys(iut)), (ReachesState(S.CONNECTED), SendsBlank(True, True),
                                            StatusWritten())


def _peer_refuses(iut: Role) -> tuple[Steps, Judges]:
    if iut is Role.BACKEND:
        # A unikernel netfront: legacy keys only, "send me no blank checksums".
        steps: Steps = (AwaitIut((S.INIT_WAIT,)),
                        Publish((("feature-no-csum-offload", b"1"),), S.CONNECTED),
                        AwaitIut((S.CONNECTED,)))
    else:
        steps = handshake(iut, peer_keys(iut, rx=(False, False)))
    return steps, (ReachesState(S.CONNECTED), _safe_sends())


def _default(iut: Role) -> tuple[Steps, Judges]:
    return handshake(iut, peer_keys(iut)), (
        ReachesState(S.CONNECTED), AdvertisesOwnKeys((False, False), (False, False)),
        _safe_sends())


def _legacy_consistent(iut: Role) -> tuple[Steps, Judges]:
    return handshake(iut, peer_keys(iut)), (
        AdvertisesOwnKeys((True, True), (False, False)), LegacyKeysConsistent())


def _legacy_peer(iut: Role) -> tuple[Steps, Judges]:
    if iut is Role.BACKEND:
        steps: Steps = linux_netfront(Actor.PEER)
    else:
        probe, connect = linux_netback(Actor.PEER)
        steps = (*probe, *connect)
    return steps, (ReachesState(S.CONNECTED), SendsBlank(True, True))


def _garbage_own_key(iut: Role) -> tuple[Steps, Judges]:
    keys = peer_keys(iut)
    if iut is Role.BACKEND:
        steps: Steps = (AwaitIut((S.INIT_WAIT,)), Publish(keys),
                        WriteRaw("feature-csum-rx", b"\xff\xfe1"), SwitchState(S.CONNECTED),
                        AwaitIut((S.CONNECTED,)))
    else:
        steps = (Publish(keys), WriteRaw("feature-csum-rx", b"\xff\xfe1"),
                 SwitchState(S.INIT_WAIT), AwaitIut((S.CONNECTED,)), SwitchState(S.CONNECTED))
    return steps, (ReachesState(S.CONNECTED), _safe_sends())


def _garbage_legacy_key(iut: Role) -> tuple[Steps, Judges]:
    if iut is Role.BACKEND:
        # Junk where Linux netback would take the default (offload on).
        steps: Steps = linux_netfront(Actor.PEER, extra=(("feature-no-csum-offload", b"yes"),))
    else:
        # "1x": Linux reads 1; xenoffload refuses it.
        probe, connect = linux_netback(Actor.PEER, probe_keys=tuple(
            (name, b"1x" if name == "feature-ipv6-csum-offload" else value)
            for name, value in NETBACK_PROBE_KEYS))
        steps = (*probe, *connect)
    return steps, (ReachesState(S.CONNECTED), _safe_sends())


def _withdrawn(iut: Role) -> tuple[Steps, Judges]:
    steps = (*handshake(iut, peer_keys(iut)), Settle(),
             Withdraw(("feature-csum-rx-ipv6", "feature-ipv6-csum-offload")))
    return steps, (ReachesState(S.CONNECTED), SendsBlank(True, False))


def _garbage_state(iut: Role) -> tuple[Steps, Judges]:
    keys = peer_keys(iut)
    if iut is Role.BACKEND:
        pre: Steps = (AwaitIut((S.INIT_WAIT,)), Publish(keys), WriteRaw("state", b"4\n"),
                      AwaitIut((S.CLOSED,)))
        recover: Steps = (SwitchState(S.INITIALISING), AwaitIut((S.INIT_WAIT,)),
                          SwitchState(S.CONNECTED), AwaitIut((S.CONNECTED,)))
    else:
        pre = (Publish(keys), WriteRaw("state", b"02"), AwaitIut((S.CLOSED,)))
        recover = (SwitchState(S.INIT_WAIT), AwaitIut((S.CONNECTED,)),
                   SwitchState(S.CONNECTED))
    return (*pre, *recover), (
        NoConnectedBetween(1, len(pre), " (a state that is not one of the nine is Closed)"),
        ReachesState(S.CONNECTED))


def _skipped_states(iut: Role) -> tuple[Steps, Judges]:
    keys = peer_keys(iut)
    if iut is Role.BACKEND:
        pre = (*handshake(iut, keys), SwitchState(S.CLOSED), AwaitIut((S.CLOSED,)),
               SwitchState(S.CONNECTED), Settle())
        skip = len(handshake(iut, keys)) + 2
        recover: Steps = (SwitchState(S.INITIALISING), AwaitIut((S.INIT_WAIT,)),
                          SwitchState(S.CONNECTED), AwaitIut((S.CONNECTED,)))
    else:
        pre = (Publish(keys, S.CONNECTED), Settle())
        skip = 0
        recover = (SwitchState(S.CLOSING), AwaitIut((S.CLOSED,)), SwitchState(S.CLOSED),
                   SwitchState(S.INIT_WAIT), AwaitIut((S.CONNECTED,)),
                   SwitchState(S.CONNECTED))
    return (*pre, *recover), (
        NoConnectedBetween(skip, len(pre), " (the peer skipped states)"),
        ReachesState(S.CONNECTED))


def _renegotiate(iut: Role) -> tuple[Steps, Judges]:
    pre = (*handshake(iut, peer_keys(iut)), Settle())
    steps = (*pre, *restart(iut, peer_keys(iut, rx=(False, False))))
    through = (S.CLOSING, S.CLOSED, S.INIT_WAIT) if iut is Role.BACKEND else (
        S.CLOSED, S.INITIALISING)
    return steps, (LeftAndReturned(len(pre), through), _safe_sends())


def _legal_transitions(iut: Role) -> tuple[Steps, Judges]:
    steps = (*handshake(iut, peer_keys(iut)), Settle(), *restart(iut, peer_keys(iut)))
    return steps, (LegalOwnTransitions(), ReachesState(S.CONNECTED))


def _flip(iut: Role) -> tuple[Steps, Judges]:
    pre = (*handshake(iut, peer_keys(iut)), Settle())
    steps = (*pre, Publish(peer_keys(iut, rx=(False, True))), Settle(),
             Publish(peer_keys(iut)))
    return steps, (ReachesState(S.CONNECTED), NoStateChangeAfter(len(pre)),
                   AtQuietPoint(len(pre) + 1, sends=(False, True)), SendsBlank(True, True))


#: Values Linux's ``%u`` (or a sloppy parser) reads as 1, and R2 refuses.
LENIENT_VALUES = (b"1\n", b" 1", b"1x", b"yes")


def _lenient_after_connect(iut: Role) -> tuple[Steps, Judges]:
    pre = (*handshake(iut, peer_keys(iut)), Settle())
    steps: list[Step] = list(pre)
    judges: list[Judge] = []
    for value in LENIENT_VALUES:
        keys = tuple((name, b"0" if name == "feature-no-csum-offload" else value)
                     for name, _ in peer_keys(iut))
        steps += [Publish(keys), Settle()]
        judges.append(AtQuietPoint(len(steps) - 1, sends=(False, False)))
    return tuple(steps), (ReachesState(S.CONNECTED), *judges)


def _own_policy_change(iut: Role) -> tuple[Steps, Judges]:
    pre = (*handshake(iut, peer_keys(iut)), Settle())
    nothing, every = IutPolicy.NOTHING, IutPolicy.ALLOW_ALL
    steps = (*pre, ChangePolicy(nothing.link_policy(iut), nothing.value), Settle(),
             ChangePolicy(every.link_policy(iut), every.value), Settle())
    none = (False, False)
    return steps, (NoStateChangeAfter(len(pre)),
                   AtQuietPoint(len(pre) + 1, sends=none, advertises=(none, none)),
                   AtQuietPoint(len(pre) + 3, sends=(True, True), advertises=ALL),
                   ReachesState(S.CONNECTED))


def _close_mid(iut: Role) -> tuple[Steps, Judges]:
    keys = peer_keys(iut)
    if iut is Role.BACKEND:
        pre: Steps = (AwaitIut((S.INIT_WAIT,)), CloseMidTransaction(keys, S.CONNECTED),
                      SwitchState(S.CLOSING), AwaitIut((S.CLOSED,)), SwitchState(S.CLOSED))
        again: Steps = (SwitchState(S.INITIALISING), AwaitIut((S.INIT_WAIT,)),
                        Publish(keys, S.CONNECTED), AwaitIut((S.CONNECTED,)))
        judges: Judges = (
            NoConnectedBetween(1, len(pre) + 2, " (the peer never committed Connected)"),
            LeftAndReturned(1, (S.CLOSING, S.CLOSED)))
    else:
        pre = (Publish(keys, S.INIT_WAIT), AwaitIut((S.CONNECTED,)),
               CloseMidTransaction((), S.CONNECTED), SwitchState(S.CLOSING),
               AwaitIut((S.CLOSED,)), SwitchState(S.CLOSED))
        again = (Publish(keys, S.INIT_WAIT), AwaitIut((S.CONNECTED,)),
                 SwitchState(S.CONNECTED))
        judges = (LeftAndReturned(2, (S.CLOSED,)),)
    return (*pre, *again), (*judges, ReachesState(S.CONNECTED))


def _removed(iut: Role) -> tuple[Steps, Judges]:
    pre = (*handshake(iut, peer_keys(iut)), Settle())
    steps = (*pre, RemoveDevice(), Settle(), SwitchState(S.CLOSING, refusable=True))
    return steps, (NoWritesAfterRemoval(len(pre)),)


def _companion_stock(iut: Role) -> tuple[Steps, Judges]:
    kernel = Actor.KERNEL if iut is Role.BACKEND else Actor.PEER
    guest = Actor.PEER if iut is Role.BACKEND else Actor.KERNEL
    probe, connect = linux_netback(kernel)
    steps = (*probe, *linux_netfront(guest), *connect, AwaitIut((S.CONNECTED,)))
    return steps, (NeverWritesState(), AdvertisesOwnKeys(*ALL), LegacyKeysConsistent(),
                   ReachesState(S.CONNECTED), SendsBlank(True, True), StatusWritten())


def _companion_hostile(iut: Role) -> tuple[Steps, Judges]:
    probe, connect = linux_netback(Actor.KERNEL)
    steps = (*probe, *linux_netfront(Actor.PEER, extra=(("feature-no-csum-offload", b"yes"),)),
             *connect, AwaitIut((S.CONNECTED,)))
    return steps, (NeverWritesState(), ReachesState(S.CONNECTED), _safe_sends())


CATALOGUE: tuple[Scenario, ...] = (
    Scenario("R1-own-directory-only", "R1",
             "no key outside the implementation's own directory is written", _own_directory),
    Scenario("R2-garbage-own-key-safe", "R2",
             "raw non-UTF-8 bytes in a peer's feature-csum-rx yield the safe result",
             _garbage_own_key),
    Scenario("R2-garbage-legacy-key-safe", "R2",
             "a legacy key Linux would misread (junk, 1x) yields the safe result",
             _garbage_legacy_key),
    Scenario("R3-withdrawn-key", "R3",
             "a peer key withdrawn while Connected is read as not offered", _withdrawn),
    Scenario("R4-legacy-peer", "R4",
             "a stock Linux peer speaking only legacy keys is read as a stock driver means "
             "them", _legacy_peer),
    Scenario("R4-legacy-keys-consistent", "R4",
             "legacy keys are written consistent with the own keys", _legacy_consistent,
             policy=IutPolicy.RECEIVE_NOTHING),
    Scenario("R5-peer-refuses-blank", "R5",
             "a peer that accepts no blank checksums never receives one: the IUT's transmit "
             "checksum offload is off", _peer_refuses),
    Scenario("R5-negotiates-offload", "R5",
             "two ends that both allow it negotiate blank checksums both ways", _negotiates),
    Scenario("R7-default-computes", "R7",
             "with the built-in policy every checksum is computed", _default,
             policy=IutPolicy.NOTHING),
    Scenario("R9-keys-before-state", "R9",
             "no InitWait (backend) or Connected before the feature keys are written",
             _keys_before_state),
    Scenario("R11-snapshot-transaction", "R11",
             "the peer's features are read in the same transaction as both states", _snapshot),
    Scenario("R11-level-triggered", "R11",
             "rewritten identical values and a peer reconnect cause no new action",
             _level_triggered),
    Scenario("R12-renegotiate-from-scratch", "R12",
             "a peer restart (Closed -> Initialising) renegotiates from scratch", _renegotiate),
    Scenario("R12-flip-while-connected", "R12",
             "features the peer flips while Connected (off, then on again) are re-applied "
             "without a reconnect", _flip),
    Scenario("R2-lenient-values-after-connect", "R2",
             "values Linux reads as 1 (1\\n, ' 1', 1x, yes), written while Connected, yield "
             "the safe result", _lenient_after_connect),
    Scenario("R12-own-policy-change", "R12",
             "the IUT's own policy changes while Connected: it re-advertises and re-applies "
             "without a reconnect", _own_policy_change, changes_policy=True),
    Scenario("R12-close-mid-negotiation", "R12",
             "a peer that crashes mid-transaction and closes mid-negotiation is followed "
             "through Closed and back", _close_mid),
    Scenario("R13-garbage-state", "R13",
             "a peer state that is not one of the nine values is read as Closed",
             _garbage_state),
    Scenario("R13-skipped-states", "R13",
             "a peer that skips states is not trusted: no Connected until it does it right",
             _skipped_states),
    Scenario("R13-legal-own-transitions", "R13",
             "every own state change a peer can see is a legal transition",
             _legal_transitions),
    Scenario("R14-device-removed", "R14",
             "a removed device is forgotten; no write re-creates it", _removed),
    Scenario("R10-companion-stock-linux", "R10",
             "beside stock netback/netfront (legacy keys only): never writes state, "
             "advertises, enforces", _companion_stock, mode=Mode.COMPANION),
    Scenario("R2-companion-hostile-frontend", "R2",
             "beside stock netback, a frontend's junk feature-no-csum-offload (Linux: "
             "offload on) turns vif transmit offload off", _companion_hostile,
             roles=(Role.BACKEND,), mode=Mode.COMPANION),
)


def every_run(mode: Mode) -> Judges:
    """Return the judges applied to every scenario run in ``mode``: the rules the request log,
    the published result and the device log show whatever the script (docs/conformance.md)."""
    common: Judges = (OwnDirectoryOnly(require_writes=False), AtomicAnnouncements(),
                      SnapshotInOneTransaction(require_reads=False), BoundedWatches(),
                      QuietWhenIdle(), ResultAgrees())
    if mode is Mode.COMPANION:
        return (*common, NeverWritesState())
    return (*common, StateOnlyOnChange(), KeysBeforeState(require=False),
            LegalOwnTransitions())


def by_id(scenario_id: str) -> Scenario:
    """Return the scenario with this id (KeyError if none)."""
    for scenario in CATALOGUE:
        if scenario.id == scenario_id:
            return scenario
    raise KeyError(scenario_id)
