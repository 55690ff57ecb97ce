"""Implementations under test: how the suite starts one, stops it and sees its device.

A :class:`Subject` is started once per scenario run with a :class:`Setup` (role, mode, where
XenStore is, the policy the scenario wants) and returns a :class:`Running` handle. Two kinds:

* :class:`AgentSubject`: xenoffload's own backend or guest agent, in this process, over a real
  socket to the lab's xenstored, enforcing on a simulated device (SimulatedKernel) that the
  judges read. ``hooks`` let tests build deliberately broken variants from it.
* :class:`CommandSubject`: any program, started as a shell command with ``XENSTORED_PATH``
  pointing at the IUT's socket; ``{config}`` in the command is replaced by a policy file
  (docs/configuration.md), ``{xenstore}`` by the socket path and ``{device-log}`` by the file
  where it reports its device actions (:mod:`~xenoffload.devicelog`). Its kernel
  device is not visible: the judges use that file and what it wrote into XenStore.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import attrs

from xenoffload.agents.backend import BackendAgent
from xenoffload.agents.guest import GuestAgent
from xenoffload.agents.runner import AgentLogic, Runner
from xenoffload.endpoint import Enforcer
from xenoffload.enforce import TogglesEnforcer
from xenoffload.machine import Mode
from xenoffload.negotiation import LinkPolicy
from xenoffload.policy import Policy
from xenoffload.schema import FamilyFlags, Role
from xenoffload.store.base import Store
from xenoffload.store.pyxs_store import connect_store
from xenoffload.toggles.base import DeviceRef
from xenoffload.toggles.simulated import (
    NETBACK_VIF,
    NETFRONT_ETH,
    FeatureProfile,
    ProfileFeature,
    SimulatedKernel,
)

__all__ = [
    "DEVICE_MODEL",
    "AgentHooks",
    "AgentSubject",
    "COMMAND_STDERR",
    "COMMAND_STDOUT",
    "CommandSubject",
    "DEVICE_LOG",
    "PolicyLogic",
    "Running",
    "Setup",
    "Subject",
    "device_for",
    "policy_toml",
]

#: The device of a full-mode end (a userspace device model): both per-family transmit
#: checksum features changeable, so every negotiated result can be enforced.
DEVICE_MODEL = FeatureProfile("device-model", {
    "rx-checksum": ProfileFeature(on=True, changeable=False),
    "tx-checksum-ipv4": ProfileFeature(on=True, changeable=True),
    "tx-checksum-ipv6": ProfileFeature(on=True, changeable=True),
    "tx-scatter-gather": ProfileFeature(on=True, changeable=True),
    "tx-tcp-segmentation": ProfileFeature(on=True, changeable=True),
    "tx-tcp6-segmentation": ProfileFeature(on=True, changeable=True),
})


@attrs.frozen
class Setup:
    """What a subject is started with for one scenario run."""

    role: Role
    mode: Mode
    xenstore: str
    policy: LinkPolicy
    workdir: Path
    domid: int
    devid: int

    @property
    def policy_file(self) -> Path:
        return self.workdir / "policy.toml"


class Running(Protocol):
    """A started subject."""

    @property
    def toggles(self) -> SimulatedKernel | None:
        """The simulated kernel devices, when the suite can see them."""
        ...

    @property
    def device(self) -> DeviceRef | None:
        """The IUT's own device among :attr:`toggles`."""
        ...

    @property
    def device_log(self) -> Path | None:
        """The device-log file the IUT writes (docs/conformance.md), when it has one."""
        ...

    def set_policy(self, policy: LinkPolicy) -> None:
        """Change the IUT's policy while it runs."""
        ...

    def gone(self) -> str | None:
        """None while running; otherwise why it stopped (exit status, exception)."""
        ...

    def stop(self) -> str:
        """Stop it; return the tail of its output (may be empty)."""
        ...


class Subject(Protocol):
    """Something the suite can start against a lab."""

    @property
    def name(self) -> str: ...

    def start(self, setup: Setup) -> Running:
        """Start it; raise OSError (or return a Running whose gone() says why) on failure."""
        ...


def device_for(role: Role, mode: Mode, guest_domid: int, devid: int) -> tuple[DeviceRef,
                                                                             FeatureProfile]:
    """Return the IUT's kernel device and its profile: a device model in full mode, the stock
    Linux device (netback ``vifD.N``, netfront ``ethN``) in companion mode."""
    if role is Role.BACKEND:
        ref = DeviceRef(f"vif{guest_domid}.{devid}", "dom0")
        return ref, NETBACK_VIF if mode is Mode.COMPANION else DEVICE_MODEL
    ref = DeviceRef(f"eth{devid}", f"dom{guest_domid}")
    return ref, NETFRONT_ETH if mode is Mode.COMPANION else DEVICE_MODEL


def policy_toml(policy: LinkPolicy) -> str:
    """Return ``policy`` as a policy file's ``[default]`` table (docs/configuration.md)."""
    def flags(value: FamilyFlags) -> str:
        return f"{{ ipv4 = {str(value.ipv4).lower()}, ipv6 = {str(value.ipv6).lower()} }}"

    return (f"[default]\nto-guest = {flags(policy.to_guest)}\n"
            f"from-guest = {flags(policy.from_guest)}\n")


class PolicyLogic(AgentLogic, Protocol):
    """An agent's logic whose policy can be changed while it runs (both agents)."""

    def set_policy(self, policy: Policy) -> None:
        """Take ``policy`` from now on: re-advertise and re-apply where it changes things."""
        ...


@attrs.frozen
class AgentHooks:
    """Ways to break an :class:`AgentSubject` on purpose (mutation tests): wrap the store it
    is given, the enforcer of its device or the agent logic itself, run it in another mode
    than the scenario's, or with another policy than the one it is given."""

    store: Callable[[Store], Store] | None = None
    policy: Callable[[LinkPolicy], LinkPolicy] | None = None
    mode: Mode | None = None
    enforcer: Callable[[Enforcer], Enforcer] | None = None
    logic: Callable[[PolicyLogic], PolicyLogic] | None = None


@attrs.define
class _RunningAgent:
    runner: Runner
    logic: PolicyLogic
    thread: threading.Thread
    toggles: SimulatedKernel | None
    device: DeviceRef | None
    failure: list[str]
    device_log: Path | None = None

    def set_policy(self, policy: LinkPolicy) -> None:
        # Applied by the runner's thread, as the CLI's SIGHUP reload is.
        logic = self.logic
        self.runner.request_reload(lambda: logic.set_policy(Policy(policy)))

    def gone(self) -> str | None:
        if self.failure:
            return self.failure[0]
        return None if self.thread.is_alive() else "agent thread ended"

    def stop(self) -> str:
        self.runner.stop()
        self.thread.join(5)
        return "; ".join(self.failure)


@attrs.frozen
class AgentSubject:
    """xenoffload's backend agent (role backend) or guest agent (role frontend), in-process."""

    label: str = "xenoffload agent"
    hooks: AgentHooks = AgentHooks()

    @property
    def name(self) -> str:
        return self.label

    def start(self, setup: Setup) -> Running:
        toggles = SimulatedKernel()
        device, profile = device_for(setup.role, setup.mode, setup.domid, setup.devid)
        toggles.add_device(device, profile)
        hooks = self.hooks

        def enforcer() -> Enforcer:
            made: Enforcer = TogglesEnforcer(toggles, device)
            return hooks.enforcer(made) if hooks.enforcer is not None else made

        policy = Policy(hooks.policy(setup.policy) if hooks.policy else setup.policy)
        mode = hooks.mode or setup.mode
        logic: PolicyLogic
        if setup.role is Role.BACKEND:
            logic = BackendAgent(policy, 0, mode, lambda vif: enforcer())
        else:
            logic = GuestAgent(policy, setup.domid, mode, lambda vif: enforcer())
        if hooks.logic is not None:
            logic = hooks.logic(logic)

        def factory() -> Store:
            store: Store = connect_store(setup.xenstore, timeout=5.0)
            return hooks.store(store) if hooks.store is not None else store

        runner = Runner(factory, logic, idle_seconds=0.05, backoff_initial=0.01,
                        backoff_max=0.1)
        failure: list[str] = []

        def run() -> None:
            try:
                runner.run()
            except Exception as error:  # reported as the subject's failure
                failure.append(f"{type(error).__name__}: {error}")

        thread = threading.Thread(target=run, name=f"conformance-{setup.role.value}",
                                  daemon=True)
        thread.start()
        return _RunningAgent(runner, logic, thread, toggles, device, failure)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@attrs.define
class _RunningCommand:
    process: subprocess.Popen[bytes]
    workdir: Path
    policy_file: Path | None
    device_log: Path | None

    @property
    def toggles(self) -> SimulatedKernel | None:
        return None

    @property
    def device(self) -> DeviceRef | None:
        return None

    def set_policy(self, policy: LinkPolicy) -> None:
        if self.policy_file is None:
            raise ValueError("the command takes no {config}: its policy cannot be changed")
        fresh = self.policy_file.with_suffix(".new")
        fresh.write_text(policy_toml(policy))
        fresh.replace(self.policy_file)
        if self.process.poll() is None:
            # The whole group: the implementation and any wrapper (the shell traps HUP).
            os.killpg(self.process.pid, signal.SIGHUP)

    def gone(self) -> str | None:
        code = self.process.poll()
        if code is None:
            return None
        return f"exited with status {code}" if code >= 0 else f"killed by signal {-code}"

    def stop(self) -> str:
        if self.process.poll() is None:
            # The command runs in its own session: end its process group, ours alone.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return self.output_tail()

    def output_tail(self) -> str:
        """Return the tail of the command's standard error, else of its standard output."""
        return _tail(self.workdir / COMMAND_STDERR) or _tail(self.workdir / COMMAND_STDOUT)


#: Where a command's output goes, in the scenario's work directory.
COMMAND_STDOUT, COMMAND_STDERR = "implementation.out", "implementation.err"
#: The device-log file a command's ``{device-log}`` names, in the scenario's work directory.
DEVICE_LOG = "device.log"


@attrs.frozen
class CommandSubject:
    """An implementation run as a shell command (``/bin/sh -c``).

    ``XENSTORED_PATH`` is set to the IUT's socket; ``{xenstore}``, ``{config}``, ``{mode}`` and
    ``{device-log}`` in the command are replaced by that path, a policy file written for the
    scenario, ``full`` or ``companion``, and a file in which the IUT reports its device
    actions (docs/conformance.md). A command without ``{config}`` must be configured to allow
    blank checksums both ways; scenarios needing another policy, or a policy change, are
    skipped for it (see :attr:`takes_policy`). The shell traps SIGHUP, so that a policy
    change's SIGHUP to the process group reaches the implementation without ending the
    shell."""

    command: str

    @property
    def name(self) -> str:
        return self.command

    @property
    def takes_policy(self) -> bool:
        return "{config}" in self.command

    @property
    def takes_mode(self) -> bool:
        return "{mode}" in self.command

    @property
    def takes_device_log(self) -> bool:
        return "{device-log}" in self.command

    def start(self, setup: Setup) -> Running:
        setup.policy_file.write_text(policy_toml(setup.policy))
        device_log = setup.workdir / DEVICE_LOG if self.takes_device_log else None
        if device_log is not None:
            device_log.touch()
        command = self.command.replace("{config}", str(setup.policy_file)).replace(
            "{xenstore}", setup.xenstore).replace("{mode}", setup.mode.value).replace(
            "{device-log}", str(device_log))
        env = dict(os.environ, XENSTORED_PATH=setup.xenstore)
        with open(setup.workdir / COMMAND_STDOUT, "wb") as out, \
                open(setup.workdir / COMMAND_STDERR, "wb") as err:
            # The user's command line, run by the shell by design; ``trap : HUP`` keeps the
            # shell alive through SIGHUP and leaves the default disposition to its children.
            process = subprocess.Popen(
                ["/bin/sh", "-c", f"trap : HUP\n{command}"], env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        return _RunningCommand(process, setup.workdir,
                               setup.policy_file if self.takes_policy else None, device_log)
