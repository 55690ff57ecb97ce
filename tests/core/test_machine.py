"""The state machine tables and the machine that runs them, without any store."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from xenoffload.machine import (
    LEGAL_TRANSITIONS,
    TRANSITIONS,
    Enforce,
    Forget,
    IllegalTransition,
    Mode,
    Snapshot,
    VifMachine,
    Violation,
    WriteKeys,
    next_state,
)
from xenoffload.negotiation import LinkPolicy, LinkResult
from xenoffload.schema import READ_KEYS, FamilyFlags, Role
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
            state = own
            for _ in range(8):
                new = next_state(role, state, peer)
                if new == state:
                    break
                state = new
            else:
                pytest.fail(f"{role} {own}/{peer} does not settle")


def test_request_of_an_illegal_transition_is_rejected() -> None:
    machine = VifMachine(Role.BACKEND, Mode.FULL, LinkPolicy(), own_state=S.INIT_WAIT)
    with pytest.raises(IllegalTransition, match="InitWait -> Initialised"):
        machine.request_state(S.INITIALISED)


def test_companion_mode_never_writes_state() -> None:
    machine = VifMachine(Role.BACKEND, Mode.COMPANION, LinkPolicy())
    with pytest.raises(ValueError):
        machine.request_state(S.CLOSING)


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

    def snapshot(self, role: Role) -> Snapshot:
        own, peer = self.dirs[role], self.dirs[role.peer]
        return Snapshot(own.get("state"), peer.get("state"),
                        {k: own.get(k) for k in READ_KEYS},
                        {k: peer.get(k) for k in READ_KEYS}, DIRS[role.peer])

    def perform(self, role: Role, actions: list[object]) -> None:
        for action in actions:
            if isinstance(action, WriteKeys):
                self.dirs[role].update(action.keys)
                if action.state is not None:
                    self.dirs[role]["state"] = action.state.wire
            elif isinstance(action, Enforce):
                self.results[role] = action.result
            elif isinstance(action, Violation):
                self.violations.append(action)
            elif isinstance(action, Forget):
                pass

    def step(self, role: Role) -> bool:
        actions = self.machines[role].observe(self.snapshot(role))
        self.perform(role, actions)
        return any(isinstance(a, (WriteKeys, Enforce)) for a in actions)

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
        world.perform(role, world.machines[role].set_policy(allow))
    world.settle()
    expected = LinkResult(FamilyFlags(True, True), FamilyFlags(True, False))
    assert world.results[Role.BACKEND] == world.results[Role.FRONTEND] == expected
    assert world.dirs[Role.BACKEND]["state"] == world.dirs[Role.FRONTEND]["state"] == b"4"


def test_frontend_restart_renegotiates_from_scratch() -> None:
    world = World()
    world.settle()
    world.machines[Role.FRONTEND] = VifMachine(Role.FRONTEND, Mode.FULL, LinkPolicy())
    world.dirs[Role.FRONTEND] = {"state": b"1"}
    world.settle()
    assert world.dirs[Role.BACKEND]["state"] == world.dirs[Role.FRONTEND]["state"] == b"4"


def test_peer_skipping_states_is_reported() -> None:
    world = World()
    world.settle()
    world.dirs[Role.FRONTEND]["state"] = b"1"
    world.step(Role.BACKEND)
    world.dirs[Role.FRONTEND]["state"] = b"4"  # Initialising -> Connected is legal for netfront
    world.dirs[Role.BACKEND]["state"] = b"8"   # but a backend never goes Closing -> Reconfigured
    world.step(Role.FRONTEND)
    assert any("skipped" in v.message for v in world.violations)


def test_garbage_peer_state_is_refused_and_read_as_closed() -> None:
    world = World()
    world.settle()
    world.dirs[Role.FRONTEND]["state"] = b"\xff" * 100
    world.step(Role.BACKEND)
    assert world.violations and world.violations[-1].value == b"\xff" * 100
    assert world.dirs[Role.BACKEND]["state"] == b"6"  # via Closing


def test_companion_backend_writes_features_when_the_kernel_driver_waits() -> None:
    machine = VifMachine(Role.BACKEND, Mode.COMPANION, LinkPolicy())
    snap = Snapshot(b"1", b"1", {}, {}, FRONTEND_DIR)
    assert machine.observe(snap) == []
    actions = machine.observe(Snapshot(b"2", b"1", {}, {}, FRONTEND_DIR))
    assert len(actions) == 1 and isinstance(actions[0], WriteKeys)
    assert actions[0].state is None and actions[0].keys["feature-csum-tx"] == b"0"


def test_companion_frontend_writes_features_once_the_backend_waits() -> None:
    machine = VifMachine(Role.FRONTEND, Mode.COMPANION, LinkPolicy())
    assert machine.observe(Snapshot(b"1", b"1", {}, {}, BACKEND_DIR)) == []
    actions = machine.observe(Snapshot(b"1", b"2", {}, {}, BACKEND_DIR))
    assert isinstance(actions[0], WriteKeys)
    assert actions[0].keys["feature-no-csum-offload"] == b"1"


def test_same_snapshot_twice_yields_nothing_new() -> None:
    world = World()
    world.settle()
    snap = world.snapshot(Role.BACKEND)
    assert world.machines[Role.BACKEND].observe(snap) == []


def test_removed_device_is_forgotten() -> None:
    machine = VifMachine(Role.BACKEND, Mode.FULL, LinkPolicy())
    assert machine.observe(Snapshot(None, b"1", {}, {}, FRONTEND_DIR, own_present=False)) == [
        Forget()]


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
        for state in self.world.machines[role].last_path:
            if self.history[role][-1] != state:
                self.history[role].append(state)

    @rule(role=st.sampled_from(Role))
    def step(self, role: Role) -> None:
        self.world.step(role)
        self._record(role)

    @rule(role=st.sampled_from(Role), policy=policy_st)
    def change_policy(self, role: Role, policy: LinkPolicy) -> None:
        self.world.perform(role, self.world.machines[role].set_policy(policy))
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
            clone.machines[role] = VifMachine(role, Mode.FULL, m.policy, m.capability,
                                              m.own_state, m.peer_state, m.applied,
                                              m.last_snapshot)
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
