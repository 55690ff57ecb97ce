"""The scripted peer: the steps the suite plays against an implementation under test, and
models of what stock Linux netback and netfront do on the wire.

A script is a tuple of :class:`Step` values, performed in order by :func:`perform`. Each step
says in one line what it does (:meth:`Step.describe`, used in verdicts and in
docs/conformance.md). Steps are played by an :class:`Actor`: the ``PEER`` (the other end of
the vif), the ``KERNEL`` (in companion mode, the stock driver on the IUT's own side, which
owns the IUT's ``state``), or the ``TOOLSTACK``. A frontend is played over the guest's socket
(unprivileged, as domid 1), a backend over dom0's.

Misbehaviour is a step like any other: skipping states, raw bytes (also non-UTF-8) written
through the wire, keys withdrawn, a connection closed in the middle of a transaction, feature
flips while Connected, legacy keys only.

The stock models follow the real trace of xl, netback and netfront (tests/conformance/
fixtures/real-xen-vif-negotiation.trace): netback writes its feature keys in one transaction
at probe, then three plain writes, then InitWait in a transaction of its own; it connects
once the hotplug script wrote ``hotplug-status=connected`` and the frontend is Connected, and
then caps the vif's checksum offload by the frontend's keys (read as Linux ``%u`` does).
Netfront waits for InitWait, writes ``xdp-headroom``, then rings, event channels and its
feature keys in one transaction (never ``feature-no-csum-offload``), then Connected.
"""

from __future__ import annotations

import contextlib
import enum
import re
from collections.abc import Callable, Sequence

import attrs

from xenoffload.conformance.lab import VIF, Lab, LabTimeout, QuietPoint
from xenoffload.conformance.observe import show_value
from xenoffload.conformance.subjects import Running
from xenoffload.devicelog import read_device_log
from xenoffload.negotiation import LinkPolicy
from xenoffload.schema import Role
from xenoffload.store.base import (
    Store,
    StoreUnavailable,
    Transaction,
    TransactionAborted,
    XenStoreError,
    run_transaction,
)
from xenoffload.store.pyxs_store import PyxsStore
from xenoffload.toggles.base import ToggleError
from xenoffload.toolstack import destroy_vif
from xenoffload.xenbus import XenbusState
from xenoffload.xs.wire import Op

__all__ = [
    "Actor",
    "Await",
    "AwaitIut",
    "ChangePolicy",
    "CloseMidTransaction",
    "NetbackCapsVif",
    "PeerContext",
    "Publish",
    "RemoveDevice",
    "Settle",
    "Step",
    "SwitchState",
    "Withdraw",
    "WriteRaw",
    "linux_netback",
    "linux_netfront",
    "linux_u",
    "perform",
    "xo_keys",
]

S = XenbusState
Keys = tuple[tuple[str, bytes], ...]


class Actor(enum.Enum):
    """Who plays a step."""

    PEER = "peer"
    KERNEL = "kernel"
    TOOLSTACK = "toolstack"


def _state_name(value: XenbusState) -> str:
    return f"{value}({int(value)})"


@attrs.define
class PeerContext:
    """What a step acts on: the lab, the running IUT and the actors' connections; it collects
    what the harness saw each time it waited for the IUT to settle."""

    lab: Lab
    running: Running
    stores: dict[Actor, PyxsStore] = attrs.field(factory=dict)
    step: int = 0
    quiet_points: list[QuietPoint] = attrs.field(factory=list)
    #: Log position of the last thing the IUT must react to that is not a XenStore change.
    stimulus: int = -1

    def settle(self) -> QuietPoint:
        """Wait for the IUT to settle (:meth:`Lab.settle`); record and return what was seen.
        Raises LabTimeout when it did not settle (busy or gone), after recording."""
        settled = self.lab.settle(self.running.gone, self.stimulus)
        toggles, device = self.running.toggles, self.running.device
        features = None
        if toggles is not None and device is not None:
            with contextlib.suppress(ToggleError):
                features = {name: state.active
                            for name, state in toggles.read(device).items()}
        log = self.running.device_log
        lines = None if log is None else len(read_device_log(log)[0])
        point = QuietPoint(self.step, settled, self.lab.dump(), features, lines)
        self.quiet_points.append(point)
        if not settled.settled:
            raise LabTimeout(f"the implementation did not settle: {settled.describe()}")
        return point

    @property
    def iut_role(self) -> Role:
        return self.lab.role

    def role_of(self, actor: Actor) -> Role:
        """The vif end an actor plays (the toolstack: the backend's side)."""
        if actor is Actor.PEER:
            return self.iut_role.peer
        return self.iut_role if actor is Actor.KERNEL else Role.BACKEND

    def dir_of(self, role: Role) -> str:
        return VIF.backend_dir if role is Role.BACKEND else VIF.frontend_dir

    def store(self, actor: Actor) -> PyxsStore:
        """The actor's connection, opened on first use (a frontend on the guest socket)."""
        if actor is Actor.TOOLSTACK:
            assert self.lab.toolstack is not None
            return self.lab.toolstack
        if actor not in self.stores:
            self.stores[actor] = self.lab.connect(self.lab.domid_of(self.role_of(actor)))
        return self.stores[actor]

    def drop(self, actor: Actor) -> None:
        """Close the actor's connection (the next step opens a new one)."""
        store = self.stores.pop(actor, None)
        if store is not None:
            store.close()

    def wait(self, predicate: object, what: str) -> None:
        assert callable(predicate)
        self.lab.wait_until(predicate, what, self.running.gone)


class Step:
    """One action of a script."""

    def describe(self) -> str:
        raise NotImplementedError

    def perform(self, ctx: PeerContext) -> None:
        raise NotImplementedError


def _who(actor: Actor) -> str:
    return {Actor.PEER: "peer", Actor.KERNEL: "IUT-side stock driver",
            Actor.TOOLSTACK: "toolstack"}[actor]


def _transact(store: Store, body: Callable[[Transaction], None], what: str) -> None:
    """Run ``body`` in a transaction redone on EAGAIN; LabTimeout if it keeps conflicting."""
    try:
        run_transaction(store, body)
    except TransactionAborted as error:
        raise LabTimeout(f"{what} kept conflicting") from error


def _write_keys(txn: Transaction, directory: str, keys: Keys, state: XenbusState | None) -> None:
    for name, value in keys:
        txn.write(f"{directory}/{name}", value)
    if state is not None:
        txn.write(f"{directory}/state", state.wire)


def _describe_keys(keys: Keys, state: XenbusState | None) -> str:
    parts = [f"{name}={show_value(value)}" for name, value in keys]
    if state is not None:
        parts.append(f"state={_state_name(state)}")
    return " ".join(parts)


@attrs.frozen
class Publish(Step):
    """Write keys (and optionally ``state``) into the actor's own directory in one
    transaction, retried on EAGAIN."""

    keys: Keys
    state: XenbusState | None = None
    by: Actor = Actor.PEER

    def describe(self) -> str:
        return (f"{_who(self.by)} writes {_describe_keys(self.keys, self.state)} "
                "in one transaction")

    def perform(self, ctx: PeerContext) -> None:
        directory = ctx.dir_of(ctx.role_of(self.by))
        _transact(ctx.store(self.by),
                  lambda txn: _write_keys(txn, directory, self.keys, self.state), "transaction")


@attrs.frozen
class PlainWrite(Step):
    """Write one key outside any transaction (netback's later feature keys)."""

    name: str
    value: bytes
    by: Actor = Actor.PEER

    def describe(self) -> str:
        return f"{_who(self.by)} writes {self.name}={show_value(self.value)}"

    def perform(self, ctx: PeerContext) -> None:
        directory = ctx.dir_of(ctx.role_of(self.by))
        ctx.store(self.by).write(f"{directory}/{self.name}", self.value)


@attrs.frozen
class SwitchState(Step):
    """Change the actor's ``state`` as a Linux driver does: a small transaction that reads
    the state and writes the new one. ``refusable``: a refusal (EACCES, as a guest gets once
    the toolstack removed its device) ends the step, as a driver ignores it."""

    state: XenbusState
    by: Actor = Actor.PEER
    refusable: bool = False

    def describe(self) -> str:
        return f"{_who(self.by)} switches state to {_state_name(self.state)}"

    def perform(self, ctx: PeerContext) -> None:
        path = f"{ctx.dir_of(ctx.role_of(self.by))}/state"

        def switch(txn: Transaction) -> None:
            txn.try_read(path)
            txn.write(path, self.state.wire)

        try:
            _transact(ctx.store(self.by), switch, "state switch")
        except XenStoreError as error:
            if not (self.refusable and error.errno_name == "EACCES"):
                raise


@attrs.frozen
class WriteRaw(Step):
    """Send a raw WRITE frame (``path\\0value``): any bytes, also non-UTF-8, exactly as a
    hostile guest can."""

    name: str
    value: bytes
    by: Actor = Actor.PEER

    def describe(self) -> str:
        return f"{_who(self.by)} writes raw bytes {self.value!r} into {self.name}"

    def perform(self, ctx: PeerContext) -> None:
        path = f"{ctx.dir_of(ctx.role_of(self.by))}/{self.name}"
        ctx.store(self.by).raw_request(Op.WRITE, path.encode() + b"\0" + self.value)


@attrs.frozen
class Withdraw(Step):
    """Remove keys from the actor's directory in one transaction."""

    names: tuple[str, ...]
    by: Actor = Actor.PEER

    def describe(self) -> str:
        return f"{_who(self.by)} withdraws {' '.join(self.names)}"

    def perform(self, ctx: PeerContext) -> None:
        directory = ctx.dir_of(ctx.role_of(self.by))

        def withdraw(txn: Transaction) -> None:
            for name in self.names:
                txn.rm(f"{directory}/{name}")

        _transact(ctx.store(self.by), withdraw, "transaction")


@attrs.frozen
class CloseMidTransaction(Step):
    """Start a transaction writing ``keys`` and ``state``, then close the connection without
    ending it (a crash mid-negotiation); the actor reconnects for its next step."""

    keys: Keys
    state: XenbusState | None = None
    by: Actor = Actor.PEER

    def describe(self) -> str:
        return (f"{_who(self.by)} starts a transaction writing "
                f"{_describe_keys(self.keys, self.state)}, closes its connection before "
                "committing, and reconnects")

    def perform(self, ctx: PeerContext) -> None:
        directory = ctx.dir_of(ctx.role_of(self.by))
        _write_keys(ctx.store(self.by).transaction(), directory, self.keys, self.state)
        ctx.drop(self.by)
        ctx.store(self.by)


@attrs.frozen
class Await(Step):
    """Wait until a node of the ``role`` end's directory holds one of ``values`` (as a stock
    driver waits for its watch)."""

    role: Role
    name: str
    values: tuple[bytes, ...]

    def describe(self) -> str:
        shown = " or ".join(show_value(value) for value in self.values)
        return f"wait for {self.role.value} {self.name} = {shown}"

    def perform(self, ctx: PeerContext) -> None:
        path = f"{ctx.dir_of(self.role)}/{self.name}"
        ctx.wait(lambda: ctx.lab.read(path) in self.values, self.describe())


@attrs.frozen
class AwaitIut(Step):
    """Wait until the IUT's ``state`` is one of ``states``."""

    states: tuple[XenbusState, ...]

    def describe(self) -> str:
        return "wait for the IUT to reach " + " or ".join(_state_name(s) for s in self.states)

    def perform(self, ctx: PeerContext) -> None:
        path = f"{ctx.lab.own_dir}/state"
        wanted = {state.wire for state in self.states}
        ctx.wait(lambda: ctx.lab.read(path) in wanted, self.describe())


@attrs.frozen
class Settle(Step):
    """Wait until the IUT has reacted to the harness's last change and been quiet for a while
    (:meth:`Lab.settle`); what both directories and the device show then is judged."""

    def describe(self) -> str:
        return "wait until the IUT has reacted and is quiet"

    def perform(self, ctx: PeerContext) -> None:
        ctx.settle()


@attrs.frozen
class ChangePolicy(Step):
    """The IUT's own policy changes (for a command: its ``{config}`` file is rewritten and it
    gets SIGHUP; in-process: the agent's policy is set)."""

    policy: LinkPolicy
    label: str

    def describe(self) -> str:
        return f"the IUT's policy changes to: {self.label} (config rewritten, SIGHUP)"

    def perform(self, ctx: PeerContext) -> None:
        ctx.stimulus = ctx.lab.position() - 1
        ctx.running.set_policy(self.policy)


@attrs.frozen
class Reconnect(Step):
    """Close the actor's XenStore connection and open a new one (nothing in the tree
    changes)."""

    by: Actor = Actor.PEER

    def describe(self) -> str:
        return f"{_who(self.by)} closes its XenStore connection and reconnects"

    def perform(self, ctx: PeerContext) -> None:
        ctx.drop(self.by)
        ctx.store(self.by)


@attrs.frozen
class RemoveDevice(Step):
    """The toolstack removes both directories of the vif (xl destroy)."""

    def describe(self) -> str:
        return "toolstack removes both vif directories"

    def perform(self, ctx: PeerContext) -> None:
        destroy_vif(ctx.store(Actor.TOOLSTACK), VIF)


@attrs.frozen
class ToolstackWrite(Step):
    """The toolstack (or its hotplug script) writes a node of the ``role`` end's directory."""

    role: Role
    name: str
    value: bytes

    def describe(self) -> str:
        return f"hotplug script writes {self.role.value} {self.name}={show_value(self.value)}"

    def perform(self, ctx: PeerContext) -> None:
        ctx.store(Actor.TOOLSTACK).write(f"{ctx.dir_of(self.role)}/{self.name}", self.value)


_LEADING_U = re.compile(rb"\A\s*\+?(\d+)")


def linux_u(raw: bytes | None, default: int) -> int:
    """Return what Linux's ``xenbus_scanf(..., "%u")`` makes of a node: the leading decimal
    number (trailing junk ignored), else ``default`` (absent, empty, non-numeric, negative)."""
    if raw is None:
        return default
    match = _LEADING_U.match(raw)
    return int(match.group(1)) % 2**32 if match else default


@attrs.frozen
class NetbackCapsVif(Step):
    """Stock netback at connect: reads the frontend's keys as ``%u`` and caps the vif's
    transmit checksum offload (its fix_features hook): IPv4 off when
    ``feature-no-csum-offload`` is non-zero, IPv6 off unless ``feature-ipv6-csum-offload``
    is non-zero. The cap lands on the IUT's simulated vif when the IUT is a companion
    backend whose device the suite can see."""

    by: Actor = Actor.KERNEL

    def describe(self) -> str:
        return ("stock netback reads the frontend's feature keys (as %u) and caps the vif's "
                "checksum offload by them")

    def perform(self, ctx: PeerContext) -> None:
        store = ctx.store(self.by)
        frontend = VIF.frontend_dir
        values = {name: store.try_read(f"{frontend}/{name}") for name in (
            "request-rx-copy", "feature-rx-notify", "feature-sg", "feature-gso-tcpv4",
            "feature-gso-tcpv6", "feature-no-csum-offload", "feature-ipv6-csum-offload")}
        ip_csum = linux_u(values["feature-no-csum-offload"], 0) == 0
        ipv6_csum = linux_u(values["feature-ipv6-csum-offload"], 0) != 0
        toggles, device = ctx.running.toggles, ctx.running.device
        if self.by is Actor.KERNEL and ctx.iut_role is Role.BACKEND and toggles is not None \
                and device is not None:
            toggles.limit(device, "tx-checksum-ipv4", ip_csum)
            toggles.limit(device, "tx-checksum-ipv6", ipv6_csum)


#: Stock netback's probe transaction (Linux 6.1, the real trace).
NETBACK_PROBE_KEYS: Keys = (
    ("feature-sg", b"1"), ("feature-gso-tcpv4", b"1"), ("feature-gso-tcpv6", b"1"),
    ("feature-ipv6-csum-offload", b"1"), ("feature-rx-copy", b"1"),
    ("feature-xdp-headroom", b"1"), ("feature-rx-flip", b"0"),
    ("feature-multicast-control", b"1"), ("feature-dynamic-multicast-control", b"1"),
)
#: Written by netback after the probe transaction, one by one.
NETBACK_LATER_KEYS: Keys = (
    ("feature-split-event-channels", b"1"), ("multi-queue-max-queues", b"2"),
    ("feature-ctrl-ring", b"1"),
)
#: Stock netfront's connect transaction (rings, event channels, features).
NETFRONT_CONNECT_KEYS: Keys = (
    ("multi-queue-num-queues", b"1"), ("tx-ring-ref", b"520"), ("rx-ring-ref", b"521"),
    ("event-channel-tx", b"8"), ("event-channel-rx", b"9"), ("request-rx-copy", b"1"),
    ("feature-rx-notify", b"1"), ("feature-sg", b"1"), ("feature-gso-tcpv4", b"1"),
    ("feature-gso-tcpv6", b"1"), ("feature-ipv6-csum-offload", b"1"),
)


def linux_netback(by: Actor, probe_keys: Keys = NETBACK_PROBE_KEYS) -> tuple[tuple[Step, ...],
                                                                           tuple[Step, ...]]:
    """Return stock netback's script in two halves: probe to InitWait (with the hotplug
    script's ``hotplug-status``), and connect (waits for the frontend's Connected)."""
    probe: tuple[Step, ...] = (
        Publish(probe_keys, by=by),
        *(PlainWrite(name, value, by) for name, value in NETBACK_LATER_KEYS),
        SwitchState(S.INIT_WAIT, by),
        ToolstackWrite(Role.BACKEND, "hotplug-status", b"connected"),
    )
    connect: tuple[Step, ...] = (
        Await(Role.FRONTEND, "state", (b"4",)),
        NetbackCapsVif(by),
        SwitchState(S.CONNECTED, by),
    )
    return probe, connect


def linux_netfront(by: Actor, extra: Keys = ()) -> tuple[Step, ...]:
    """Return stock netfront's script: wait for InitWait, connect. ``extra`` adds keys to
    its connect transaction (other frontends: Windows PV, unikernels)."""
    return (
        Await(Role.BACKEND, "state", (b"2",)),
        PlainWrite("xdp-headroom", b"0", by),
        Publish((*NETFRONT_CONNECT_KEYS, *extra), by=by),
        SwitchState(S.CONNECTED, by),
    )


def xo_keys(role: Role, tx: tuple[bool, bool], rx: tuple[bool, bool]) -> Keys:
    """Return the keys a xenoffload end of ``role`` writes for tx/rx (ipv4, ipv6), with the
    legacy keys consistent with them (docs/protocol.md, R4)."""
    def flag(value: bool) -> bytes:
        return b"1" if value else b"0"

    keys: list[tuple[str, bytes]] = [
        ("feature-csum-tx", flag(tx[0])), ("feature-csum-tx-ipv6", flag(tx[1])),
        ("feature-csum-rx", flag(rx[0])), ("feature-csum-rx-ipv6", flag(rx[1])),
        ("feature-ipv6-csum-offload", flag(rx[1])),
    ]
    if role is Role.FRONTEND:
        keys.append(("feature-no-csum-offload", flag(not rx[0])))
    return tuple(keys)


def perform(ctx: PeerContext, steps: Sequence[Step],
            mark: object = None) -> tuple[int, str] | None:
    """Play ``steps`` in order, calling ``mark(index)`` before each; return None, or the
    index and message of the step that could not complete (a timeout, the IUT gone, the
    peer's connection refused)."""
    for index, step in enumerate(steps):
        if callable(mark):
            mark(index)
        ctx.step = index
        try:
            step.perform(ctx)
        except (LabTimeout, XenStoreError, StoreUnavailable) as error:
            return index, str(error)
    return None
