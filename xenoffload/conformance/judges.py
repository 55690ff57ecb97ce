"""Judges: what an implementation under test must have done, checked on what it did.

An :class:`Observation` holds everything the suite saw of one scenario run: the IUT's requests
(from the server's per-connection log), where each peer step began, the final contents of both
vif directories and, when the suite can see it, the IUT's simulated kernel device. A judge
turns it into a :class:`Finding` saying what was expected, what was observed and at which
step. Judges never look inside the IUT.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import ClassVar

import attrs

from xenoffload.conformance.lab import DEVID, GUEST_DOMID, QuietPoint
from xenoffload.conformance.observe import (
    MUTATING_OPS,
    Access,
    Effect,
    WireOp,
    accesses,
    effects,
    show_value,
    state_history,
    under,
)
from xenoffload.devicelog import DeviceLine
from xenoffload.machine import LEGAL_TRANSITIONS, Mode
from xenoffload.negotiation import (
    LinkResult,
    ResultValueError,
    decide,
    format_result,
    parse_result,
)
from xenoffload.schema import (
    LEGACY_IPV6_CSUM_OFFLOAD,
    LEGACY_NO_CSUM_OFFLOAD,
    OWN_KEYS,
    READ_KEYS,
    RESULT_KEY,
    STATUS_KEY,
    Advertisement,
    Family,
    FamilyFlags,
    Role,
    parse_advertisement,
)
from xenoffload.xenbus import XenbusState, parse_state

__all__ = [
    "AdvertisesOwnKeys",
    "AtQuietPoint",
    "AtomicAnnouncements",
    "BoundedWatches",
    "DeviceEvidence",
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
    "QuietWhenIdle",
    "ReachesState",
    "ResultAgrees",
    "SendsBlank",
    "SnapshotInOneTransaction",
    "StateOnlyOnChange",
    "StatusWritten",
    "WATCH_LIMIT",
    "announcement_keys",
    "device_evidence",
    "expected_result",
    "announcement_problem",
]

S = XenbusState
#: xenoffload's own feature keys (docs/protocol.md, R1).
OWN_FEATURE_KEYS = tuple(OWN_KEYS.values())
LEGACY_KEYS = (LEGACY_NO_CSUM_OFFLOAD, LEGACY_IPV6_CSUM_OFFLOAD)
CONNECTED = S.CONNECTED.wire
#: Most watches an implementation of one vif may hold at once on one connection.
WATCH_LIMIT = 16


def _state_text(value: bytes | None) -> str:
    if value is None:
        return "absent"
    state = parse_state(value)
    return repr(value) if state is None else f"{state}({int(state)})"


def _show(value: bytes | None) -> str:
    return "absent" if value is None else show_value(value)


def _sends_text(flags: FamilyFlags) -> str:
    return (f"tx-checksum-ipv4={'on' if flags.ipv4 else 'off'} "
            f"tx-checksum-ipv6={'on' if flags.ipv6 else 'off'}")


def announcement_keys(role: Role) -> tuple[str, ...]:
    """The keys one announcement of an end of ``role`` consists of: the four own keys and the
    legacy keys it writes beside them (docs/protocol.md, R4)."""
    legacy = LEGACY_KEYS if role is Role.FRONTEND else (LEGACY_IPV6_CSUM_OFFLOAD,)
    return (*OWN_FEATURE_KEYS, *legacy)


def expected_result(dump: Mapping[str, bytes], backend_dir: str,
                    frontend_dir: str) -> LinkResult:
    """Return what :func:`~xenoffload.negotiation.decide` makes of the two advertisements in
    ``dump`` (absolute path -> value), each read as xenoffload reads a peer's."""
    def advertisement(directory: str) -> Advertisement:
        keys = {name: dump.get(f"{directory}/{name}") for name in READ_KEYS}
        return parse_advertisement(directory, keys).advertisement

    return decide(advertisement(backend_dir), advertisement(frontend_dir))


def announcement_problem(role: Role, value: Callable[[str], bytes | None]) -> str | None:
    """Return what is wrong with an end's announcement as ``value`` (key name -> its value)
    shows it: an own key absent or not ``0``/``1``, or a legacy key absent or inconsistent with
    the own keys (R4); None when it is complete and consistent."""
    own = {name: value(name) for name in OWN_FEATURE_KEYS}
    bad = [f"{name}={_show(raw)}" for name, raw in own.items() if raw not in (b"0", b"1")]
    if bad:
        return "own keys incomplete: " + " ".join(bad)
    rx4, rx6 = own[OWN_KEYS[("rx", Family.IPV4)]], own[OWN_KEYS[("rx", Family.IPV6)]]
    wanted = {LEGACY_IPV6_CSUM_OFFLOAD: rx6}
    if role is Role.FRONTEND:
        wanted[LEGACY_NO_CSUM_OFFLOAD] = b"0" if rx4 == b"1" else b"1"
    wrong = [f"{name}={_show(value(name))}" for name, want in wanted.items()
             if value(name) != want]
    if wrong:
        return (f"{' '.join(wrong)} beside feature-csum-rx={_show(rx4)} "
                f"feature-csum-rx-ipv6={_show(rx6)}")
    return None


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
    """What the suite saw of one run: the IUT's requests (``ops``) and the harness's
    (``harness_ops``), where each step began, every wait for the IUT to settle, the final
    contents of both vif directories, the IUT's simulated device (in-process IUTs) and its
    device log (None: it has none)."""

    role: Role
    mode: Mode
    own_dir: str
    peer_dir: str
    ops: tuple[WireOp, ...]
    marks: tuple[Mark, ...]
    final: Mapping[str, bytes]
    device: Mapping[str, bool] | None = None
    applies: int | None = None
    harness_ops: tuple[WireOp, ...] = ()
    quiet_points: tuple[QuietPoint, ...] = ()
    device_log: tuple[DeviceLine, ...] | None = None
    device_log_problems: tuple[str, ...] = ()

    @functools.cached_property
    def effects(self) -> list[Effect]:
        return effects(self.ops)

    @functools.cached_property
    def all_effects(self) -> list[tuple[bool, Effect]]:
        """Every visible change by anyone, in order: (made by the IUT, effect)."""
        mine = {op.conn_id for op in self.ops}
        merged = sorted((*self.ops, *self.harness_ops), key=lambda op: op.position)
        return [(effect.conn_id in mine, effect) for effect in effects(merged)]

    @functools.cached_property
    def reads(self) -> list[Access]:
        return accesses(self.ops)

    @property
    def backend_dir(self) -> str:
        return self.own_dir if self.role is Role.BACKEND else self.peer_dir

    @property
    def frontend_dir(self) -> str:
        return self.peer_dir if self.role is Role.BACKEND else self.own_dir

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

    def step_index_at(self, position: int) -> int:
        """Return the index of the step during which ``position`` happened (-1: before)."""
        index = -1
        for mark in self.marks:
            if mark.position <= position:
                index = mark.index
        return index

    def mark(self, index: int) -> Mark | None:
        """Return where step ``index`` began (None: the run stopped before it)."""
        return self.marks[index] if index < len(self.marks) else None

    def own_states(self) -> list[tuple[int, bytes | None]]:
        """The IUT's own ``state`` values as its own writes made them visible."""
        return state_history(self.effects, self.own_dir)

    def both_connected(self, dump: Mapping[str, bytes]) -> bool:
        return dump.get(f"{self.own_dir}/state") == CONNECTED and \
            dump.get(f"{self.peer_dir}/state") == CONNECTED

    def expected_at(self, dump: Mapping[str, bytes]) -> LinkResult:
        """What the two advertisements in ``dump`` give (docs/protocol.md, R5)."""
        return expected_result(dump, self.backend_dir, self.frontend_dir)

    def device_told(self, lines: int | None = None) -> DeviceLine | None:
        """The last device-log line among the first ``lines`` (None: all)."""
        if not self.device_log:
            return None
        told = self.device_log if lines is None else self.device_log[:lines]
        return told[-1] if told else None


@attrs.frozen
class Finding:
    """One judge's conclusion. ``rule`` names the rule a judge that runs in every scenario
    checks (None: the scenario's own rule); ``unchecked`` says what it could not check."""

    passed: bool
    expected: str
    observed: str
    step: str | None = None
    rule: str | None = None
    unchecked: tuple[str, ...] = ()


class Judge:
    """Checks one property of an observation. ``RULE`` is the rule it checks when it runs in
    every scenario (None for judges that check the scenario's own rule)."""

    RULE: ClassVar[str | None] = None

    def expectation(self, role: Role) -> str:
        """Say in one line what the IUT of ``role`` must do (docs, verdicts)."""
        raise NotImplementedError

    def judge(self, obs: Observation) -> Finding:
        raise NotImplementedError


def _ok(judge: Judge, obs: Observation, observed: str, unchecked: Iterable[str] = ()) -> Finding:
    return Finding(True, judge.expectation(obs.role), observed, None, judge.RULE,
                   tuple(unchecked))


def _bad(judge: Judge, obs: Observation, observed: str, position: int | None) -> Finding:
    step = obs.step_at(position) if position is not None else None
    return Finding(False, judge.expectation(obs.role), observed, step, judge.RULE)


@attrs.frozen
class OwnDirectoryOnly(Judge):
    """R1: every write, mkdir, rm or set-perms the IUT sends names its own directory (and,
    when ``require_writes``, it writes something)."""

    RULE = "R1"
    require_writes: bool = True

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
        if count == 0 and self.require_writes:
            return _bad(self, obs, "it wrote nothing at all", None)
        return _ok(self, obs, f"{count} writes, all inside {obs.own_dir}")


@attrs.frozen
class KeysBeforeState(Judge):
    """R8/R9: when the IUT's ``state`` becomes one that lets the peer read its features
    (backend: InitWait or Connected; frontend: Connected), its feature keys are already
    visible: written earlier or in the same transaction. ``require`` : it must get there."""

    RULE = "R9"
    require: bool = True

    def gated(self, role: Role) -> tuple[bytes, ...]:
        return (S.INIT_WAIT.wire, CONNECTED) if role is Role.BACKEND else (CONNECTED,)

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
        if not reached and self.require:
            return _bad(self, obs, "its state never became "
                        + " or ".join(_state_text(s) for s in self.gated(obs.role)), None)
        return _ok(self, obs, f"keys present at each of {reached} such state changes")


@attrs.frozen
class SnapshotInOneTransaction(Judge):
    """R11: the IUT reads the peer's ``state`` and feature keys only inside a transaction that
    also reads the peer's and its own ``state`` (so it acts on one snapshot, never on a state
    or a key read alone); with ``require_reads`` it must read the peer's feature keys."""

    RULE = "R11"
    require_reads: bool = True

    def expectation(self, role: Role) -> str:
        return ("reads the peer's state and feature keys only in a transaction that also reads "
                "both states")

    def judge(self, obs: Observation) -> Finding:
        feature_paths = {f"{obs.peer_dir}/{name}" for name in READ_KEYS}
        peer_state = f"{obs.peer_dir}/state"
        by_txn: dict[tuple[int, int], set[str]] = {}
        for read in obs.reads:
            if read.tx_id:
                by_txn.setdefault((read.conn_id, read.tx_id), set()).add(read.path)
        needed = {peer_state, f"{obs.own_dir}/state"}
        count = 0
        for read in obs.reads:
            if read.path not in feature_paths and read.path != peer_state:
                continue
            count += read.path in feature_paths
            if not read.tx_id:
                return _bad(self, obs, f"read {read.path} outside any transaction",
                            read.position)
            missing = needed - by_txn[(read.conn_id, read.tx_id)]
            if missing:
                return _bad(self, obs, f"read {read.path} in a transaction that did not read "
                            + " ".join(sorted(missing)), read.position)
        if not count and self.require_reads:
            return _bad(self, obs, "it never read the peer's feature keys", None)
        return _ok(self, obs, f"{count} reads of peer feature keys, each in a snapshot")


@attrs.frozen
class ReachesState(Judge):
    """The IUT's ``state`` (or, in companion mode, the kernel's) ends as ``state``."""

    state: XenbusState

    def expectation(self, role: Role) -> str:
        return f"its state ends {_state_text(self.state.wire)}"

    def judge(self, obs: Observation) -> Finding:
        final = obs.own("state")
        if final == self.state.wire:
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
            if position >= start and (stop is None or position < stop) and value == CONNECTED:
                return _bad(self, obs, "wrote state Connected(4)", position)
        return _ok(self, obs, "never wrote Connected in that window")


@attrs.frozen
class LeftAndReturned(Judge):
    """From step ``first`` on, the IUT's state leaves Connected/InitWait (passing one of
    ``through``) and then becomes ``back`` again: it renegotiated from scratch."""

    first: int
    through: tuple[XenbusState, ...]
    back: XenbusState = S.CONNECTED

    def expectation(self, role: Role) -> str:
        names = " or ".join(_state_text(s.wire) for s in self.through)
        return (f"after step {self.first + 1} passes {names}, then "
                f"{_state_text(self.back.wire)} again")

    def judge(self, obs: Observation) -> Finding:
        first = obs.mark(self.first)
        if first is None:
            return _bad(self, obs, f"step {self.first + 1} was never reached", None)
        start = first.position
        seen = [value for position, value in obs.own_states() if position >= start]
        through = {s.wire for s in self.through}
        shown = " -> ".join(_state_text(v) for v in seen) or "no state change"
        for index, value in enumerate(seen):
            if value in through and self.back.wire in seen[index + 1:]:
                return _ok(self, obs, shown)
        return _bad(self, obs, shown, start)


@attrs.frozen
class LegalOwnTransitions(Judge):
    """Every change of the IUT's own state that a peer can see is in the legal set
    (docs/protocol.md, 'Legal ... transitions'; R13 judges a peer by it)."""

    RULE = "R13"

    def expectation(self, role: Role) -> str:
        return "every state change a peer can see is a legal transition"

    def judge(self, obs: Observation) -> Finding:
        legal = LEGAL_TRANSITIONS[obs.role]
        previous: XenbusState | None = XenbusState.INITIALISING
        changes = 0
        for position, value in obs.own_states():
            new = parse_state(value) if value is not None else None
            if value is not None and new is None:
                return _bad(self, obs, f"wrote state {value!r}", position)
            if new is None or previous is None or new == previous:
                previous = new
                continue
            changes += 1
            if (previous, new) not in legal:
                return _bad(self, obs, f"state went {previous} -> {new}", position)
            previous = new
        return _ok(self, obs, f"{changes} state changes, all legal")


def _word(flag: bool) -> str:
    return "may" if flag else "must not"


def _sends_expectation(role: Role, sends: FamilyFlags) -> str:
    towards = "the guest" if role is Role.BACKEND else "dom0"
    return (f"its device {_word(sends.ipv4)} send blank IPv4 and {_word(sends.ipv6)} send "
            f"blank IPv6 checksums to {towards}")


@attrs.frozen
class DeviceEvidence:
    """What the harness could learn about the IUT's device at one moment: ``sends`` (None: it
    could not tell), how it knows (``source``) and, when it could not tell, why not."""

    sends: FamilyFlags | None
    source: str
    missing: str = ""


def device_evidence(obs: Observation, device: Mapping[str, bool] | None,
                    device_lines: int | None, dump: Mapping[str, bytes]) -> DeviceEvidence:
    """Return what the best available channel says the IUT's device may send with blank
    checksums: its simulated device (in-process), else its device log, else the
    ``xenoffload-csum-result`` it published; else nothing (``missing`` says why)."""
    if device is not None:
        sends = FamilyFlags(device.get("tx-checksum-ipv4", False),
                            device.get("tx-checksum-ipv6", False))
        return DeviceEvidence(sends, f"device {_sends_text(sends)}")
    if obs.device_log is not None:
        told = obs.device_told(device_lines)
        if told is None:
            return DeviceEvidence(None, "device log", "its device log has no line yet")
        return DeviceEvidence(told.result.sends(obs.role),
                              f"device log: {format_result(told.result).decode()}")
    raw = dump.get(f"{obs.own_dir}/{RESULT_KEY}")
    if raw is None:
        return DeviceEvidence(None, "none", f"no device log and no {RESULT_KEY}")
    try:
        result = parse_result(raw)
    except ResultValueError:
        return DeviceEvidence(None, RESULT_KEY, f"{RESULT_KEY}={raw[:64]!r} is malformed")
    return DeviceEvidence(result.sends(obs.role), f"{RESULT_KEY}={raw.decode()}")


@attrs.frozen
class SendsBlank(Judge):
    """What the IUT's device may send with blank checksums at the end: exactly ``ipv4`` and
    ``ipv6``. Seen on the simulated device (in-process), else the device log's last line,
    else the published ``xenoffload-csum-result``; with none of them only the status key is
    checked and the finding says the device check could not be made."""

    ipv4: bool
    ipv6: bool

    def expectation(self, role: Role) -> str:
        return _sends_expectation(role, FamilyFlags(self.ipv4, self.ipv6))

    def judge(self, obs: Observation) -> Finding:
        evidence = device_evidence(obs, obs.device, None, obs.final)
        if evidence.sends is None:
            status = obs.own(STATUS_KEY)
            if evidence.source == "device log" or status is None:
                return _bad(self, obs, f"{evidence.missing}; {STATUS_KEY}={_show(status)}", None)
            return _ok(self, obs, f"{STATUS_KEY}={status.decode('latin-1')}",
                       [f"what its device may send ({evidence.missing})"])
        if evidence.sends == FamilyFlags(self.ipv4, self.ipv6):
            return _ok(self, obs, evidence.source)
        return _bad(self, obs, evidence.source, None)


@attrs.frozen
class StatusWritten(Judge):
    """The IUT wrote ``xenoffload-csum-status`` with ``value``."""

    value: bytes = b"ok"

    def expectation(self, role: Role) -> str:
        return f"writes {STATUS_KEY}={self.value.decode()}"

    def judge(self, obs: Observation) -> Finding:
        got = obs.own(STATUS_KEY)
        if got == self.value:
            return _ok(self, obs, f"{STATUS_KEY}={got.decode()}")
        return _bad(self, obs, f"{STATUS_KEY}={got!r}", None)


@attrs.frozen
class AdvertisesOwnKeys(Judge):
    """The IUT's own keys end as ``tx``/``rx`` (ipv4, ipv6)."""

    tx: tuple[bool, bool]
    rx: tuple[bool, bool]

    def wanted(self) -> dict[str, bytes]:
        def flag(value: bool) -> bytes:
            return b"1" if value else b"0"

        return {OWN_KEYS[("tx", Family.IPV4)]: flag(self.tx[0]),
                OWN_KEYS[("tx", Family.IPV6)]: flag(self.tx[1]),
                OWN_KEYS[("rx", Family.IPV4)]: flag(self.rx[0]),
                OWN_KEYS[("rx", Family.IPV6)]: flag(self.rx[1])}

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
        problem = announcement_problem(obs.role, lambda name: obs.own(name))
        if problem is None:
            shown = " ".join(f"{name}={_show(obs.own(name))}"
                             for name in announcement_keys(obs.role)[len(OWN_FEATURE_KEYS):])
            return _ok(self, obs, shown)
        return _bad(self, obs, problem, None)


@attrs.frozen
class NeverWritesState(Judge):
    """R10: a companion never writes ``state`` (the kernel driver owns it)."""

    RULE = "R10"

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


# ------------------------------------------------------------------------ checked in every run

@attrs.frozen
class AtomicAnnouncements(Judge):
    """R8: one announcement is one transaction. After every transaction (or plain write) of
    the IUT that writes any of its announcement keys, the four own keys are there with ``0``
    or ``1`` and the legacy keys beside them agree (R4); and the keys the IUT changes in
    reaction to one step change in one transaction, not in several."""

    RULE = "R8"

    def expectation(self, role: Role) -> str:
        return ("writes its own keys, its legacy keys (and a state change with them) in one "
                "transaction")

    def judge(self, obs: Observation) -> Finding:
        names = {f"{obs.own_dir}/{name}" for name in announcement_keys(obs.role)}
        tree: dict[str, bytes] = {}
        changed_in: dict[int, int] = {}
        announcements = 0
        for by_iut, effect in obs.all_effects:
            before = {path: tree.get(path) for path in names}
            for path, value in effect.writes:
                if value is None:
                    for old in [p for p in tree if under(p, path)]:
                        del tree[old]
                else:
                    tree[path] = value
            if not any(path in names for path, _ in effect.writes):
                continue
            if not by_iut:
                changed_in.clear()  # someone else wrote them: the IUT may correct them
                continue
            announcements += 1
            problem = announcement_problem(obs.role,
                                     lambda name: tree.get(f"{obs.own_dir}/{name}"))
            if problem is not None:
                return _bad(self, obs, f"after one of its transactions: {problem}",
                            effect.position)
            if any(tree.get(path) != before[path] for path in names):
                step = obs.step_index_at(effect.position)
                if step in changed_in:
                    return _bad(self, obs, "changed its announcement in two transactions "
                                f"(request {changed_in[step]}, then {effect.position})",
                                effect.position)
                changed_in[step] = effect.position
        return _ok(self, obs, f"{announcements} announcements, each complete in one transaction")


@attrs.frozen
class StateOnlyOnChange(Judge):
    """R8: the IUT writes ``state`` only to change it; rewriting the value it holds tells
    the peer of a transition that did not happen."""

    RULE = "R8"

    def expectation(self, role: Role) -> str:
        return "writes its state only to change it"

    def judge(self, obs: Observation) -> Finding:
        state = f"{obs.own_dir}/state"
        current: bytes | None = None
        writes = 0
        for by_iut, effect in obs.all_effects:
            new = current
            wrote = False
            for path, value in effect.writes:
                if path == state:
                    new, wrote = value, True
                elif value is None and under(state, path):
                    new = None
            if by_iut and wrote:
                writes += 1
                if new == current:
                    return _bad(self, obs, f"rewrote state {_state_text(new)} while it held "
                                "that value", effect.position)
            current = new
        return _ok(self, obs, f"{writes} state writes, each a change")


@attrs.frozen
class QuietWhenIdle(Judge):
    """R11: once it has reacted to a change, the IUT waits for the next watch event: every
    wait for it to settle ends quiet, within the busy limit (a poller or a watch loop that
    feeds itself is never quiet)."""

    RULE = "R11"

    def expectation(self, role: Role) -> str:
        return "becomes quiet after reacting to each change (no polling, no spinning)"

    def judge(self, obs: Observation) -> Finding:
        for point in obs.quiet_points:
            if point.wait.outcome == "busy":
                return _bad(self, obs, point.wait.describe() + " after the last change "
                            "(it polls or spins instead of waiting for watch events)",
                            point.wait.end)
        total = sum(point.wait.requests for point in obs.quiet_points)
        return _ok(self, obs, f"quiet {len(obs.quiet_points)} times, {total} requests while "
                   "waited for")


@attrs.frozen
class BoundedWatches(Judge):
    """R11: watches are set once: the IUT never re-registers a watch it holds and holds at
    most :data:`WATCH_LIMIT` at once on a connection."""

    RULE = "R11"

    def expectation(self, role: Role) -> str:
        return f"sets each watch once and holds at most {WATCH_LIMIT} at a time"

    def judge(self, obs: Observation) -> Finding:
        held: dict[int, set[tuple[str, bytes]]] = {}
        most = 0
        for op in obs.ops:
            if op.op not in ("WATCH", "UNWATCH"):
                continue
            raw = (op.path, op.value or b"")
            mine = held.setdefault(op.conn_id, set())
            if op.op == "UNWATCH":
                mine.discard(raw)
                continue
            if raw in mine or (not op.ok and op.reply.startswith(b"EEXIST")):
                return _bad(self, obs, f"set the watch {op.path} again while holding it",
                            op.position)
            if op.ok:
                mine.add(raw)
                most = max(most, len(mine))
                if len(mine) > WATCH_LIMIT:
                    return _bad(self, obs, f"holds {len(mine)} watches at once (it re-arms "
                                "them with new tokens)", op.position)
        return _ok(self, obs, f"at most {most} watches at once")


@attrs.frozen
class ResultAgrees(Judge):
    """R6: whenever both ends are Connected and the IUT has settled, the result it published
    (``xenoffload-csum-result``) and the last one it told its device (device log) equal what
    the two advertisements in the store give. What it does not show cannot be checked; the
    finding says so."""

    RULE = "R6"

    def expectation(self, role: Role) -> str:
        return ("when both ends are Connected and quiet, its published result and its device "
                "agree with the advertisements in the store")

    def judge(self, obs: Observation) -> Finding:
        if obs.device_log_problems:
            return _bad(self, obs, "device log: " + obs.device_log_problems[0], None)
        for line in obs.device_log or ():
            if line.role is not obs.role or (line.domid, line.devid) != (GUEST_DOMID, DEVID):
                return _bad(self, obs, f"device log names {line.role.value} "
                            f"{line.domid}/{line.devid}, not the {obs.role.value} of "
                            f"{GUEST_DOMID}/{DEVID}", None)
        checked = unpublished = 0
        for point in obs.quiet_points:
            if not point.wait.settled or not obs.both_connected(point.dump):
                continue
            checked += 1
            want = format_result(obs.expected_at(point.dump)).decode()
            where = point.wait.end
            raw = point.dump.get(f"{obs.own_dir}/{RESULT_KEY}")
            if raw is None:
                unpublished += 1
            else:
                try:
                    published = format_result(parse_result(raw)).decode()
                except ResultValueError:
                    return _bad(self, obs, f"published {RESULT_KEY}={_show(raw)}, outside "
                                "its grammar", where)
                if published != want:
                    return _bad(self, obs, f"published {RESULT_KEY}={published} while the "
                                f"advertisements give {want}", where)
            if obs.device_log is not None:
                told = obs.device_told(point.device_lines)
                if told is None:
                    return _bad(self, obs, f"its device was never told a result (the "
                                f"advertisements give {want})", where)
                if format_result(told.result).decode() != want:
                    return _bad(self, obs, f"its device was last told "
                                f"{format_result(told.result).decode()} while the "
                                f"advertisements give {want}", where)
        unchecked = []
        if unpublished and obs.device_log is None:
            unchecked.append(f"whether it applied what the advertisements give, at "
                             f"{unpublished} of {checked} quiet points (no {RESULT_KEY}, "
                             "no device log)")
        seen = checked if obs.device_log is not None else checked - unpublished
        return _ok(self, obs, f"agreed at {seen} of {checked} quiet points with both "
                   "Connected", unchecked)


@attrs.frozen
class AtQuietPoint(Judge):
    """When the IUT settled during step ``step`` (after the change of the step before), its
    device may send blank checksums exactly as ``sends`` says and (when given) it advertises
    ``advertises`` (tx, rx; each (ipv4, ipv6))."""

    step: int
    sends: tuple[bool, bool] | None = None
    advertises: tuple[tuple[bool, bool], tuple[bool, bool]] | None = None

    def expectation(self, role: Role) -> str:
        parts = []
        if self.sends is not None:
            parts.append(_sends_expectation(role, FamilyFlags(*self.sends)))
        if self.advertises is not None:
            parts.append(AdvertisesOwnKeys(*self.advertises).expectation(role))
        return f"at step {self.step + 1}: " + "; ".join(parts)

    def judge(self, obs: Observation) -> Finding:
        point = next((p for p in obs.quiet_points if p.step == self.step), None)
        if point is None or not point.wait.settled:
            return _bad(self, obs, f"step {self.step + 1} never settled", None)
        where = point.wait.end
        unchecked = []
        shown = []
        if self.advertises is not None:
            wanted = AdvertisesOwnKeys(*self.advertises).wanted()
            got = {name: point.dump.get(f"{obs.own_dir}/{name}") for name in wanted}
            text = " ".join(f"{name}={_show(value)}" for name, value in got.items())
            if got != wanted:
                return _bad(self, obs, text, where)
            shown.append(text)
        if self.sends is not None:
            evidence = device_evidence(obs, point.device, point.device_lines, point.dump)
            if evidence.sends is None:
                unchecked.append(f"what its device may send at step {self.step + 1} "
                                 f"({evidence.missing})")
            elif evidence.sends != FamilyFlags(*self.sends):
                return _bad(self, obs, evidence.source, where)
            else:
                shown.append(evidence.source)
        return _ok(self, obs, "; ".join(shown) or "nothing visible", unchecked)
