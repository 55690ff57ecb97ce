"""Convergence over random sequences: whatever operators, the toolstack, XenStore and guests do,
at quiescence XenStore, both agents and both kernels agree with the policy in force.

A hypothesis state machine drives the real components: the embedded xenstored over its
sockets, a full-mode backend agent and one full-mode guest agent per guest, each on its own
pyxs connection and driven in this thread through its :class:`~xenoffload.agents.runner.Runner`
(so reconnection is the production code's), enforcing on simulated netback/netfront devices
(ethtool features and tc, :func:`xenoffload.enforce.make_enforcers` ``"dry-run"``). Operators
act through the ``xenoffload set`` command. After every step the system is brought to
quiescence (no event queued on any connection, nothing due) and the invariant of
docs/protocol.md ("Convergence") is checked for every vif:

(a) each end's own keys in XenStore are what its policy in force advertises;
(b) both ends' results, in the agents and published in ``xenoffload-csum-result``, equal
    ``decide()`` of the two advertisements in the store, and what the policies in force allow;
(c) each end's kernel device carries that result (ethtool features, tc rules), as its status
    says;
(d) ``xenoffload show --json`` reports exactly that, from dom0 and from each guest.

The expected policies come from a model written here, independently of xenoffload.policy.

Budget: CI runs :data:`CI_EXAMPLES` sequences of up to :data:`CI_STEPS` steps (about a minute on
2 cores); ``tox -e soak`` sets XENOFFLOAD_SOAK_EXAMPLES (and _STEPS) much higher. With this
budget each of these defects, reintroduced, was found (docs/agents.md, "How convergence is
tested", records what the test printed):

* revocation never reaching XenStore (a policy A -> B -> A left B's keys);
* a device re-created in one transaction keeping stale own keys;
* a second writer's keys left in place (a foreign write to an own key never redone);
* overrides lost or resurrected across a XenStore restart.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from toggles.simkernel import tc_state

from xenoffload import cli
from xenoffload.agentlock import EndKey, HeldLock, acquire_agent
from xenoffload.agents import fleet
from xenoffload.agents.backend import BackendAgent
from xenoffload.agents.fleet import Fairness, Fleet
from xenoffload.agents.guest import GuestAgent
from xenoffload.agents.runner import Runner
from xenoffload.endpoint import Enforcer
from xenoffload.enforce import make_enforcers
from xenoffload.machine import Mode
from xenoffload.negotiation import LinkPolicy, LinkResult, advertise, decide, parse_result
from xenoffload.paths import VifPaths
from xenoffload.policy import Policy, VifIdentity, parse_policy
from xenoffload.schema import (
    OWN_KEYS,
    RESULT_KEY,
    STATUS_KEY,
    Advertisement,
    FamilyFlags,
    Role,
    parse_advertisement,
    render_advertisement,
)
from xenoffload.store.base import Store, StoreUnavailable
from xenoffload.store.pyxs_store import connect_store
from xenoffload.toggles.base import DeviceRef
from xenoffload.toggles.mapping import csum_rules, wanted_features
from xenoffload.toggles.simulated import SimulatedKernel
from xenoffload.toolstack import VifSpec, create_domain, create_vif, destroy_vif
from xenoffload.xenstored.harness import EmbeddedXenstored

CI_EXAMPLES = int(os.environ.get("XENOFFLOAD_SOAK_EXAMPLES", "30"))
CI_STEPS = int(os.environ.get("XENOFFLOAD_SOAK_STEPS", "25"))
#: Bound of every quiescence loop: a system that needs more is livelocked (a bug).
QUIESCENCE_ROUNDS = 200

GUESTS = (1, 2)
DEVIDS = (0, 1)
BRIDGES = ("xenbr0", "xenpriv0")
ALL = FamilyFlags.both(True)
NONE = FamilyFlags()
FULL = Advertisement(ALL, ALL)

# ------------------------------------------------------------------------------ the model


@attrs.frozen
class PolicyChoice:
    """A policy file's document and, independently, what it means per bridge."""

    document: Mapping[str, Any]
    means: Callable[[str], LinkPolicy]


BACKEND_FILES = {
    "safe": PolicyChoice({}, lambda bridge: LinkPolicy()),
    "private": PolicyChoice(
        {"rule": [{"bridge": "xenpriv0", "to-guest": True, "from-guest": True}]},
        lambda bridge: LinkPolicy(ALL, ALL) if bridge == "xenpriv0" else LinkPolicy()),
    "all": PolicyChoice({"default": {"to-guest": True, "from-guest": True}},
                        lambda bridge: LinkPolicy(ALL, ALL)),
    "v4-to-guest": PolicyChoice(
        {"rule": [{"bridge": "xenpriv*", "to-guest": {"ipv4": True}, "from-guest": True}]},
        lambda bridge: LinkPolicy(FamilyFlags(True, False), ALL)
        if bridge == "xenpriv0" else LinkPolicy()),
}
GUEST_FILES = {
    "accepts": PolicyChoice({}, lambda bridge: LinkPolicy(ALL, ALL)),
    "refuses": PolicyChoice({"default": {"to-guest": False, "from-guest": False}},
                            lambda bridge: LinkPolicy()),
    "receives-only": PolicyChoice({"default": {"from-guest": False}},
                                  lambda bridge: LinkPolicy(ALL, NONE)),
}
GUEST_BUILTIN = LinkPolicy(ALL, ALL)  # the guest agent's built-in default (docs/agents.md)

#: An override's two settings, as ``xenoffload set --tx/--rx`` give them (None: not given).
Setting = tuple[bool | None, bool | None]


def _over(base: FamilyFlags, value: bool | None) -> FamilyFlags:
    return base if value is None else FamilyFlags.both(value)


@attrs.define
class Model:
    """What the operators asked for, and which vifs exist on which bridge."""

    vifs: dict[tuple[int, int], str] = attrs.field(factory=dict)
    backend_file: str = "safe"
    guest_files: dict[int, str] = attrs.field(factory=lambda: dict.fromkeys(GUESTS, "accepts"))
    #: dom0 overrides: ("vif", g, d) or ("bridge", name) -> (to-guest, from-guest)
    overrides: dict[tuple[Any, ...], Setting] = attrs.field(factory=dict)
    #: a guest's own overrides: (g, d) -> (its tx = from-guest, its rx = to-guest)
    local: dict[tuple[int, int], Setting] = attrs.field(factory=dict)

    def backend_policy(self, vif: tuple[int, int]) -> LinkPolicy:
        bridge = self.vifs[vif]
        policy = BACKEND_FILES[self.backend_file].means(bridge)
        for key in (("bridge", bridge), ("vif", *vif)):
            to_guest, from_guest = self.overrides.get(key, (None, None))
            policy = LinkPolicy(_over(policy.to_guest, to_guest),
                                _over(policy.from_guest, from_guest))
        return policy

    def guest_policy(self, vif: tuple[int, int]) -> LinkPolicy:
        policy = GUEST_FILES[self.guest_files[vif[0]]].means(self.vifs[vif])
        tx, rx = self.local.get(vif, (None, None))
        return LinkPolicy(_over(policy.to_guest, rx), _over(policy.from_guest, tx))


# ------------------------------------------------------------------------------ the system


class FakeClock:
    """The agents' clock: time moves only when the test says (retries, fairness)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def backend_device(vif: tuple[int, int]) -> DeviceRef:
    return DeviceRef(f"vif{vif[0]}.{vif[1]}", "dom0")


def guest_device(vif: tuple[int, int]) -> DeviceRef:
    return DeviceRef(f"eth{vif[1]}", f"dom{vif[0]}")


class Racing:
    """An agent's connection that runs a hook (once) just before it next sends the ends of
    its transactions: another actor acts between this agent's reads (and its device change)
    and its commit."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.hook: Callable[[], None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def end_transactions(self, ends: Any) -> list[bool]:
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return self.inner.end_transactions(ends)  # type: ignore[no-any-return]


class System:
    """The embedded xenstored, the toolstack's connection, the agents and the devices."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.xenstored = EmbeddedXenstored(
            workdir / "xs.sock", {g: workdir / f"dom{g}.sock" for g in GUESTS},
            record=False).start()
        self.clock = FakeClock()
        self.enforcers = make_enforcers("dry-run")
        assert isinstance(self.enforcers.toggles, SimulatedKernel)
        self.devices: SimulatedKernel = self.enforcers.toggles
        self.toolstack: Store = connect_store(self.xenstored.socket_path, timeout=5.0)
        self.runners: dict[str, Runner] = {}
        #: Each agent's current connection (a new one after every reconnect).
        self.racing: dict[str, Racing] = {}
        #: Each agent holds its end's agent lock, as ``xenoffload backend-agent`` does.
        self.locks: dict[str, list[HeldLock]] = {}

    # -- agents

    def start_backend(self, policy: Policy) -> None:
        self.locks["backend"] = acquire_agent(
            EndKey.of(Role.BACKEND, 0, self.xenstored.socket_path), "convergence test")
        agent = BackendAgent(policy, 0, Mode.FULL, self._backend_enforcer,
                             clock=self.clock, fairness=Fairness())
        self.runners["backend"] = self._runner("backend", agent, self.xenstored.socket_path)

    def start_guest(self, domid: int, policy: Policy) -> None:
        socket = self.xenstored.domain_sockets[domid]
        self.locks[f"guest{domid}"] = acquire_agent(
            EndKey.of(Role.FRONTEND, domid, socket), "convergence test")
        agent = GuestAgent(policy, domid, Mode.FULL, self._guest_enforcer, clock=self.clock)
        self.runners[f"guest{domid}"] = self._runner(
            f"guest{domid}", agent, self.xenstored.domain_sockets[domid])

    def _backend_enforcer(self, vif: VifIdentity) -> Enforcer:
        return self.enforcers.for_device(backend_device((vif.domid, vif.devid)))

    def _guest_enforcer(self, vif: VifIdentity) -> Enforcer:
        return self.enforcers.for_device(guest_device((vif.domid, vif.devid)))

    def _runner(self, name: str, agent: Fleet, socket: str) -> Runner:
        def connect() -> Store:
            racing = self.racing[name] = Racing(connect_store(socket, timeout=5.0))
            return racing  # type: ignore[return-value]

        return Runner(connect, agent, clock=self.clock, backoff_initial=0.0, backoff_max=0.0)

    def run_agent(self, name: str) -> None:
        """Let one agent handle what has reached it, the others waiting."""
        runner = self.runners[name]
        if runner.store is not None:
            with contextlib.suppress(StoreUnavailable):
                runner.store.read_batch([(None, "/local/domain")])
        for _ in range(QUIESCENCE_ROUNDS):
            if not runner.turn(0.0):
                return

    def agent(self, name: str) -> Fleet:
        logic = self.runners[name].logic
        assert isinstance(logic, Fleet)
        return logic

    # -- quiescence

    def quiesce(self) -> None:
        """Run every agent until no connection has an event queued (checked with a round
        trip: the server sends a connection's events before the reply to its next request)
        and nothing is due; advance the clock to what is due when only that is left."""
        turns: dict[str, int] = dict.fromkeys(self.runners, 0)
        for _ in range(QUIESCENCE_ROUNDS):
            moved = False
            for name, runner in self.runners.items():
                if runner.store is not None:
                    with contextlib.suppress(StoreUnavailable):
                        runner.store.read_batch([(None, "/local/domain")])
                for _ in range(QUIESCENCE_ROUNDS):
                    if not runner.turn(0.0):
                        break
                    moved = True
                    turns[name] += 1
            if moved:
                continue
            due = [d for runner in self.runners.values()
                   if (d := runner.logic.next_due()) is not None]
            if not due:
                return
            self.clock.now = max(self.clock.now, min(due))
        raise AssertionError(f"no quiescence after {QUIESCENCE_ROUNDS} rounds: turns {turns}")

    def stop_agent(self, name: str) -> None:
        runner = self.runners.pop(name)
        runner.stop()
        runner._drop()
        for lock in self.locks.pop(name):
            lock.close()

    def close(self) -> None:
        for name in list(self.runners):
            self.stop_agent(name)
        with contextlib.suppress(StoreUnavailable):
            self.toolstack.close()
        self.xenstored.stop()

    # -- operators and the toolstack

    def reconnect_toolstack(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            self.toolstack.close()
        self.toolstack = connect_store(self.xenstored.socket_path, timeout=5.0)

    def command(self, *args: str, guest: int | None = None, expect: int = 0) -> str:
        """Run ``xenoffload ARGS`` (in-process) against dom0's or a guest's socket; it must
        exit with ``expect``. Returns what it printed."""
        socket = self.xenstored.socket_path if guest is None else \
            self.xenstored.domain_sockets[guest]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([*args, "--xenstore", socket])
        assert code == expect, (args, code, out.getvalue(), err.getvalue())
        return out.getvalue()


def vif_spec(vif: tuple[int, int], bridge: str) -> VifSpec:
    return VifSpec(vif[0], vif[1], f"00:16:3e:00:{vif[0]:02x}:{vif[1]:02x}", bridge)


def on_off(value: bool | None) -> list[str]:
    return [] if value is None else ["on" if value else "off"]


settings_st = st.tuples(st.sampled_from([True, False, None]),
                        st.sampled_from([True, False, None])).filter(lambda s: s != (None, None))
vifs_st = st.tuples(st.sampled_from(GUESTS), st.sampled_from(DEVIDS))
JUNK = [b"", b"2", b"yes", b" 1", b"1x", b"\xff\xfe", b"0" * 300]


class Convergence(RuleBasedStateMachine):
    """Random operator, toolstack, XenStore and guest actions; the invariant after each."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="xo-conv-")
        #: Pipeline chunks of two vifs: a batch of every vif spans several chunks.
        self._chunk, fleet.CHUNK = fleet.CHUNK, 2
        self.system = System(Path(self.tmp.name))
        self.model = Model()
        store = self.system.toolstack
        create_domain(store, 0, "Domain-0")
        #: Each guest's VM UUID: the toolstack lays a domain out again with its own.
        self.uuids = {guest: create_domain(store, guest, f"guest{guest}") for guest in GUESTS}
        for vif, bridge in (((1, 0), "xenbr0"), ((1, 1), "xenpriv0"), ((2, 0), "xenpriv0")):
            create_vif(store, vif_spec(vif, bridge))
            self.model.vifs[vif] = bridge
        self.system.start_backend(self._backend_policy())
        for guest in GUESTS:
            self.system.start_guest(guest, self._guest_policy(guest))
        self.system.quiesce()

    def teardown(self) -> None:
        self.system.close()
        self.tmp.cleanup()
        fleet.CHUNK = self._chunk

    def _backend_policy(self) -> Policy:
        return parse_policy(BACKEND_FILES[self.model.backend_file].document)

    def _guest_policy(self, guest: int) -> Policy:
        return parse_policy(GUEST_FILES[self.model.guest_files[guest]].document,
                            builtin=GUEST_BUILTIN)

    # -- operators

    @rule(name=st.sampled_from(sorted(BACKEND_FILES)))
    def reload_backend_policy(self, name: str) -> None:
        """dom0's policy file changes and the agent is sent SIGHUP."""
        self.model.backend_file = name
        self.system.agent("backend").set_policy(self._backend_policy())
        self.system.quiesce()

    @rule(guest=st.sampled_from(GUESTS), name=st.sampled_from(sorted(GUEST_FILES)))
    def reload_guest_policy(self, guest: int, name: str) -> None:
        self.model.guest_files[guest] = name
        self.system.agent(f"guest{guest}").set_policy(self._guest_policy(guest))
        self.system.quiesce()

    @rule(vif=vifs_st, setting=settings_st)
    def set_vif(self, vif: tuple[int, int], setting: Setting) -> None:
        """``xenoffload set G/D --tx .. --rx ..`` in dom0 (refused for a vif not there)."""
        exists = vif in self.model.vifs
        self.system.command("set", f"{vif[0]}/{vif[1]}", *self._flags(setting),
                            expect=0 if exists else cli.EXIT_NOT_FOUND)
        if exists:
            self.model.overrides[("vif", *vif)] = setting
        self.system.quiesce()

    @rule(bridge=st.sampled_from(BRIDGES), setting=settings_st)
    def set_bridge(self, bridge: str, setting: Setting) -> None:
        self.system.command("set", "--bridge", bridge, *self._flags(setting))
        self.model.overrides[("bridge", bridge)] = setting
        self.system.quiesce()

    @rule(vif=vifs_st)
    def clear_vif(self, vif: tuple[int, int]) -> None:
        if ("vif", *vif) in self.model.overrides and vif in self.model.vifs:
            self.system.command("set", f"{vif[0]}/{vif[1]}", "--clear")
            del self.model.overrides[("vif", *vif)]
        self.system.quiesce()

    @rule(bridge=st.sampled_from(BRIDGES))
    def clear_bridge(self, bridge: str) -> None:
        if ("bridge", bridge) in self.model.overrides:
            self.system.command("set", "--bridge", bridge, "--clear")
            del self.model.overrides[("bridge", bridge)]
        self.system.quiesce()

    @rule(vif=vifs_st, setting=settings_st)
    def set_local(self, vif: tuple[int, int], setting: Setting) -> None:
        """``xenoffload set --local D`` run by the guest's administrator inside the guest
        (refused for a vif the guest does not have)."""
        exists = vif in self.model.vifs
        self.system.command("set", "--local", str(vif[1]), *self._flags(setting),
                            guest=vif[0], expect=0 if exists else cli.EXIT_NOT_FOUND)
        if exists:
            self.model.local[vif] = setting
        self.system.quiesce()

    @rule(vif=vifs_st)
    def clear_local(self, vif: tuple[int, int]) -> None:
        if vif in self.model.local and vif in self.model.vifs:
            self.system.command("set", "--local", str(vif[1]), "--clear", guest=vif[0])
            del self.model.local[vif]
        self.system.quiesce()

    @staticmethod
    def _flags(setting: Setting) -> list[str]:
        tx, rx = setting
        return [*(["--tx", *on_off(tx)] if tx is not None else []),
                *(["--rx", *on_off(rx)] if rx is not None else [])]

    # -- races

    @rule(vif=vifs_st, at_guest=st.booleans(), setting=settings_st,
          victim_commit=st.integers(0, 2))
    def a_flip_and_its_undo_race_the_other_ends_step(
            self, vif: tuple[int, int], at_guest: bool, setting: Setting,
            victim_commit: int) -> None:
        """An operator sets an override at one end and clears it at once (a script, or a
        mistake corrected); the clear reaches XenStore while the other end's step, which
        saw the override's effect, waits to commit (before that end's first, second or third
        commit from then on)."""
        if vif not in self.model.vifs:
            return
        guest, devid = vif
        if at_guest:
            flipper, other = f"guest{guest}", "backend"
            target, where, table = ["--local", str(devid)], guest, self.model.local
            key: Any = vif
        else:
            flipper, other = "backend", f"guest{guest}"
            target, where, table = [f"{guest}/{devid}"], None, self.model.overrides
            key = ("vif", *vif)
        self.system.command("set", *target, *self._flags(setting), guest=where)
        self.system.run_agent(flipper)

        def undo() -> None:
            self.system.command("set", *target, "--clear", guest=where)
            self.system.run_agent(flipper)

        hooks = [None] * victim_commit + [undo]

        def next_commit() -> None:
            hook = hooks.pop(0)
            if hooks:
                self.system.racing[other].hook = next_commit
            if hook is not None:
                hook()

        self.system.racing[other].hook = next_commit
        self.system.run_agent(other)
        if hooks:  # the other end committed less often than that: clear now
            self.system.racing[other].hook = None
            undo()
        table.pop(key, None)
        self.system.quiesce()

    @rule(vif=vifs_st, name=st.sampled_from(sorted(BACKEND_FILES)))
    def policy_change_handled_before_a_removal_is_seen(self, vif: tuple[int, int],
                                                       name: str) -> None:
        """The toolstack removes a vif; dom0's policy changes (SIGHUP) before the backend
        agent reads the removal's events. Nothing may write into the removed directory."""
        if vif in self.model.vifs:
            destroy_vif(self.system.toolstack, VifPaths(0, *vif))
            del self.model.vifs[vif]
        self.model.backend_file = name
        self.system.agent("backend").set_policy(self._backend_policy())
        self.system.quiesce()
        if vif not in self.model.vifs:
            paths = VifPaths(0, *vif)
            assert self.system.toolstack.try_read(paths.backend_dir) is None, "re-created"
            assert self.system.toolstack.try_read(paths.frontend_dir) is None, "re-created"

    @rule(count=st.integers(1, 9), name=st.sampled_from(sorted(BACKEND_FILES)))
    def commits_conflict_under_a_policy_change(self, count: int, name: str) -> None:
        """The next commits (of any connection) fail with EAGAIN, as C xenstored answers a
        transaction that raced another, while dom0's policy changes."""
        self.system.xenstored.fail_next_commits(count)
        self.model.backend_file = name
        self.system.agent("backend").set_policy(self._backend_policy())
        self.system.quiesce()

    # -- the toolstack

    @rule(vif=vifs_st, bridge=st.sampled_from(BRIDGES))
    def create_or_recreate_vif(self, vif: tuple[int, int], bridge: str) -> None:
        """Create the vif, or re-create an existing one in one transaction (both directories
        removed and written anew, states back to Initialising), maybe on another bridge."""
        create_vif(self.system.toolstack, vif_spec(vif, bridge))
        self.model.vifs[vif] = bridge
        self.system.quiesce()

    @rule(vif=vifs_st)
    def destroy(self, vif: tuple[int, int]) -> None:
        if vif in self.model.vifs:
            destroy_vif(self.system.toolstack, VifPaths(0, *vif))
            del self.model.vifs[vif]
        self.system.quiesce()

    # -- guests

    @rule(guest=st.sampled_from(GUESTS))
    def guest_reboot(self, guest: int) -> None:
        """The guest's kernel goes down (its frontends close) and comes back: a new guest
        agent finds every frontend at Initialising."""
        self.system.stop_agent(f"guest{guest}")
        own = connect_store(self.system.xenstored.domain_sockets[guest], timeout=5.0)
        try:
            for vif in [v for v in self.model.vifs if v[0] == guest]:
                state = VifPaths(0, *vif).frontend_key("state")
                for value in (b"5", b"6", b"1"):
                    own.write(state, value)
        finally:
            own.close()
        self.system.start_guest(guest, self._guest_policy(guest))
        self.system.quiesce()

    @rule(vif=vifs_st, key=st.sampled_from(sorted(OWN_KEYS.values())),
          junk=st.sampled_from(JUNK))
    def hostile_guest_writes_junk(self, vif: tuple[int, int], key: str, junk: bytes) -> None:
        """Another process in the guest writes junk over one of its frontend's keys."""
        if vif in self.model.vifs:
            own = connect_store(self.system.xenstored.domain_sockets[vif[0]], timeout=5.0)
            try:
                own.write(VifPaths(0, *vif).frontend_key(key), junk)
            finally:
                own.close()
        self.system.quiesce()

    @rule(vif=vifs_st, key=st.sampled_from(sorted(OWN_KEYS.values())))
    def another_dom0_writer_flips_a_backend_key(self, vif: tuple[int, int], key: str) -> None:
        """A stale script in dom0 overwrites one of the backend's keys."""
        if vif in self.model.vifs:
            path = VifPaths(0, *vif).backend_key(key)
            value = self.system.toolstack.try_read(path)
            self.system.toolstack.write(path, b"0" if value == b"1" else b"1")
        self.system.quiesce()

    @rule(guest=st.sampled_from([None, *GUESTS]))
    def a_second_agent_starts(self, guest: int | None) -> None:
        """``xenoffload backend-agent --once`` (or ``guest-agent --once`` in a guest) beside
        the running agent of the same end: it exits 5 and writes nothing (the invariant after
        it checks that nothing moved)."""
        role = ["backend-agent"] if guest is None else ["guest-agent", "--domid", str(guest)]
        self.system.command(*role, "--once", "--mode", "full", "--toggles", "dry-run",
                            "--no-config", guest=guest, expect=cli.EXIT_BUSY)
        self.system.quiesce()

    # -- XenStore and connections

    @rule(keep_tree=st.booleans())
    def restart_xenstored(self, keep_tree: bool) -> None:
        """xenstored restarts; without its tree, the toolstack lays out domains and vifs
        again (frontends start over) and the agents restore the overrides they knew."""
        self.system.xenstored.restart(keep_tree=keep_tree)
        self.system.reconnect_toolstack()
        if not keep_tree:
            store = self.system.toolstack
            create_domain(store, 0, "Domain-0")
            for guest in GUESTS:
                create_domain(store, guest, f"guest{guest}", self.uuids[guest])
            for vif, bridge in sorted(self.model.vifs.items()):
                create_vif(store, vif_spec(vif, bridge))
        self.system.quiesce()

    @rule(name=st.sampled_from(["backend", *(f"guest{g}" for g in GUESTS)]))
    def drop_agent_connection(self, name: str) -> None:
        store = self.system.runners[name].store
        if store is not None:
            store.close()
        self.system.quiesce()

    # -- the invariant

    @invariant()
    def everything_agrees_with_the_policy_in_force(self) -> None:
        check_invariant(self.system, self.model)


def check_invariant(system: System, model: Model) -> None:
    store = system.toolstack
    backend = system.agent("backend")
    assert set(backend.endpoints) == set(model.vifs), (sorted(backend.endpoints), model.vifs)
    shown = {(record["domid"], record["devid"]): record
             for record in json.loads(system.command("show", "--json"))}
    for guest in GUESTS:  # a guest's administrator sees the same of the guest's own vifs
        records = json.loads(system.command("show", "--json", guest=guest))
        assert {(r["domid"], r["devid"]) for r in records} == {
            vif for vif in model.vifs if vif[0] == guest}, (guest, records)
        for record in records:
            assert record == shown[(record["domid"], record["devid"])], record
    assert set(shown) == set(model.vifs), (sorted(shown), model.vifs)
    for vif in sorted(model.vifs):
        paths = VifPaths(0, *vif)
        policies = {Role.BACKEND: model.backend_policy(vif), Role.FRONTEND: model.guest_policy(vif)}
        dirs = {Role.BACKEND: paths.backend_dir, Role.FRONTEND: paths.frontend_dir}
        # (a) own keys = what the policy in force advertises
        adverts = {role: advertise(role, FULL, policies[role]) for role in Role}
        for role in Role:
            for name, value in render_advertisement(role, adverts[role]).items():
                got = store.try_read(f"{dirs[role]}/{name}")
                assert got == value, (vif, role.value, name, got, value, policies[role])
        # (b) both ends decided decide() of the advertisements in the store
        in_store = {role: parse_advertisement(dirs[role], {
            name: store.try_read(f"{dirs[role]}/{name}")
            for name in render_advertisement(role, adverts[role])}).advertisement
            for role in Role}
        expected = decide(in_store[Role.BACKEND], in_store[Role.FRONTEND])
        allowed = LinkResult(policies[Role.BACKEND].to_guest & policies[Role.FRONTEND].to_guest,
                             policies[Role.BACKEND].from_guest
                             & policies[Role.FRONTEND].from_guest)
        assert expected == allowed, (vif, expected, allowed)
        guest = system.agent(f"guest{vif[0]}")
        for role, agent in ((Role.BACKEND, backend), (Role.FRONTEND, guest)):
            endpoint = agent.endpoints[vif]
            assert store.read(f"{dirs[role]}/state") == b"4", (vif, role.value)
            assert endpoint.result == expected, (vif, role.value, endpoint.result, expected)
            assert parse_result(store.read(f"{dirs[role]}/{RESULT_KEY}")) == expected
            # (c) the kernel device carries it, as the status says
            device = backend_device(vif) if role is Role.BACKEND else guest_device(vif)
            check_kernel(system.devices, device, role, expected,
                         store.read(f"{dirs[role]}/{STATUS_KEY}").decode())
        # (d) show reports exactly that
        record = shown[vif]
        assert record["connected"] and record["agreed"], record
        assert record["negotiated"] == result_json(expected), (record, expected)
        for role, end in ((Role.BACKEND, "backend"), (Role.FRONTEND, "frontend")):
            assert record[end]["result"] == result_json(expected), record
            assert record[end]["status"] == store.read(
                f"{dirs[role]}/{STATUS_KEY}").decode(), record


def result_json(result: LinkResult) -> dict[str, dict[str, bool]]:
    """``result`` as ``show --json`` writes it."""
    return {direction: {"ipv4": flags.ipv4, "ipv6": flags.ipv6}
            for direction, flags in (("to_guest", result.to_guest),
                                     ("from_guest", result.from_guest))}


def check_kernel(devices: SimulatedKernel, device: DeviceRef, role: Role, result: LinkResult,
                 status: str) -> None:
    available = devices.read(device)
    sends, receives = result.sends(role), result.receives(role)
    for feature, wanted in wanted_features(sends.ipv4, sends.ipv6, available).items():
        state = available[feature]
        if not state.fixed:
            assert state.active == wanted, (device, feature, state, wanted, status)
    rules = csum_rules(role, sends, receives, available)
    expected = "ok" if not rules else (
        f"ok (enforced-by-tc: {', '.join(str(rule) for rule in rules)})")
    assert status == expected, (device, status, expected)
    _slot, _gso, filters = tc_state(devices, device)
    assert len(filters) == len(rules), (device, filters, rules)


Convergence.TestCase.settings = settings(
    max_examples=CI_EXAMPLES, stateful_step_count=CI_STEPS, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_convergence = Convergence.TestCase
