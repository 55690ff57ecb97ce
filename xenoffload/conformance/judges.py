"""Judges: what an implementation under test must have done, checked on what it did.

An :class:`Observation` holds everything the suite saw of one scenario run: the IUT's requests
(from the server's per-connection log), where each peer step began, the final contents of both
vif directories and, when the suite can see it, the IUT's simulated kernel device. A judge
turns it into a :class:`Finding` saying what was expected, what was observed and at which
step. Judges never look inside the IUT.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import attrs

from xenoffload.conformance.observe import (
    MUTATING_OPS,
    Access,
    Effect,
    WireOp,
    accesses,
    effects,
    state_history,
    under,
)
from xenoffload.machine import LEGAL_TRANSITIONS, Mode
from xenoffload.schema import Role
from xenoffload.xenbus import XenbusState

__all__ = [
    "AdvertisesOwnKeys",
    "Finding",
    "Judge",
    "KeysBeforeState",
    "LegacyKeysConsistent",
    "LegalOwnTransitions",
    "LeftAndReturned",
    "Mark",
    "NeverWritesState",
    "NoConnectedBetween",
    "NoStateChangeAfter",
    "NoWritesAfterRemoval",
    "Observation",
    "OwnDirectoryOnly",
    "QuietAfter",
    "ReachesState",
    "SendsBlank",
    "SnapshotInOneTransaction",
    "StatusWritten",
]

S = XenbusState
#: xenoffload's own feature keys (docs/protocol.md, R1).
OWN_FEATURE_KEYS = ("feature-csum-tx", "feature-csum-tx-ipv6", "feature-csum-rx",
                    "feature-csum-rx-ipv6")
LEGACY_KEYS = ("feature-no-csum-offload", "feature-ipv6-csum-offload")
STATUS = "xenoffload-csum-status"


def _wire(state: int) -> bytes:
    """The node value of a state number (an IntEnum's str() is its name)."""
    return str(int(state)).encode()


def _state_text(value: bytes | None) -> str:
    if value is None:
        return "absent"
    try:
        return f"{XenbusState(int(value))}({value.decode()})"
    except ValueError:
        return repr(value)


@attrs.frozen
class Mark:
    """Where a peer step began: its index, description, request-log position and how many
    toggle applies the IUT had made by then (None: not visible)."""

    index: int
    text: str
    position: int
    applies: int | None


@attrs.frozen
class Observation:
    """What the suite saw of one run."""

    role: Role
    mode: Mode
    own_dir: str
    peer_dir: str
    ops: tuple[WireOp, ...]
    marks: tuple[Mark, ...]
    final: Mapping[str, bytes]
    device: Mapping[str, bool] | None = None
    applies: int | None = None

    @functools.cached_property
    def effects(self) -> list[Effect]:
        return effects(self.ops)

    @functools.cached_property
    def reads(self) -> list[Access]:
        return accesses(self.ops)

    def own(self, name: str) -> bytes | None:
        """The final value of a node of the IUT's directory."""
        return self.final.get(f"{self.own_dir}/{name}")

    def step_at(self, position: int) -> str:
        """Name the step during which request-log ``position`` happened."""
        current = "before the first step"
        for mark in self.marks:
            if mark.position <= position:
                current = f"step {mark.index + 1} ({mark.text})"
        return current

    def mark(self, index: int) -> Mark | None:
        """Return where step ``index`` began (None: the run stopped before it)."""
        return self.marks[index] if index < len(self.marks) else None

    def own_states(self) -> list[tuple[int, bytes | None]]:
        """The IUT's own ``state`` values as its own writes made them visible."""
        return state_history(self.effects, self.own_dir)


@attrs.frozen
class Finding:
    """One judge's conclusion."""

    passed: bool
    expected: str
    observed: str
    step: str | None = None


class Judge:
    """Checks one property of an observation."""

    def expectation(self, role: Role) -> str:
        """Say in one line what the IUT of ``role`` must do (docs, verdicts)."""
        raise NotImplementedError

    def judge(self, obs: Observation) -> Finding:
        raise NotImplementedError


def _ok(judge: Judge, obs: Observation, observed: str) -> Finding:
    return Finding(True, judge.expectation(obs.role), observed)


def _bad(judge: Judge, obs: Observation, observed: str, position: int | None) -> Finding:
    step = obs.step_at(position) if position is not None else None
    return Finding(False, judge.expectation(obs.role), observed, step)


@attrs.frozen
class OwnDirectoryOnly(Judge):
    """R1: every write, mkdir, rm or set-perms the IUT sends names its own directory."""

    def expectation(self, role: Role) -> str:
        return f"writes only inside its own {role.value} directory"

    def judge(self, obs: Observation) -> Finding:
        count = 0
        for op in obs.ops:
            if op.op in MUTATING_OPS:
                count += 1
                if not under(op.path, obs.own_dir):
                    return _bad(self, obs, f"{op.op} {op.path} "
                                f"({'accepted' if op.ok else 'refused'})", op.position)
        if count == 0:
            return _bad(self, obs, "it wrote nothing at all", None)
        return _ok(self, obs, f"{count} writes, all inside {obs.own_dir}")


@attrs.frozen
class KeysBeforeState(Judge):
    """R8/R9: when the IUT's ``state`` becomes one that lets the peer read its features
    (backend: InitWait or Connected; frontend: Connected), its feature keys are already
    visible: written earlier or in the same transaction."""

    def gated(self, role: Role) -> tuple[bytes, ...]:
        return (b"2", b"4") if role is Role.BACKEND else (b"4",)

    def expectation(self, role: Role) -> str:
        states = "InitWait or Connected" if role is Role.BACKEND else "Connected"
        return f"its feature keys are visible no later than its state becomes {states}"

    def judge(self, obs: Observation) -> Finding:
        present: set[str] = set()
        state_path = f"{obs.own_dir}/state"
        reached = 0
        for effect in obs.effects:
            new_state: bytes | None = None
            for path, value in effect.writes:
                if value is None:
                    present = {p for p in present if not under(p, path)}
                elif path == state_path:
                    new_state = value
                else:
                    present.add(path)
            if new_state in self.gated(obs.role):
                reached += 1
                missing = [name for name in OWN_FEATURE_KEYS
                           if f"{obs.own_dir}/{name}" not in present]
                if missing:
                    return _bad(self, obs, f"state {_state_text(new_state)} visible while "
                                f"{' '.join(missing)} not written", effect.position)
        if not reached:
            return _bad(self, obs, "its state never became "
                        + " or ".join(_state_text(s) for s in self.gated(obs.role)), None)
        return _ok(self, obs, f"keys present at each of {reached} such state changes")


@attrs.frozen
class SnapshotInOneTransaction(Judge):
    """R11: the IUT reads the peer's feature keys only inside a transaction that also reads
    the peer's and its own ``state``; and it does read them."""

    def expectation(self, role: Role) -> str:
        return ("reads the peer's feature keys only in a transaction that also reads both "
                "states")

    def judge(self, obs: Observation) -> Finding:
        feature_paths = {f"{obs.peer_dir}/{name}" for name in (*OWN_FEATURE_KEYS,
                                                                 *LEGACY_KEYS)}
        by_txn: dict[tuple[int, int], set[str]] = {}
        for read in obs.reads:
            if read.tx_id:
                by_txn.setdefault((read.conn_id, read.tx_id), set()).add(read.path)
        needed = {f"{obs.peer_dir}/state", f"{obs.own_dir}/state"}
        count = 0
        for read in obs.reads:
            if read.path not in feature_paths:
                continue
            count += 1
            if not read.tx_id:
                return _bad(self, obs, f"read {read.path} outside any transaction",
                            read.position)
            missing = needed - by_txn[(read.conn_id, read.tx_id)]
            if missing:
                return _bad(self, obs, f"read {read.path} in a transaction that did not read "
                            + " ".join(sorted(missing)), read.position)
        if not count:
            return _bad(self, obs, "it never read the peer's feature keys", None)
        return _ok(self, obs, f"{count} reads of peer feature keys, each in a snapshot")


@attrs.frozen
class ReachesState(Judge):
    """The IUT's ``state`` (or, in companion mode, the kernel's) ends as ``state``."""

    state: int

    def expectation(self, role: Role) -> str:
        return f"its state ends {_state_text(_wire(self.state))}"

    def judge(self, obs: Observation) -> Finding:
        final = obs.own("state")
        if final == _wire(self.state):
            return _ok(self, obs, f"state {_state_text(final)}")
        return _bad(self, obs, f"state {_state_text(final)} at the end", None)


@attrs.frozen
class NoConnectedBetween(Judge):
    """The IUT does not write Connected from the start of step ``first`` until the start of
    step ``until`` (None: the end)."""

    first: int
    until: int | None = None
    why: str = ""

    def expectation(self, role: Role) -> str:
        end = f"step {self.until + 1}" if self.until is not None else "the end"
        return f"does not become Connected from step {self.first + 1} to {end}{self.why}"

    def judge(self, obs: Observation) -> Finding:
        first = obs.mark(self.first)
        if first is None:
            return _bad(self, obs, f"step {self.first + 1} was never reached", None)
        start = first.position
        until = obs.mark(self.until) if self.until is not None else None
        stop = until.position if until is not None else None
        for position, value in obs.own_states():
            if position >= start and (stop is None or position < stop) and value == b"4":
                return _bad(self, obs, "wrote state Connected(4)", position)
        return _ok(self, obs, "never wrote Connected in that window")


@attrs.frozen
class LeftAndReturned(Judge):
    """From step ``first`` on, the IUT's state leaves Connected/InitWait (passing one of
    ``through``) and then becomes ``back`` again: it renegotiated from scratch."""

    first: int
    through: tuple[int, ...]
    back: int = 4

    def expectation(self, role: Role) -> str:
        names = " or ".join(_state_text(_wire(s)) for s in self.through)
        return (f"after step {self.first + 1} passes {names}, then "
                f"{_state_text(_wire(self.back))} again")

    def judge(self, obs: Observation) -> Finding:
        first = obs.mark(self.first)
        if first is None:
            return _bad(self, obs, f"step {self.first + 1} was never reached", None)
        start = first.position
        seen = [value for position, value in obs.own_states() if position >= start]
        through = {_wire(s) for s in self.through}
        shown = " -> ".join(_state_text(v) for v in seen) or "no state change"
        for index, value in enumerate(seen):
            if value in through and _wire(self.back) in seen[index + 1:]:
                return _ok(self, obs, shown)
        return _bad(self, obs, shown, start)


@attrs.frozen
class LegalOwnTransitions(Judge):
    """Every change of the IUT's own state that a peer can see is in the legal set
    (docs/protocol.md, 'Legal ... transitions'; R13 judges a peer by it)."""

    def expectation(self, role: Role) -> str:
        return "every state change a peer can see is a legal transition"

    def judge(self, obs: Observation) -> Finding:
        legal = LEGAL_TRANSITIONS[obs.role]
        previous: XenbusState | None = XenbusState.INITIALISING
        changes = 0
        for position, value in obs.own_states():
            try:
                new = XenbusState(int(value)) if value is not None else None
            except ValueError:
                return _bad(self, obs, f"wrote state {value!r}", position)
            if new is None or previous is None or new == previous:
                previous = new
                continue
            changes += 1
            if (previous, new) not in legal:
                return _bad(self, obs, f"state went {previous} -> {new}", position)
            previous = new
        return _ok(self, obs, f"{changes} state changes, all legal")


@attrs.frozen
class SendsBlank(Judge):
    """What the IUT's device may send with blank checksums at the end: its transmit checksum
    features (``tx-checksum-ipv4``/``-ipv6``) on exactly where expected. For a command the
    device is invisible: the IUT must then at least have written its status key."""

    ipv4: bool
    ipv6: bool

    def expectation(self, role: Role) -> str:
        def word(flag: bool) -> str:
            return "may" if flag else "must not"

        towards = "the guest" if role is Role.BACKEND else "dom0"
        return (f"its device {word(self.ipv4)} send blank IPv4 and {word(self.ipv6)} send "
                f"blank IPv6 checksums to {towards}")

    def judge(self, obs: Observation) -> Finding:
        if obs.device is None:
            status = obs.own(STATUS)
            if status is None:
                return _bad(self, obs, f"device not visible and no {STATUS} written", None)
            return _ok(self, obs, f"device not visible (command); {STATUS}={status!r}")
        got = (obs.device.get("tx-checksum-ipv4", False), obs.device.get("tx-checksum-ipv6",
                                                                            False))
        shown = f"tx-checksum-ipv4={'on' if got[0] else 'off'} " \
                f"tx-checksum-ipv6={'on' if got[1] else 'off'}"
        if got == (self.ipv4, self.ipv6):
            return _ok(self, obs, shown)
        return _bad(self, obs, shown, None)


@attrs.frozen
class StatusWritten(Judge):
    """The IUT wrote ``xenoffload-csum-status`` with ``value``."""

    value: bytes = b"ok"

    def expectation(self, role: Role) -> str:
        return f"writes {STATUS}={self.value.decode()}"

    def judge(self, obs: Observation) -> Finding:
        got = obs.own(STATUS)
        if got == self.value:
            return _ok(self, obs, f"{STATUS}={got.decode()}")
        return _bad(self, obs, f"{STATUS}={got!r}", None)


@attrs.frozen
class AdvertisesOwnKeys(Judge):
    """The IUT's own keys end as ``tx``/``rx`` (ipv4, ipv6)."""

    tx: tuple[bool, bool]
    rx: tuple[bool, bool]

    def wanted(self) -> dict[str, bytes]:
        def flag(value: bool) -> bytes:
            return b"1" if value else b"0"

        return {"feature-csum-tx": flag(self.tx[0]), "feature-csum-tx-ipv6": flag(self.tx[1]),
                "feature-csum-rx": flag(self.rx[0]), "feature-csum-rx-ipv6": flag(self.rx[1])}

    def expectation(self, role: Role) -> str:
        return "advertises " + " ".join(f"{k}={v.decode()}" for k, v in self.wanted().items())

    def judge(self, obs: Observation) -> Finding:
        got = {name: obs.own(name) for name in self.wanted()}
        shown = " ".join(f"{k}={'absent' if v is None else v.decode('latin-1')}"
                         for k, v in got.items())
        if got == self.wanted():
            return _ok(self, obs, shown)
        return _bad(self, obs, shown, None)


@attrs.frozen
class LegacyKeysConsistent(Judge):
    """R4: the legacy keys beside the own ones say what they say, so that a stock driver on
    the other side behaves as negotiated: frontend ``feature-no-csum-offload`` = not rx ipv4,
    both ends ``feature-ipv6-csum-offload`` = rx ipv6."""

    def expectation(self, role: Role) -> str:
        if role is Role.FRONTEND:
            return ("writes feature-no-csum-offload = not feature-csum-rx and "
                    "feature-ipv6-csum-offload = feature-csum-rx-ipv6")
        return "writes feature-ipv6-csum-offload = feature-csum-rx-ipv6"

    def judge(self, obs: Observation) -> Finding:
        rx4, rx6 = obs.own("feature-csum-rx"), obs.own("feature-csum-rx-ipv6")
        if rx4 not in (b"0", b"1") or rx6 not in (b"0", b"1"):
            return _bad(self, obs, f"own rx keys are {rx4!r}/{rx6!r}", None)
        wanted = {"feature-ipv6-csum-offload": rx6}
        if obs.role is Role.FRONTEND:
            wanted["feature-no-csum-offload"] = b"0" if rx4 == b"1" else b"1"
        got = {name: obs.own(name) for name in wanted}
        shown = " ".join(f"{k}={v!r}" for k, v in got.items())
        if got == wanted:
            return _ok(self, obs, shown)
        return _bad(self, obs, f"{shown} beside feature-csum-rx={rx4!r} "
                    f"feature-csum-rx-ipv6={rx6!r}", None)


@attrs.frozen
class NeverWritesState(Judge):
    """R10: a companion never writes ``state`` (the kernel driver owns it)."""

    def expectation(self, role: Role) -> str:
        return "never writes its state node (companion mode)"

    def judge(self, obs: Observation) -> Finding:
        state = f"{obs.own_dir}/state"
        for op in obs.ops:
            if op.op in MUTATING_OPS and under(state, op.path) and op.op != "MKDIR":
                return _bad(self, obs, f"{op.op} {op.path}", op.position)
        return _ok(self, obs, "no write of state")


@attrs.frozen
class QuietAfter(Judge):
    """R11: from step ``first`` on (values rewritten unchanged, a reconnect) the IUT writes
    nothing and applies nothing new."""

    first: int

    def expectation(self, role: Role) -> str:
        return f"from step {self.first + 1} on writes nothing and re-applies nothing"

    def judge(self, obs: Observation) -> Finding:
        start = obs.mark(self.first)
        if start is None:
            return _bad(self, obs, f"step {self.first + 1} was never reached", None)
        for op in obs.ops:
            if op.position >= start.position and op.op in MUTATING_OPS and op.ok:
                return _bad(self, obs, f"{op.op} {op.path}", op.position)
        if start.applies is not None and obs.applies is not None and \
                obs.applies != start.applies:
            return _bad(self, obs, f"{obs.applies - start.applies} more toggle applies",
                        start.position)
        return _ok(self, obs, "no writes, no applies")


@attrs.frozen
class NoWritesAfterRemoval(Judge):
    """R14: once its directory is removed, the IUT writes nothing that re-creates it."""

    first: int

    def expectation(self, role: Role) -> str:
        return f"after step {self.first + 1} never re-creates its directory"

    def judge(self, obs: Observation) -> Finding:
        first = obs.mark(self.first)
        if first is None:
            return _bad(self, obs, f"step {self.first + 1} was never reached", None)
        start = first.position
        for effect in obs.effects:
            if effect.position < start:
                continue
            for path, value in effect.writes:
                if value is not None and under(path, obs.own_dir):
                    return _bad(self, obs, f"wrote {path}", effect.position)
        leftovers = [path for path in obs.final if under(path, obs.own_dir)]
        if leftovers:
            return _bad(self, obs, f"{obs.own_dir} exists at the end", None)
        return _ok(self, obs, f"{obs.own_dir} stays removed")


@attrs.frozen
class NoStateChangeAfter(Judge):
    """R12: from step ``first`` on the IUT writes no new state: a feature change while
    Connected is renegotiated without a reconnect."""

    first: int

    def expectation(self, role: Role) -> str:
        return f"from step {self.first + 1} on stays Connected without writing its state"

    def judge(self, obs: Observation) -> Finding:
        first = obs.mark(self.first)
        if first is None:
            return _bad(self, obs, f"step {self.first + 1} was never reached", None)
        for position, value in obs.own_states():
            if position >= first.position:
                return _bad(self, obs, f"wrote state {_state_text(value)}", position)
        return _ok(self, obs, "no state written")
