"""An exhaustive, explicit-state exploration of one vif's negotiation under races.

What is explored: both ends of one vif, each a real :class:`~xenoffload.endpoint.VifEndpoint`
(its real :class:`~xenoffload.machine.VifMachine`, stepped by the real
:func:`~xenoffload.endpoint.run_steps`) in full mode, on an abstract XenStore written here with
C xenstored's transaction rule (a commit fails with EAGAIN when any node the transaction read or
wrote changed meanwhile; creating a node changes its parent), watch events queued per
connection (delayed as long as the search likes, delivered in batches as an agent drains them),
an abstract kernel device per end (the result it carries), and the toolstack. Its actions:

* ``deliver X``: end X drains its queued events (each noticed, as the agents do: echo, step,
  renew) and steps;
* ``deliver X, racing A``: the same, with another actor's action A performed between X's reads
  (and device change) and X's commit: the peer delivering, the peer's policy changing, the
  toolstack removing or re-creating the vif;
* ``policy X p``: X's policy becomes p (``set``, SIGHUP) and X steps at once (RECOMPUTE);
* ``remove``: the toolstack removes both directories and both kernel devices go;
* ``create``: the toolstack creates the vif again (both ``state`` Initialising), fresh devices.

The bound: at most ``policy_changes`` policy changes, ``removals`` removals (each may be
followed by one re-creation), and no path longer than ``max_depth`` actions. Breadth-first:
a state is the store's contents, both ends' machines and endpoints (what they remember), the
event queues, the devices and the budgets left; states seen are not expanded again.

Invariants (docs/protocol.md, "Convergence" and "Races"):

* everywhere: a removed vif is never re-created by an end (R14); an end's device sends blank
  checksums the peer's published advertisement refuses only while that end still has events
  queued (the window: from the peer's commit until this end's next step commits);
* at quiescence (no event queued): both ends Connected when the vif exists, (a) each end's
  keys are what its policy advertises, (b) both results equal ``decide()`` of the two
  advertisements in the store and are published, (c) each device carries that result.
"""

from __future__ import annotations

import collections
import copy
import time
from collections.abc import Callable, Iterator, Sequence

import attrs

from xenoffload.endpoint import (
    Enforcement,
    Notice,
    StepKind,
    VifEndpoint,
    backend_endpoint,
    frontend_endpoint,
    run_steps,
)
from xenoffload.machine import Mode
from xenoffload.negotiation import LinkPolicy, LinkResult, advertise, decide, format_result
from xenoffload.paths import VifPaths
from xenoffload.schema import (
    READ_KEYS,
    RESULT_KEY,
    Advertisement,
    Family,
    FamilyFlags,
    Role,
    parse_advertisement,
    render_advertisement,
)
from xenoffload.store.base import Transaction, WriteGroup
from xenoffload.xenbus import XenbusState

PATHS = VifPaths(0, 1, 0)
ALL = FamilyFlags.both(True)
NONE = FamilyFlags()
#: The policies each end moves between.
POLICIES: dict[Role, tuple[LinkPolicy, ...]] = {
    Role.BACKEND: (LinkPolicy(), LinkPolicy(ALL, ALL), LinkPolicy(FamilyFlags(True, False), NONE)),
    Role.FRONTEND: (LinkPolicy(ALL, ALL), LinkPolicy()),
}
NO_GENERATION = -1


# ---------------------------------------------------------------------------- the store


class AbstractTxn:
    """One transaction: the generations of the nodes it accessed, and its writes."""

    def __init__(self, conn: AbstractConn) -> None:
        self.conn = conn
        self.accessed: dict[str, int] = {}
        self.writes: dict[str, bytes] = {}

    def access(self, path: str) -> None:
        if path not in self.accessed:
            self.accessed[path] = self.conn.xs.generation(path)


@attrs.define(eq=False)
class AbstractXenStore:
    """Nodes (value, generation), watches, and per connection a queue of watch events."""

    nodes: dict[str, tuple[bytes, int]] = attrs.field(factory=dict)
    counter: int = 0
    watches: list[tuple[AbstractConn, str]] = attrs.field(factory=list)
    #: Called before a connection's next TRANSACTION_END batch (the race), then cleared.
    race: dict[int, Callable[[], None]] = attrs.field(factory=dict)

    def generation(self, path: str) -> int:
        node = self.nodes.get(path)
        return NO_GENERATION if node is None else node[1]

    def children(self, path: str) -> list[str]:
        prefix = path + "/"
        return sorted({name[len(prefix):].split("/")[0] for name in self.nodes
                       if name.startswith(prefix)})

    def _bump(self) -> int:
        self.counter += 1
        return self.counter

    def write(self, path: str, value: bytes) -> None:
        """A write outside any transaction (the toolstack), creating missing parents."""
        self._apply({path: value})

    def _apply(self, writes: dict[str, bytes]) -> None:
        fired: list[str] = []
        for path, value in writes.items():
            parts = path.split("/")
            for depth in range(2, len(parts)):
                parent = "/".join(parts[:depth])
                if parent not in self.nodes:
                    self.nodes[parent] = (b"", self._bump())
                    grand = parent.rpartition("/")[0]
                    if grand in self.nodes:
                        self.nodes[grand] = (self.nodes[grand][0], self._bump())
                    fired.append(parent)
            if path not in self.nodes:
                parent = path.rpartition("/")[0]
                self.nodes[parent] = (self.nodes[parent][0], self._bump())
            self.nodes[path] = (value, self._bump())
            fired.append(path)
        for path in fired:
            self._fire(path, removed=False)

    def rm(self, path: str) -> None:
        gone = [name for name in self.nodes if name == path or name.startswith(path + "/")]
        if not gone:
            return
        for name in gone:
            del self.nodes[name]
        parent = path.rpartition("/")[0]
        if parent in self.nodes:
            self.nodes[parent] = (self.nodes[parent][0], self._bump())
        self._fire(path, removed=True)

    def _fire(self, path: str, removed: bool) -> None:
        for conn, watched in self.watches:
            if path == watched or path.startswith(watched + "/"):
                conn.queue.append(path)
            elif removed and watched.startswith(path + "/"):
                conn.queue.append(watched)


@attrs.define(eq=False)
class AbstractConn:
    """One connection: the Store methods :func:`run_steps` uses."""

    xs: AbstractXenStore
    ident: int
    queue: list[str] = attrs.field(factory=list)

    def watch(self, path: str) -> None:
        self.xs.watches.append((self, path))

    def try_read(self, path: str) -> bytes | None:
        node = self.xs.nodes.get(path)
        return None if node is None else node[0]

    def start_transactions(self, count: int) -> list[AbstractTxn]:
        return [AbstractTxn(self) for _ in range(count)]

    def read_batch(self, requests: Sequence[tuple[Transaction | None, str]]
                   ) -> list[bytes | None]:
        values: list[bytes | None] = []
        for txn, path in requests:
            assert isinstance(txn, AbstractTxn)
            txn.access(path)
            if path in txn.writes:
                values.append(txn.writes[path])
            else:
                values.append(self.try_read(path))
        return values

    def directory_batch(self, requests: Sequence[tuple[Transaction | None, str]]
                        ) -> list[list[str] | None]:
        listings: list[list[str] | None] = []
        for txn, path in requests:
            assert isinstance(txn, AbstractTxn)
            txn.access(path)
            if path not in self.xs.nodes:
                listings.append(None)
                continue
            names = set(self.xs.children(path))
            names.update(name[len(path) + 1:].split("/")[0] for name in txn.writes
                         if name.startswith(path + "/"))
            listings.append(sorted(names))
        return listings

    def write_batch(self, groups: Sequence[WriteGroup]) -> None:
        for group in groups:
            txn = group.transaction
            assert isinstance(txn, AbstractTxn)
            for path, value in group.values:
                txn.access(path)
                parent = path.rpartition("/")[0]
                while parent and parent not in self.xs.nodes and parent not in txn.writes:
                    txn.access(parent)  # created with the write: a change of it
                    parent = parent.rpartition("/")[0]
                txn.access(parent)
                txn.writes[path] = value

    def end_transactions(self, ends: Sequence[tuple[Transaction, bool]]) -> list[bool]:
        race = self.xs.race.pop(self.ident, None)
        if race is not None:
            race()
        outcome: list[bool] = []
        for txn, commit in ends:
            assert isinstance(txn, AbstractTxn)
            if not commit:
                outcome.append(False)
                continue
            if any(self.xs.generation(path) != seen for path, seen in txn.accessed.items()):
                outcome.append(False)  # EAGAIN
                continue
            self.xs._apply(txn.writes)
            outcome.append(True)
        return outcome


# ---------------------------------------------------------------------------- devices and ends


@attrs.define(eq=False)
class AbstractDevice:
    """An end's kernel device: the result it carries (None: no device; a new device computes
    every checksum). An :class:`~xenoffload.endpoint.Enforcer`."""

    carries: LinkResult | None = LinkResult()

    def enforce(self, role: Role, result: LinkResult) -> Enforcement:
        if self.carries is None:
            return Enforcement("no-device", retry=True)
        self.carries = result
        return Enforcement("ok")


@attrs.define(eq=False)
class End:
    role: Role
    conn: AbstractConn
    device: AbstractDevice
    policy: LinkPolicy
    endpoint: VifEndpoint | None = None

    @property
    def own_dir(self) -> str:
        return PATHS.backend_dir if self.role is Role.BACKEND else PATHS.frontend_dir

    @property
    def peer_dir(self) -> str:
        return PATHS.frontend_dir if self.role is Role.BACKEND else PATHS.backend_dir

    def build(self) -> VifEndpoint:
        conn = self.conn
        if self.role is Role.BACKEND:
            return backend_endpoint(conn, PATHS, None, self.policy,  # type: ignore[arg-type]
                                    self.device, Mode.FULL)
        return frontend_endpoint(conn, 1, 0, PATHS.backend_dir.encode(),  # type: ignore[arg-type]
                                 self.policy, self.device, Mode.FULL)


@attrs.define(eq=False)
class World:
    xs: AbstractXenStore
    ends: dict[Role, End]
    policy_changes: int
    removals: int
    exists: bool = True

    @classmethod
    def initial(cls, policies: dict[Role, LinkPolicy], policy_changes: int,
                removals: int) -> World:
        xs = AbstractXenStore()
        ends = {}
        for ident, role in enumerate(Role):
            conn = AbstractConn(xs, ident)
            end = End(role, conn, AbstractDevice(), policies[role])
            conn.watch(end.own_dir)
            conn.watch(end.peer_dir)
            ends[role] = end
        world = cls(xs, ends, policy_changes, removals)
        world.create_vif()
        return world

    def create_vif(self) -> None:
        """The toolstack writes both directories (libxl: one transaction), fresh devices."""
        self.xs._apply({PATHS.backend_key("state"): b"1",
                        PATHS.backend_key("frontend"): PATHS.frontend_dir.encode(),
                        PATHS.frontend_key("state"): b"1",
                        PATHS.frontend_key("backend"): PATHS.backend_dir.encode()})
        for end in self.ends.values():
            end.device.carries = LinkResult()
        self.exists = True

    def remove_vif(self) -> None:
        self.xs.rm(PATHS.backend_dir)
        self.xs.rm(PATHS.frontend_dir)
        for end in self.ends.values():
            end.device.carries = None
        self.exists = False
        self.removals -= 1

    # -- what the agents do (as agents/fleet.py does it for one vif)

    def deliver(self, role: Role) -> None:
        end = self.ends[role]
        events, end.conn.queue = end.conn.queue, []
        kind: StepKind | None = None
        renew = False
        for path in events:
            if end.endpoint is None:
                renew = True
                continue
            notice = end.endpoint.notice(path)
            if notice is Notice.STEP:
                kind = StepKind.OBSERVE
            elif notice is Notice.RENEW:
                renew = True
        if renew:
            end.endpoint = None
            if end.conn.try_read(end.own_dir) is not None:
                end.endpoint = end.build()
                kind = StepKind.OBSERVE
        if kind is not None and end.endpoint is not None:
            self._step(end, kind)

    def set_policy(self, role: Role, policy: LinkPolicy) -> None:
        end = self.ends[role]
        end.policy = policy
        self.policy_changes -= 1
        if end.endpoint is not None and end.endpoint.set_policy(policy):
            self._step(end, StepKind.RECOMPUTE)

    def _step(self, end: End, kind: StepKind) -> None:
        assert end.endpoint is not None
        left = run_steps(end.conn, {end.endpoint: kind})  # type: ignore[arg-type]
        assert not left, "a step was left for later: the exploration does not model retries"
        if end.endpoint.gone:
            end.endpoint = None

    def clone(self) -> World:
        """An independent copy (what the search expands), faster than copy.deepcopy: the
        machines' containers are replaced, never changed in place, so a shallow copy of
        each machine is a copy."""
        xs = AbstractXenStore(dict(self.xs.nodes), self.xs.counter)
        ends: dict[Role, End] = {}
        conns = {}
        for role, end in self.ends.items():
            conn = AbstractConn(xs, end.conn.ident, list(end.conn.queue))
            conns[id(end.conn)] = conn
            device = AbstractDevice(end.device.carries)
            endpoint = None
            if end.endpoint is not None:
                old = end.endpoint
                endpoint = attrs.evolve(
                    old, store=conn, machine=copy.copy(old.machine), enforcer=device,  # type: ignore[arg-type]
                    violations=list(old.violations), echoes=collections.Counter(old.echoes))
            ends[role] = End(role, conn, device, end.policy, endpoint)
        xs.watches = [(conns[id(conn)], path) for conn, path in self.xs.watches]
        return World(xs, ends, self.policy_changes, self.removals, self.exists)

    # -- the state, as a value

    def fingerprint(self) -> tuple[object, ...]:
        parts: list[object] = [tuple(sorted((p, v) for p, (v, _g) in self.xs.nodes.items())),
                               self.policy_changes, self.removals, self.exists]
        for end in self.ends.values():
            parts += [tuple(end.conn.queue), end.policy, end.device.carries]
            endpoint = end.endpoint
            if endpoint is None:
                parts.append(None)
                continue
            machine = endpoint.machine
            parts.append((machine.own_state, machine.peer_state,
                          None if machine.own_keys is None else
                          tuple(sorted(machine.own_keys.items())),
                          machine.peer, machine.applied, machine.result, machine.observed,
                          tuple(sorted(endpoint.echoes.items())),
                          None if endpoint.enforcement is None else endpoint.enforcement.status))
        return tuple(parts)

    def quiescent(self) -> bool:
        return not any(end.conn.queue for end in self.ends.values())


# ---------------------------------------------------------------------------- actions


@attrs.frozen
class Action:
    kind: str                      # deliver, policy, remove, create
    role: Role | None = None
    policy: LinkPolicy | None = None
    #: For deliver: the action performed between the step's reads and its commit.
    race: Action | None = None

    def __str__(self) -> str:
        text = self.kind
        if self.role is not None:
            text += f" {self.role.value}"
        if self.policy is not None:
            text += f" [{self.policy.describe()}]"
        if self.race is not None:
            text += f", racing ({self.race})"
        return text


def atomic_actions(world: World) -> Iterator[Action]:
    for role, end in world.ends.items():
        if end.conn.queue:
            yield Action("deliver", role)
        if world.policy_changes > 0:
            for policy in POLICIES[role]:
                if policy != end.policy:
                    yield Action("policy", role, policy)
    if world.exists and world.removals > 0:
        yield Action("remove")
    if not world.exists:
        yield Action("create")


def actions(world: World) -> Iterator[Action]:
    for action in atomic_actions(world):
        yield action
        if action.kind == "deliver":
            assert action.role is not None
            for race in atomic_actions(world):
                if race.role is not action.role:
                    yield attrs.evolve(action, race=race)


def perform(world: World, action: Action) -> None:
    if action.kind == "deliver":
        assert action.role is not None
        if action.race is not None:
            race = action.race
            world.xs.race[world.ends[action.role].conn.ident] = lambda: perform(world, race)
        world.deliver(action.role)
        world.xs.race.clear()
    elif action.kind == "policy":
        assert action.role is not None and action.policy is not None
        world.set_policy(action.role, action.policy)
    elif action.kind == "remove":
        world.remove_vif()
    elif action.kind == "create":
        world.create_vif()


# ---------------------------------------------------------------------------- invariants


class Violation(AssertionError):
    """An invariant failed; the message names it and the path of actions that led there."""


def published(world: World, role: Role) -> Advertisement | None:
    """The advertisement in the store of ``role``'s end (None: its directory is gone)."""
    end = world.ends[role]
    if end.conn.try_read(end.own_dir) is None:
        return None
    keys = {name: end.conn.try_read(f"{end.own_dir}/{name}") for name in READ_KEYS}
    return parse_advertisement("", keys).advertisement


def check(world: World) -> None:
    if not world.exists:
        left = [p for p in world.xs.nodes if p.startswith((PATHS.backend_dir,
                                                           PATHS.frontend_dir))]
        if left:
            raise Violation(f"R14: the removed vif was re-created: {left}")
    for role, end in world.ends.items():
        carries = end.device.carries
        peer = published(world, role.peer)
        if carries is None or peer is None or end.conn.queue:
            continue
        sends = carries.sends(role)
        accepts = peer.rx
        blank = [family.value for family in Family if sends[family] and not accepts[family]]
        if blank:
            raise Violation(f"{role.value}'s device sends blank checksums ({blank}) that the "
                            f"{role.peer.value}'s published advertisement refuses, and it has "
                            f"nothing left to notice")
    if world.quiescent():
        check_quiescent(world)


def check_quiescent(world: World) -> None:
    if not world.exists:
        return
    advertised = {role: published(world, role) for role in Role}
    for role, end in world.ends.items():
        state = end.conn.try_read(f"{end.own_dir}/state")
        if state != b"%d" % XenbusState.CONNECTED:
            raise Violation(f"quiescent but {role.value} is in state {state!r}")
        assert end.endpoint is not None
        own = {name: end.conn.try_read(f"{end.own_dir}/{name}") for name in READ_KEYS}
        wanted = render_advertisement(
            role, advertise(role, end.endpoint.machine.capability, end.policy))
        if {name: value for name, value in own.items() if value is not None} != wanted:
            raise Violation(f"(a) {role.value}'s keys {own} are not what its policy "
                            f"advertises {wanted}")
    back, front = advertised[Role.BACKEND], advertised[Role.FRONTEND]
    assert back is not None and front is not None
    expected = decide(back, front)
    for role, end in world.ends.items():
        assert end.endpoint is not None
        if end.endpoint.result != expected:
            raise Violation(f"(b) {role.value} decided {end.endpoint.result}, the store says "
                            f"{expected}")
        if end.conn.try_read(f"{end.own_dir}/{RESULT_KEY}") != format_result(expected):
            raise Violation(f"(b) {role.value} publishes a result other than {expected}")
        if end.device.carries != expected:
            raise Violation(f"(c) {role.value}'s device carries {end.device.carries}, the "
                            f"store says {expected.describe()}")


# ---------------------------------------------------------------------------- the search


@attrs.frozen
class Report:
    states: int
    transitions: int
    quiescent: int
    depth: int
    seconds: float
    races: int


def explore(policy_changes: int = 2, removals: int = 1, max_depth: int = 40,
            start: dict[Role, LinkPolicy] | None = None,
            limit: int = 2_000_000) -> Report:
    """Explore every interleaving within the bound; raise :class:`Violation` (with the path
    of actions) at the first broken invariant. Returns what was explored."""
    began = time.monotonic()
    policies = start or {Role.BACKEND: LinkPolicy(), Role.FRONTEND: LinkPolicy(ALL, ALL)}
    root = World.initial(policies, policy_changes, removals)
    seen: set[tuple[object, ...]] = {root.fingerprint()}
    frontier: collections.deque[tuple[World, tuple[Action, ...]]] = collections.deque(
        [(root, ())])
    transitions = quiescent = races = deepest = 0
    while frontier:
        world, path = frontier.popleft()
        deepest = max(deepest, len(path))
        if len(path) >= max_depth:
            continue
        for action in list(actions(world)):
            successor = world.clone()
            try:
                perform(successor, action)
                check(successor)
            except AssertionError as error:
                trail = "\n  ".join(str(a) for a in (*path, action))
                raise Violation(f"{error}\nafter:\n  {trail}") from error
            transitions += 1
            races += action.race is not None
            key = successor.fingerprint()
            if key in seen:
                continue
            seen.add(key)
            quiescent += successor.quiescent()
            if len(seen) > limit:
                raise Violation(f"more than {limit} states: the bound does not bound")
            frontier.append((successor, (*path, action)))
    return Report(len(seen), transitions, quiescent, deepest, time.monotonic() - began, races)
