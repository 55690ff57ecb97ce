"""The state machine tables and the machine that runs them, without any store."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from xenoffload import machine as machine_module
from xenoffload.machine import (
    LEGAL_TRANSITIONS,
    TRACKED_KEYS,
    TRANSITIONS,
    IllegalTransition,
    Mode,
    Snapshot,
    Step,
    VifMachine,
    Violation,
    ViolationKind,
    check_transition,
    freeze_transitions,
    needs_peer_keys,
    next_state,
    walk,
)
from xenoffload.negotiation import LinkPolicy, LinkResult
from xenoffload.schema import READ_KEYS, RESULT_KEY, STATUS_KEY, FamilyFlags, Role
from xenoffload.xenbus import XenbusState as S

BACKEND_DIR = "/local/domain/0/backend/vif/1/0"
FRONTEND_DIR = "/local/domain/1/device/vif/0"
DIRS = {Role.BACKEND: BACKEND_DIR, Role.FRONTEND: FRONTEND_DIR}


@pytest.mark.parametrize("role", list(Role))
def test_every_table_transition_is_legal(role: Role) -> None:
    for own, row in TRANSITIONS[role].items():
        for peer, new in row.items():
            assert new == own or (own, new) in LEGAL_TRANSITIONS[role], (role, own, peer, new)


@pytest.mark.parametrize("role", list(Role))
def test_the_fixed_point_of_every_state_pair_terminates(role: Role) -> None:
    for own in S:
        for peer in S:
            path = walk(role, own, peer)  # raises if a move is illegal or the table loops
            assert next_state(role, path[-1], peer) == path[-1]


def test_an_illegal_transition_is_rejected_with_role_and_states() -> None:
    with pytest.raises(IllegalTransition, match=r"backend: .*InitWait -> Initialised"):
        check_transition(Role.BACKEND, S.INIT_WAIT, S.INITIALISED)


@pytest.mark.parametrize("role", list(Role))
def test_a_walk_raises_instead_of_stopping_silently_when_a_table_loops(
        role: Role, monkeypatch: pytest.MonkeyPatch) -> None:
    looping = {  # every move legal, but a cycle while the peer stays Closed
        Role.BACKEND: {S.CLOSED: {S.CLOSED: S.INIT_WAIT}, S.INIT_WAIT: {S.CLOSED: S.CLOSING},
                       S.CLOSING: {S.CLOSED: S.CLOSED}},
        Role.FRONTEND: {S.CLOSED: {S.CLOSED: S.INITIALISING},
                        S.INITIALISING: {S.CLOSED: S.CLOSED}}}[role]
    monkeypatch.setattr(machine_module, "TRANSITIONS",
                        freeze_transitions({**TRANSITIONS, role: looping}))
    with pytest.raises(RuntimeError, match="loops"):
        walk(role, S.CLOSED, S.CLOSED)


def test_the_tables_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[Role.BACKEND][S.INIT_WAIT][S.CLOSED] = S.CONNECTED  # type: ignore[index]
    with pytest.raises(TypeError):
        TRANSITIONS[Role.BACKEND] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        LEGAL_TRANSITIONS[Role.BACKEND] = frozenset()  # type: ignore[index]


def test_the_machines_state_is_read_only_outside_its_methods() -> None:
    machine = VifMachine(Role.BACKEND, Mode.FULL, LinkPolicy())
    for name, value in (("applied", LinkResult()), ("own_state", S.CONNECTED),
                        ("policy", LinkPolicy()), ("role", Role.FRONTEND),
                        ("own_keys", {}), ("observed", True)):
        with pytest.raises(AttributeError):
            setattr(machine, name, value)


class World:
    """Two XenStore directories as dicts, and the machines of both ends."""

    def __init__(self, modes: tuple[Mode, Mode] = (Mode.FULL, Mode.FULL)) -> None:
        self.dirs: dict[Role, dict[str, bytes]] = {
            Role.BACKEND: {"state": b"1"}, Role.FRONTEND: {"state": b"1"}}
        self.machines = {
            Role.BACKEND: VifMachine(Role.BACKEND, modes[0], LinkPolicy()),
            Role.FRONTEND: VifMachine(Role.FRONTEND, modes[1], LinkPolicy()),
        }
        self.results: dict[Role, LinkResult | None] = {Role.BACKEND: None, Role.FRONTEND: None}
        self.violations: list[Violation] = []
        self.states: dict[Role, list[S]] = {role: [] for role in Role}

    def snapshot(self, role: Role) -> Snapshot:
        own, peer = self.dirs[role], self.dirs[role.peer]
        machine = self.machines[role]
        return Snapshot(own.get("state"), peer.get("state"),
                        {k: peer.get(k) for k in READ_KEYS}
                        if needs_peer_keys(peer.get("state")) else {},
                        None if machine.knows_own_keys else
                        {k: own.get(k) for k in TRACKED_KEYS})

    def perform(self, role: Role, step: Step) -> None:
        """Carry out ``step`` as a driver would, and report it done."""
        machine = self.machines[role]
        self.violations.extend(step.violations)
        if step.enforce is not None:
            self.results[role] = step.enforce
        written = {**step.writes, **machine.announcement(
            step, "ok" if step.enforce is not None else None)}
        self.dirs[role].update(written)
        if step.state is not None:
            self.dirs[role]["state"] = step.state.wire
            self.states[role].append(step.state)
        machine.committed(step, written, applied=True)

    def step(self, role: Role) -> bool:
        """Observe until the walk stops; return whether anything was done."""
        moved = False
        while True:
            step = self.machines[role].observe(self.snapshot(role))
            self.perform(role, step)
            moved = moved or not step.idle
            if not step.again:
                return moved

    def settle(self) -> None:
        for _ in range(20):
            moved = self.step(Role.BACKEND) | self.step(Role.FRONTEND)
            if not moved:
                return
        raise AssertionError("did not settle")


def test_full_mode_pair_connects_and_agrees() -> None:
    world = World()
    world.settle()
    assert world.dirs[Role.BACKEND]["state"] == b"4"
    assert world.dirs[Role.FRONTEND]["state"] == b"4"
    assert world.results[Role.BACKEND] == world.results[Role.FRONTEND] == LinkResult()


def test_both_ends_publish_the_result_they_applied() -> None:
    world = World()
    world.settle()
    for role in Role:
        assert world.dirs[role][RESULT_KEY] == b"to-guest=none from-guest=none"
        assert world.dirs[role][STATUS_KEY] == b"ok"


def test_backend_is_never_connected_before_its_features_are_written() -> None:
    world = World()
    world.step(Role.BACKEND)
    assert world.dirs[Role.BACKEND]["state"] == b"2"
    assert "feature-csum-tx" in world.dirs[Role.BACKEND]


def test_policy_change_while_connected_reapplies_on_both_ends() -> None:
    world = World()
    world.settle()
    allow = LinkPolicy(FamilyFlags(True, True), FamilyFlags(True, False))
    for role in Role:
        assert world.machines[role].set_policy(allow)
        step = world.machines[role].recompute()
        assert step is not None
        world.perform(role, step)
    world.settle()
    expected = LinkResult(FamilyFlags(True, True), FamilyFlags(True, False))
    assert world.results[Role.BACKEND] == world.results[Role.FRONTEND] == expected
    assert world.dirs[Role.BACKEND]["state"] == world.dirs[Role.FRONTEND]["state"] == b"4"


def test_a_policy_undone_rewrites_the_keys_of_the_policy_in_force() -> None:
    """A -> B -> A: the keys follow the policy in force, not a remembered snapshot."""
    world = World()
    world.settle()
    computed = dict(world.dirs[Role.BACKEND])
    allow = LinkPolicy(FamilyFlags(True, True), FamilyFlags(True, True))
    for policy in (allow, LinkPolicy()):
        machine = world.machines[Role.BACKEND]
        assert machine.set_policy(policy)
        step = machine.recompute()
        assert step is not None and step.writes
        world.perform(Role.BACKEND, step)
        world.settle()
    assert {k: world.dirs[Role.BACKEND][k] for k in READ_KEYS if k in computed} == {
        k: computed[k] for k in READ_KEYS if k in computed}
    assert world.results[Role.BACKEND] == world.results[Role.FRONTEND] == LinkResult()


def test_keys_overwritten_by_someone_else_are_rewritten_once_the_machine_is_told() -> None:
    world = World()
    world.settle()
    world.dirs[Role.BACKEND]["feature-csum-tx"] = b"1"  # another writer
    world.machines[Role.BACKEND].lost_track()
    world.step(Role.BACKEND)
    assert world.dirs[Role.BACKEND]["feature-csum-tx"] == b"0"


def test_a_machine_that_lost_track_insists_on_reading_its_own_keys() -> None:
    machine = VifMachine(Role.BACKEND, Mode.FULL, LinkPolicy())
    with pytest.raises(ValueError, match="own keys"):
        machine.observe(Snapshot(b"1", b"1"))


def test_a_step_that_did_not_commit_leaves_the_machine_as_it_was() -> None:
    world = World()
    machine = world.machines[Role.BACKEND]
    before = attrs.asdict(machine, recurse=False)
    step = machine.observe(world.snapshot(Role.BACKEND))
    assert step.state is S.INIT_WAIT and step.writes
    assert attrs.asdict(machine, recurse=False) == before  # the transaction conflicted


def test_frontend_restart_renegotiates_from_scratch() -> None:
    world = World()
    world.settle()
    world.machines[Role.FRONTEND] = VifMachine(Role.FRONTEND, Mode.FULL, LinkPolicy())
    world.dirs[Role.FRONTEND] = {"state": b"1"}
    world.settle()
    assert world.dirs[Role.BACKEND]["state"] == world.dirs[Role.FRONTEND]["state"] == b"4"
    assert world.states[Role.BACKEND][-4:] == [S.CLOSING, S.CLOSED, S.INIT_WAIT, S.CONNECTED]


def test_each_state_of_a_walk_is_written_in_its_own_step() -> None:
    world = World()
    world.settle()
    world.dirs[Role.FRONTEND]["state"] = b"1"  # the guest rebooted
    world.step(Role.BACKEND)
    assert world.states[Role.BACKEND][-3:] == [S.CLOSING, S.CLOSED, S.INIT_WAIT]


def test_peer_skipping_states_is_reported() -> None:
    world = World()
    world.settle()
    world.dirs[Role.FRONTEND]["state"] = b"1"
    world.step(Role.BACKEND)
    world.dirs[Role.FRONTEND]["state"] = b"4"  # Initialising -> Connected is legal for netfront
    world.dirs[Role.BACKEND]["state"] = b"8"   # but a backend never goes InitWait -> Reconfigured
    world.step(Role.FRONTEND)
    assert [(v.kind, v.detail) for v in world.violations] == [
        (ViolationKind.PEER_SKIPPED_STATES, "Connected -> Initialising"),  # seen by the backend
        (ViolationKind.PEER_SKIPPED_STATES, "Connected -> Reconfigured")]  # by the frontend


def test_garbage_peer_state_is_refused_and_read_as_closed() -> None:
    world = World()
    world.settle()
    world.dirs[Role.FRONTEND]["state"] = b"\xff" * 100
    world.step(Role.BACKEND)
    assert world.violations and world.violations[-1].value == b"\xff" * 100
    assert world.violations[-1].kind is ViolationKind.PEER_STATE_MALFORMED
    assert world.dirs[Role.BACKEND]["state"] == b"6"  # via Closing


def test_companion_backend_writes_features_when_the_kernel_driver_waits() -> None:
    machine = VifMachine(Role.BACKEND, Mode.COMPANION, LinkPolicy())
    nothing: dict[str, bytes | None] = {}
    first = machine.observe(Snapshot(b"1", b"1", {}, nothing))
    assert first.idle
    machine.committed(first, {}, True)
    step = machine.observe(Snapshot(b"2", b"1"))
    assert step.state is None and step.writes["feature-csum-tx"] == b"0"


def test_companion_frontend_writes_features_once_the_backend_waits() -> None:
    machine = VifMachine(Role.FRONTEND, Mode.COMPANION, LinkPolicy())
    first = machine.observe(Snapshot(b"1", b"1", {}, {}))
    assert first.idle
    machine.committed(first, {}, True)
    step = machine.observe(Snapshot(b"1", b"2"))
    assert step.writes["feature-no-csum-offload"] == b"1"


@given(own=st.sampled_from([s.wire for s in S] + [None, b"junk"]),
       peer=st.sampled_from([s.wire for s in S] + [None, b"junk"]),
       role=st.sampled_from(Role))
def test_companion_mode_never_writes_state(own: bytes | None, peer: bytes | None,
                                           role: Role) -> None:
    machine = VifMachine(role, Mode.COMPANION, LinkPolicy())
    step = machine.observe(Snapshot(own, peer, {}, {}))
    assert step.state is None and not step.again


def test_same_snapshot_twice_yields_nothing_new() -> None:
    world = World()
    world.settle()
    assert world.machines[Role.BACKEND].observe(world.snapshot(Role.BACKEND)).idle


def test_removed_device_is_forgotten() -> None:
    machine = VifMachine(Role.BACKEND, Mode.FULL, LinkPolicy())
    step = machine.observe(Snapshot(None, b"1", {}, {}, own_present=False))
    assert step.forget and not step.writes and step.state is None


flag_st = st.builds(FamilyFlags, st.booleans(), st.booleans())
policy_st = st.builds(LinkPolicy, flag_st, flag_st)


class PairOfEnds(RuleBasedStateMachine):
    """Arbitrary event orders, restarts and policy changes; the pair converges."""

    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.history: dict[Role, list[S]] = {Role.BACKEND: [S.INITIALISING],
                                              Role.FRONTEND: [S.INITIALISING]}

    def _record(self, role: Role) -> None:
        for state in self.world.states[role]:
            if self.history[role][-1] != state:
                self.history[role].append(state)
        self.world.states[role].clear()

    @rule(role=st.sampled_from(Role))
    def step(self, role: Role) -> None:
        self.world.step(role)
        self._record(role)

    @rule(role=st.sampled_from(Role), policy=policy_st)
    def change_policy(self, role: Role, policy: LinkPolicy) -> None:
        machine = self.world.machines[role]
        if machine.set_policy(policy):
            step = machine.recompute()
            if step is not None:
                self.world.perform(role, step)
        self._record(role)

    @rule(role=st.sampled_from(Role))
    def restart(self, role: Role) -> None:
        """The end's process restarts (its machine forgets everything) or, for the frontend,
        the guest reboots (its directory starts again from Initialising)."""
        policy = self.world.machines[role].policy
        self.world.machines[role] = VifMachine(role, Mode.FULL, policy)
        if role is Role.FRONTEND:
            self.world.dirs[role] = {"state": b"1"}
            self.history[role].append(S.CLOSED)  # a reboot passes through teardown
            self.history[role].append(S.INITIALISING)

    @invariant()
    def own_moves_are_legal(self) -> None:
        for role in Role:
            for old, new in zip(self.history[role], self.history[role][1:], strict=False):
                assert old == new or (old, new) in LEGAL_TRANSITIONS[role] or \
                    new is S.INITIALISING, (role, self.history[role])

    @invariant()
    def settles_connected_with_equal_results(self) -> None:
        clone = World()
        clone.dirs = {role: dict(d) for role, d in self.world.dirs.items()}
        for role in Role:
            m = self.world.machines[role]
            clone.machines[role] = attrs.evolve(m)
            clone.results[role] = self.world.results[role]
        clone.settle()
        assert clone.dirs[Role.BACKEND]["state"] == b"4"
        assert clone.dirs[Role.FRONTEND]["state"] == b"4"
        assert clone.results[Role.BACKEND] == clone.results[Role.FRONTEND]
        b, f = clone.machines[Role.BACKEND], clone.machines[Role.FRONTEND]
        limit_to = b.policy.to_guest & f.policy.to_guest
        limit_from = b.policy.from_guest & f.policy.from_guest
        result = clone.results[Role.BACKEND]
        assert result is not None
        assert result.to_guest & limit_to == result.to_guest
        assert result.from_guest & limit_from == result.from_guest


PairOfEnds.TestCase.settings = settings(max_examples=60, stateful_step_count=25,
                                        deadline=None)
test_pair_of_ends = PairOfEnds.TestCase
