"""The end-to-end lab: embedded xenstored on real sockets, libxl-style domains, veth stand-ins.

A :class:`Lab` owns one :class:`~xenoffload.xenstored.server.EmbeddedXenstored` (dom0 socket
plus one unprivileged socket per guest) in a temporary directory, a toolstack connection, and
(as root) a network namespace per domain joined by a veth pair per vif: ``vifD.N`` in the dom0
namespace, ``ethN`` in guest D's. Agents run as CLI subprocesses (:class:`AgentProcess`) or
in-process threads (:class:`AgentThread`). Every wait is bounded (:func:`wait_until`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from xenoffload.agents.backend import BackendAgent
from xenoffload.agents.guest import GuestAgent
from xenoffload.agents.runner import AgentLogic, Runner
from xenoffload.endpoint import Enforcer
from xenoffload.enforce import TogglesEnforcer
from xenoffload.machine import Mode
from xenoffload.negotiation import LinkResult
from xenoffload.netns import Namespaces
from xenoffload.paths import VifPaths
from xenoffload.policy import Policy, VifIdentity
from xenoffload.schema import FamilyFlags
from xenoffload.show import VifReport, collect
from xenoffload.store.base import Store, StoreUnavailable, TransactionAborted, WatchEvent
from xenoffload.store.pyxs_store import PyxsStore, connect_store
from xenoffload.toggles.base import ApplyResult, DeviceRef, FeatureState, Toggles
from xenoffload.toolstack import VifSpec, create_domain, create_vif
from xenoffload.xenbus import XenbusState
from xenoffload.xenstored.harness import EmbeddedXenstored
from xenoffload.xenstored.server import RequestRecord

ALL = FamilyFlags(True, True)
SUPPRESSED = LinkResult(ALL, ALL)  # blank checksums may cross both ways, both families
COMPUTED = LinkResult()  # every checksum computed (the safe result)
#: The veth feature that stands in for a vif's / eth's transmit checksum offload.
GENERIC = "tx-checksum-ip-generic"
#: Request types that change the tree.
MUTATING_OPS = frozenset({"WRITE", "MKDIR", "RM", "SET_PERMS"})

PRIVATE_POLICY_TOML = """\
[[rule]]
name = "private intra-host network"
bridge = "xenpriv0"
to-guest = true
from-guest = true
"""
GUEST_POLICY_TOML = """\
[default]
to-guest = true
from-guest = true
"""

_ns_serial = 0


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError naming
    ``what`` after ``timeout`` seconds. Exceptions from the predicate count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except (RuntimeError, StoreUnavailable, TransactionAborted, OSError) as error:
            value, last = None, error
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} "
                                 f"(last: {last or value!r})")
        time.sleep(interval)


def status_ok(status: str | None) -> bool:
    """True for an enforcement status that is ``ok``, or ``unenforced`` only because of the
    options the lab's agents run with: ``--no-tc`` (this machine's kernel lacks act_csum) or
    ``--toggles none`` (nothing applied); such a status is honest about the device, and what
    the options left out is covered elsewhere (tests/toggles, the Xen lab)."""
    from xenoffload.enforce import NO_TC_REASON
    from xenoffload.show import enforced_status

    if enforced_status(status):
        return True
    if status is None or not status.startswith("unenforced: "):
        return False
    problems = status.removeprefix("unenforced: ").split("; ")
    return all(NO_TC_REASON in problem or problem == "nothing applied (--toggles none)"
               for problem in problems)


# --------------------------------------------------------------------------------- toggles


@attrs.frozen
class SetRecord:
    """One apply that sent a change request to the kernel."""

    device: DeviceRef
    changes: Mapping[str, bool]


class CountingToggles:
    """Wraps a Toggles implementation and records every apply that changed a device, so a
    test can say "no kernel toggle flapped". ``before_apply`` (device -> None) runs inside
    apply, after the caller read the device: a hook to make it vanish mid-toggle."""

    def __init__(self, inner: Toggles) -> None:
        self.inner = inner
        self.sets: list[SetRecord] = []
        self.applies: list[DeviceRef] = []
        self.before_apply: Callable[[DeviceRef], None] | None = None
        self._lock = threading.Lock()

    def read(self, device: DeviceRef) -> Mapping[str, FeatureState]:
        return self.inner.read(device)

    def apply(self, device: DeviceRef, wanted: Mapping[str, bool],
              before: Mapping[str, FeatureState] | None = None) -> ApplyResult:
        hook = self.before_apply
        if hook is not None:
            hook(device)
        with self._lock:
            self.applies.append(device)
        result = self.inner.apply(device, wanted, before)
        if result.set_issued:
            with self._lock:
                self.sets.append(SetRecord(device, dict(wanted)))
        return result

    def sets_on(self, device: DeviceRef) -> int:
        with self._lock:
            return sum(1 for record in self.sets if record.device == device)

    def devices_set_since(self, index: int) -> set[DeviceRef]:
        with self._lock:
            return {record.device for record in self.sets[index:]}


# --------------------------------------------------------------------------------- events


class EventFaults:
    """A Store proxy whose watch events arrive duplicated, late or coalesced.

    ``duplicate``: every event is returned twice. ``delay``: an event is held back for that
    many seconds (later ones overtake nothing: order is kept, all arrive late).
    ``coalesce``: the events of a burst (all arriving within ``delay`` of the first) are
    replaced by one event on the deepest path that is an ancestor-or-self of all of them
    (several changes reported as one).
    """

    def __init__(self, inner: Store, *, duplicate: bool = False, delay: float = 0.0,
                 coalesce: bool = False) -> None:
        self.inner = inner
        self.duplicate = duplicate
        self.delay = delay
        self.coalesce = coalesce
        self.delivered: list[WatchEvent] = []
        self._watches: set[tuple[str, str]] = set()
        self._held: list[tuple[float, WatchEvent]] = []
        self._ready: list[WatchEvent] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def next_events(self, timeout: float | None, limit: int) -> list[WatchEvent]:
        first = self.next_event(timeout)
        batch = [first] if first is not None else []
        while batch and len(batch) < limit and (more := self.next_event(0)) is not None:
            batch.append(more)
        return batch

    def next_event(self, timeout: float | None) -> WatchEvent | None:
        deadline = time.monotonic() + (timeout or 0.0)
        while True:
            if self._ready:
                event = self._ready.pop(0)
                self.delivered.append(event)
                return event
            now = time.monotonic()
            due = [event for when, event in self._held if when <= now]
            if due:
                self._held = [(when, event) for when, event in self._held if when > now]
                self._release(due)
                continue
            wait = max(0.0, min(deadline - now, 0.02))
            event = self.inner.next_event(wait)
            if event is not None:
                self._hold(event)
                while (more := self.inner.next_event(0)) is not None:
                    self._hold(more)
                continue
            if time.monotonic() >= deadline:
                return None

    def _hold(self, event: WatchEvent) -> None:
        # Coalescing gathers a burst: everything arriving while one is held goes out with it.
        due = self._held[0][0] if self.coalesce and self._held else \
            time.monotonic() + self.delay
        self._held.append((due, event))

    def watch(self, path: str, token: str) -> None:
        self.inner.watch(path, token)
        self._watches.add((path, token))

    def unwatch(self, path: str, token: str) -> None:
        self.inner.unwatch(path, token)
        self._watches.discard((path, token))

    def _watch_of(self, event: WatchEvent) -> tuple[str, str]:
        """The (deepest) registered watch that reported ``event``."""
        matching = [(path, token) for path, token in self._watches if token == event.token
                    and (event.path == path or event.path.startswith(path.rstrip("/") + "/"))]
        return max(matching, key=lambda watch: len(watch[0]), default=(event.path, event.token))

    def _release(self, events: list[WatchEvent]) -> None:
        if self.coalesce and len(events) > 1:
            groups: dict[tuple[str, str], list[WatchEvent]] = {}
            for event in events:
                groups.setdefault(self._watch_of(event), []).append(event)
            events = []
            for (_watched, token), group in groups.items():
                paths = [event.path.split("/") for event in group]
                common: list[str] = []
                for parts in zip(*paths, strict=False):
                    if len(set(parts)) != 1:
                        break
                    common.append(parts[0])
                # Never above the watched path: xenstored only reports paths it covers.
                events.append(WatchEvent("/".join(common) or "/", token))
        for event in events:
            self._ready.append(event)
            if self.duplicate:
                self._ready.append(WatchEvent(event.path, event.token))


# --------------------------------------------------------------------------------- agents


class AgentThread:
    """An agent logic driven by a :class:`Runner` in a daemon thread (the in-process API)."""

    def __init__(self, logic: AgentLogic, factory: Callable[[], Store], name: str,
                 idle_seconds: float = 0.1, backoff_max: float = 0.4) -> None:
        self.logic = logic
        self.runner = Runner(factory, logic, idle_seconds=idle_seconds,
                             backoff_initial=0.05, backoff_max=backoff_max)
        self.idle_seconds = idle_seconds
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.error: BaseException | None = None
        self._quiesce_wanted = threading.Event()
        self._quiesced = threading.Event()

    def _run(self) -> None:
        """The runner's loop (:meth:`Runner.run`), taking :meth:`quiesce` requests between
        turns."""
        runner = self.runner
        try:
            while not runner.stop_event.is_set():
                runner.turn(self.idle_seconds)
                if self._quiesce_wanted.is_set():
                    self._run_until_quiet()
            runner._drop()
        except BaseException as error:  # reported by alive()/stop()
            self.error = error
            raise

    def _run_until_quiet(self) -> None:
        runner = self.runner
        for _ in range(200):
            if runner.store is not None:
                # The server sends this connection's queued events before this reply.
                runner.store.read_batch([(None, "/local/domain")])
            if not runner.turn(0.0):
                break
        self._quiesce_wanted.clear()
        self._quiesced.set()

    def quiesce(self, timeout: float = 10.0) -> None:
        """Return once the agent has handled every event the server had sent it when this was
        called (a round trip on its connection orders them) and nothing more came."""
        self._quiesced.clear()
        self._quiesce_wanted.set()
        assert self._quiesced.wait(timeout), "agent did not become quiet"

    def start(self) -> AgentThread:
        self.thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and self.error is None

    def stop(self) -> None:
        self.runner.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "agent thread did not stop"
        assert self.error is None, f"agent thread died: {self.error!r}"


class AgentProcess:
    """``python -m xenoffload -v ARGS`` in the background; stderr (its log) goes to a file."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "xenoffload", "-v", *args],
            stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.process.poll() is None

    def hup(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def terminate(self) -> None:
        """Send SIGTERM (the agent stops within its tick); :meth:`stop` waits for it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        """SIGTERM, wait (bounded), kill if needed; return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m xenoffload ARGS`` to completion."""
    return subprocess.run([sys.executable, "-m", "xenoffload", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


# --------------------------------------------------------------------------------- the lab


class Lab:
    """XenStore, domains, vifs and (optionally) their veth stand-ins for one test."""

    def __init__(self, tmp: Path, guests: tuple[int, ...] = (1, 2, 3),
                 with_netns: bool = False) -> None:
        global _ns_serial
        self.tmp = tmp
        self.guests = guests
        self.xenstored = EmbeddedXenstored(tmp / "xenstored.sock",
                                           {domid: tmp / f"dom{domid}.sock" for domid in guests})
        self.namespaces: Namespaces | None = None
        self.netns: dict[int, str] = {}
        self.vifs: list[VifPaths] = []
        self._agents: list[AgentThread | AgentProcess] = []
        self.xenstored.start()
        try:
            self.toolstack = connect_store(self.xenstored.socket_path)
            create_domain(self.toolstack, 0, "Domain-0")
            if with_netns:
                _ns_serial += 1
                self.namespaces = Namespaces(f"xoe2e{os.getpid()}x{_ns_serial}")
                self.netns[0] = self.namespaces.add("d0")
        except BaseException:
            self.xenstored.stop()
            if self.namespaces is not None:
                self.namespaces.remove_all()
            raise

    # ------------------------------------------------------------------ world

    @property
    def socket(self) -> str:
        return self.xenstored.socket_path

    def guest_socket(self, domid: int) -> str:
        return self.xenstored.domain_sockets[domid]

    def add_guest(self, domid: int, bridges: list[str], name: str | None = None) -> list[VifPaths]:
        """Create guest ``domid`` with one vif per bridge (devid 0, 1, ...) as libxl does,
        and (with netns) the veth pair of each vif."""
        create_domain(self.toolstack, domid, name or f"guest{domid}")
        if self.namespaces is not None and domid not in self.netns:
            self.netns[domid] = self.namespaces.add(f"d{domid}")
        paths = []
        for devid, bridge in enumerate(bridges):
            self.add_device(domid, devid)
            paths.append(create_vif(self.toolstack, VifSpec(
                domid, devid, f"00:16:3e:00:{domid:02x}:{devid:02x}", bridge)))
        self.vifs.extend(paths)
        return paths

    def add_device(self, domid: int, devid: int) -> None:
        """Create the veth pair of vif domid/devid (what netback + netfront would create)."""
        if self.namespaces is not None:
            self.namespaces.veth(self.netns[0], f"vif{domid}.{devid}", self.netns[domid],
                                 f"eth{devid}")

    def delete_device(self, domid: int, devid: int) -> None:
        assert self.namespaces is not None
        subprocess.run(["ip", "-n", self.netns[0], "link", "del", f"vif{domid}.{devid}"],
                       check=True, capture_output=True, timeout=20)

    def vif_device(self, domid: int, devid: int) -> DeviceRef:
        return DeviceRef(f"vif{domid}.{devid}", self.netns.get(0, "dom0"))

    def eth_device(self, domid: int, devid: int) -> DeviceRef:
        return DeviceRef(f"eth{devid}", self.netns.get(domid, f"dom{domid}"))

    def write_file(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    # ------------------------------------------------------------------ agents

    def backend_agent(self, policy: Policy, toggles: Toggles,
                      factory: Callable[[], Store] | None = None) -> AgentThread:
        """Start a full-mode backend agent for dom0 in a thread, enforcing on the veths."""
        logic = BackendAgent(policy, 0, Mode.FULL, self._backend_enforcer(toggles))
        return self._track(AgentThread(
            logic, factory or (lambda: connect_store(self.socket, timeout=2.0)), "backend"))

    def guest_agent(self, domid: int, policy: Policy, toggles: Toggles,
                    factory: Callable[[], Store] | None = None) -> AgentThread:
        """Start a full-mode guest agent for ``domid`` over its unprivileged socket."""
        def enforcer(vif: VifIdentity) -> Enforcer:
            return TogglesEnforcer(toggles, self.eth_device(domid, vif.devid))

        logic = GuestAgent(policy, domid, Mode.FULL, enforcer)
        if factory is None:
            sock = self.guest_socket(domid)
            factory = lambda: connect_store(sock, timeout=2.0)  # noqa: E731
        return self._track(AgentThread(logic, factory, f"guest{domid}"))

    def _backend_enforcer(self, toggles: Toggles) -> Callable[[VifIdentity], Enforcer]:
        def enforcer(vif: VifIdentity) -> Enforcer:
            return TogglesEnforcer(toggles, self.vif_device(vif.domid, vif.devid))

        return enforcer

    def backend_process(self, *extra: str, log_name: str = "backend.log") -> AgentProcess:
        """Start ``xenoffload backend-agent`` (full mode, netlink toggles in the dom0 netns)."""
        # --no-tc: this machine's kernel lacks act_csum, so tc would report every computed
        # from-guest direction unenforced; tests/toggles and the Xen lab cover tc.
        args = ["backend-agent", "--xenstore", self.socket, "--mode", "full",
                "--toggles", "netlink", "--no-tc", "--netns", self.netns[0], *extra]
        return self._track(AgentProcess(args, self.tmp / log_name))

    def guest_process(self, domid: int, *extra: str) -> AgentProcess:
        """Start ``xenoffload guest-agent`` for ``domid`` over its unprivileged socket."""
        args = ["guest-agent", "--xenstore", self.guest_socket(domid), "--mode", "full",
                "--toggles", "netlink", "--no-tc", "--netns", self.netns[domid],
                "--device-pattern", "eth{devid}", *extra]
        return self._track(AgentProcess(args, self.tmp / f"guest{domid}.log"))

    def _track(self, agent: Any) -> Any:
        if isinstance(agent, AgentThread):
            agent.start()
        self._agents.append(agent)
        return agent

    def close(self) -> None:
        errors: list[str] = []
        for agent in self._agents:
            if isinstance(agent, AgentProcess):
                agent.terminate()
            else:
                agent.runner.stop()
        for agent in reversed(self._agents):
            try:
                agent.stop()
            except AssertionError as error:
                errors.append(str(error))
        with contextlib.suppress(StoreUnavailable):
            self.toolstack.close()
        self.xenstored.stop()
        if self.namespaces is not None:
            self.namespaces.remove_all()
        assert not errors, errors

    # ------------------------------------------------------------------ observation

    def store(self) -> PyxsStore:
        """A fresh dom0 connection (the toolstack's may have died with a killed server)."""
        with contextlib.suppress(StoreUnavailable):
            self.toolstack.read("/local/domain/0/name")
            return self.toolstack
        self.toolstack = connect_store(self.socket)
        return self.toolstack

    def reports(self) -> dict[tuple[int, int], VifReport]:
        return {(r.guest_domid, r.devid): r for r in collect(self.store(), self.vifs)}

    def settled(self, expected: Mapping[tuple[int, int], LinkResult]) -> bool:
        """True when every expected vif is Connected at both ends with that result, and both
        ends report their enforcement as ``ok`` (or unenforced only for what the options
        exclude: :func:`status_ok`)."""
        reports = self.reports()
        for key, result in expected.items():
            report = reports.get(key)
            if report is None or report.backend_state is not XenbusState.CONNECTED \
                    or report.frontend_state is not XenbusState.CONNECTED \
                    or report.result != result or not status_ok(report.backend_status) \
                    or not status_ok(report.frontend_status):
                return False
        return True

    def wait_settled(self, expected: Mapping[tuple[int, int], LinkResult],
                     timeout: float = 10.0) -> None:
        wait_until(lambda: self.settled(expected), timeout,
                   f"vifs connected with {expected}")

    def kernel(self, device: DeviceRef) -> dict[str, bool]:
        """The device's checksum features as the kernel reports them (netlink)."""
        from xenoffload.toggles.netlink import NetlinkToggles

        return {name: state.active for name, state in NetlinkToggles().read(device).items()
                if "checksum" in name}

    def ethtool_k(self, device: DeviceRef) -> dict[str, bool]:
        """The device's checksum features as ``ip netns exec NS ethtool -k`` prints them."""
        assert device.netns is not None
        done = subprocess.run(["ip", "netns", "exec", device.netns, "ethtool", "-k",
                               device.name], capture_output=True, text=True, timeout=20,
                              check=True)
        features = {}
        for line in done.stdout.splitlines()[1:]:
            name, _, rest = line.strip().partition(": ")
            if "checksum" in name and rest:
                features[name] = rest.split()[0] == "on"
        return features

    def kernel_matches(self, key: tuple[int, int], result: LinkResult) -> bool:
        try:
            self.assert_kernel_matches(key, result)
        except AssertionError:
            return False
        return True

    def assert_kernel_matches(self, key: tuple[int, int], result: LinkResult) -> None:
        """Both devices of vif ``key`` transmit blank checksums exactly where ``result``
        lets them (netlink and ethtool agree)."""
        domid, devid = key
        for device, sends in ((self.vif_device(domid, devid), result.to_guest),
                              (self.eth_device(domid, devid), result.from_guest)):
            wanted = sends.ipv4 and sends.ipv6
            assert self.kernel(device)[GENERIC] is wanted, (device, result)
            assert self.ethtool_k(device)[GENERIC] is wanted, (device, result)

    def requests_since(self, index: int) -> list[RequestRecord]:
        return list(self.xenstored.request_log[index:])

    def mutations_under(self, directory: str, since: int,
                        conn_ids: set[int] | None = None) -> list[RequestRecord]:
        """Requests since ``since`` that change a node at or under ``directory``."""
        prefix = directory.encode()
        return [record for record in self.requests_since(since)
                if record.op in MUTATING_OPS and record.reply_op != "ERROR"
                and (conn_ids is None or record.conn_id in conn_ids)
                and (record.payload.split(b"\0", 1)[0] == prefix
                     or record.payload.startswith(prefix + b"/"))]

    def conn_ids(self, token: str) -> set[int]:
        """Connection ids that registered a watch whose token starts with ``token``."""
        marker = b"\0" + token.encode()
        return {record.conn_id for record in self.xenstored.request_log
                if record.op == "WATCH" and marker in record.payload}


@contextlib.contextmanager
def lab_context(tmp: Path, with_netns: bool, guests: tuple[int, ...] = (1, 2, 3)
                ) -> Iterator[Lab]:
    lab = Lab(tmp, guests, with_netns)
    try:
        yield lab
    finally:
        lab.close()
