"""Two hosts: a VM migrated from one to the other, and what of its policy follows it.

Two ``xenoffload xenstored`` processes are two hosts' XenStores (the Xen lab cannot run two
Xen hosts), each with its own policy file and its own ``xenoffload backend-agent`` (full mode,
no kernel devices: what is checked is what both ends negotiate and publish). The guest's own
``xenoffload guest-agent`` reaches XenStore through :class:`GuestLine`, a socket relay standing
for the guest's xenbus connection: on host A it is domain 3's, and when the guest resumes on
host B it is domain 7's (a reconnect here; a real guest's kernel keeps its connection and
registers its watches again, which the agent handles the same way: it reads its domid).

The migration is played in libxl's order (xl migrate / xl migrate-receive, tools/xl/xl_migrate.c):
the destination creates the domain, same UUID, new domid, named ``<name>--incoming``, and its
devices (xapi's other-config comes with them on a pool); the source renames its domain
``<name>--migratedaway``; the destination renames its own ``<name>`` and unpauses it (the guest
runs there now); the source destroys its domain.

The VM ``web`` has five vifs, one per policy source:

====  ========================================================  ==========  ==========
vif   source                                                    host A      host B
====  ========================================================  ==========  ==========
0     a ``uuid`` rule in the policy file both hosts ship        suppressed  suppressed
1     xapi's ``other-config:ethtool-tx/-rx`` (the pool's)       suppressed  suppressed
2     a ``domain = "web"`` rule (matches after libxl's rename)  suppressed  suppressed
3     ``xenoffload set web/3`` on host A                        suppressed  computed
4     the ``uuid`` rule, and ``set --local 4 --rx off`` in the  to-guest    to-guest
      guest (the guest's own override)                          computed    computed
====  ========================================================  ==========  ==========
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenoffload.negotiation import LinkResult
from xenoffload.overrides import OverrideSetting, parse_override, vif_key
from xenoffload.paths import VifPaths, domain_path, override_path, vm_dir, xapi_vif_config_root
from xenoffload.policy import DirectionSetting
from xenoffload.schema import FamilyFlags, Role
from xenoffload.show import VifReport, collect
from xenoffload.store.base import StoreUnavailable, Transaction, run_transaction
from xenoffload.store.pyxs_store import PyxsStore, connect_store
from xenoffload.toolstack import VifSpec, create_domain, create_vif, destroy_vif
from xenoffload.xenbus import XenbusState

from .lab import COMPUTED, SUPPRESSED, AgentProcess, run_cli, wait_until

UUID = "8e0b4bd2-3c1a-4a8e-9c0d-2f6c1d1e5a77"
NAME = "web"
SOURCE_DOMID, DEST_DOMID = 3, 7
DEVIDS = range(5)
ALL = FamilyFlags(True, True)
#: vif 4: the backend allows both ways, the guest refuses blank checksums towards it.
GUEST_REFUSES = LinkResult(FamilyFlags(), ALL)

#: The policy file every host ships (one configuration manager, one file).
HOST_POLICY = f"""\
[[rule]]
name = "web's VM, by UUID"
uuid = "{UUID.upper()}"
devid = 0
to-guest = true
from-guest = true

[[rule]]
name = "web by name"
domain = "{NAME}"
devid = 2
to-guest = true
from-guest = true

[[rule]]
name = "web's VM, by UUID, vif 4"
uuid = "{UUID}"
devid = 4
to-guest = true
from-guest = true
"""
GUEST_POLICY = """\
[default]
to-guest = true
from-guest = true
"""

BEFORE = {0: SUPPRESSED, 1: SUPPRESSED, 2: SUPPRESSED, 3: SUPPRESSED, 4: GUEST_REFUSES}
AFTER = {0: SUPPRESSED, 1: SUPPRESSED, 2: SUPPRESSED, 3: COMPUTED, 4: GUEST_REFUSES}


class XenstoredProcess:
    """``python -m xenoffload xenstored``: one host's XenStore, with one guest socket."""

    def __init__(self, directory: Path, domid: int) -> None:
        self.socket = str(directory / "xenstored.sock")
        self.guest_socket = str(directory / f"dom{domid}.sock")
        self._log = open(directory / "xenstored.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "xenoffload", "xenstored", "--socket", self.socket,
             "--domain", f"{domid}:{self.guest_socket}"],
            stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)

    def connect(self) -> PyxsStore:
        store: PyxsStore = wait_until(lambda: connect_store(self.socket, timeout=2.0), 20,
                                      f"xenstored on {self.socket}")
        return store

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


class Host:
    """One host: its XenStore, its toolstack connection, its policy file, its backend agent."""

    def __init__(self, name: str, directory: Path, guest_domid: int) -> None:
        directory.mkdir()
        self.name = name
        self.dir = directory
        self.xenstored = XenstoredProcess(directory, guest_domid)
        self.toolstack = self.xenstored.connect()
        create_domain(self.toolstack, 0, "Domain-0")
        self.policy = directory / "policy.toml"
        self.policy.write_text(HOST_POLICY)
        self.agent: AgentProcess | None = None

    @property
    def socket(self) -> str:
        return self.xenstored.socket

    def start_agent(self) -> AgentProcess:
        self.agent = AgentProcess(
            ["backend-agent", "--xenstore", self.socket, "--mode", "full", "--toggles", "none",
             "--config", str(self.policy)], self.dir / "backend.log")
        return self.agent

    def reports(self, domid: int) -> dict[int, VifReport]:
        return {report.devid: report for report in
                collect(self.toolstack, [VifPaths(0, domid, devid) for devid in DEVIDS])}

    def offers(self, domid: int) -> dict[int, FamilyFlags | None]:
        """What each vif's backend offers to send blank (None: not advertised by an agent
        in InitWait or later yet)."""
        return {devid: report.backend.advertisement.tx
                if report.backend.source == "xenoffload" and report.backend_state is not None
                and report.backend_state >= XenbusState.INIT_WAIT else None
                for devid, report in self.reports(domid).items()}

    def settled(self, domid: int, expected: dict[int, LinkResult]) -> bool:
        reports = self.reports(domid)
        return all(reports[devid].backend_state is XenbusState.CONNECTED
                   and reports[devid].frontend_state is XenbusState.CONNECTED
                   and reports[devid].result == result for devid, result in expected.items())

    def wait_settled(self, domid: int, expected: dict[int, LinkResult],
                     timeout: float = 20.0) -> None:
        try:
            wait_until(lambda: self.settled(domid, expected), timeout,
                       f"host {self.name}: domain {domid}'s vifs connected with {expected}")
        except AssertionError as error:
            raise AssertionError(f"{error}; now {self._results(domid)}") from None

    def _results(self, domid: int) -> dict[int, object]:
        with contextlib.suppress(Exception):
            return {devid: (report.backend_state, report.frontend_state, report.result)
                    for devid, report in self.reports(domid).items()}
        return {}

    def set(self, *args: str) -> None:
        done = run_cli("set", "--xenstore", self.socket, *args)
        assert done.returncode == 0, done.stderr

    def rename(self, domid: int, old: str, new: str) -> None:
        """libxl_domain_rename: the domain's ``name`` and its VM directory's."""
        def body(txn: Transaction) -> None:
            assert txn.read(f"{domain_path(domid)}/name") == old.encode()
            txn.write(f"{domain_path(domid)}/name", new.encode())
            txn.write(f"{vm_dir(UUID)}/name", new.encode())

        run_transaction(self.toolstack, body)

    def xapi_other_config(self, domid: int, devid: int, values: dict[str, str]) -> None:
        """What xapi writes for a VIF when it builds the domain (from the pool database)."""
        for key, value in values.items():
            self.toolstack.write(f"{xapi_vif_config_root(domid, devid)}/{key}", value.encode())

    def destroy(self, domid: int) -> None:
        """libxl_domain_destroy (devices, then the home and the VM directory) and xapi's
        clean-up of its private tree."""
        for devid in DEVIDS:
            destroy_vif(self.toolstack, VifPaths(0, domid, devid))
        # libxl__xs_path_cleanup removes the emptied parents of a device's directory too.
        guest_backends = f"/local/domain/0/backend/vif/{domid}"
        if not self.toolstack.directory(guest_backends):
            self.toolstack.rm(guest_backends)
        for path in (domain_path(domid), vm_dir(UUID), f"/xapi/{domid}"):
            if self.toolstack.try_read(path) is not None:
                self.toolstack.rm(path)

    def close(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        with contextlib.suppress(StoreUnavailable):
            self.toolstack.close()
        self.xenstored.stop()


def create_web(host: Host, domid: int, name: str) -> None:
    """The toolstack's part of starting (or receiving) ``web``: its home, then its vifs."""
    create_domain(host.toolstack, domid, name, uuid=UUID)
    # xapi writes a VIF's private data, other-config included, as it builds the domain.
    host.xapi_other_config(domid, 1, {"ethtool-tx": "on", "ethtool-rx": "on"})
    for devid in DEVIDS:
        create_vif(host.toolstack, VifSpec(domid, devid, f"00:16:3e:5e:b0:{devid:02x}",
                                           "xenbr0"))


class GuestLine:
    """The guest's xenbus connection: a Unix socket relaying to the guest socket of the host
    the guest runs on. :meth:`move_to` is the guest resuming on another host: the connection
    ends there and the next one reaches the new host's XenStore as the new domain."""

    def __init__(self, path: str, upstream: str) -> None:
        self.path = path
        self.upstream = upstream
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(8)
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="guest-line", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, None)
        while not self._stop.is_set():
            for key, _ in selector.select(0.05):
                if key.data is None:
                    client, _ = self._listener.accept()
                    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    try:
                        server.connect(self.upstream)
                    except OSError:
                        client.close()
                        server.close()
                        continue
                    with self._lock:
                        self._pairs.append((client, server))
                    selector.register(client, selectors.EVENT_READ, server)
                    selector.register(server, selectors.EVENT_READ, client)
                    continue
                source, target = key.fileobj, key.data
                assert isinstance(source, socket.socket)
                try:
                    data = source.recv(65536)
                    if data:
                        target.sendall(data)
                        continue
                except OSError:
                    pass
                for end in (source, target):
                    with contextlib.suppress(KeyError, ValueError):
                        selector.unregister(end)
                    end.close()
            with self._lock:
                for pair in [pair for pair in self._pairs if pair[0].fileno() < 0
                             or pair[1].fileno() < 0]:
                    self._pairs.remove(pair)
        selector.close()

    def move_to(self, upstream: str) -> None:
        """New connections reach ``upstream``; the current ones are cut."""
        with self._lock:
            self.upstream = upstream
            for client, server in self._pairs:
                for end in (client, server):
                    with contextlib.suppress(OSError):
                        end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.move_to(self.upstream)
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[Host, Host]]:
    made: list[Host] = []
    try:
        made.append(Host("A", tmp_path / "a", SOURCE_DOMID))
        made.append(Host("B", tmp_path / "b", DEST_DOMID))
        yield made[0], made[1]
    finally:
        for host in made:
            host.close()


def test_a_migrated_vm_keeps_what_every_host_knows_and_loses_one_hosts_override(
        hosts: tuple[Host, Host], tmp_path: Path) -> None:
    source, dest = hosts
    # Host B's agent starts first, before B has any xapi tree (/xapi comes with the VM).
    agent_b = dest.start_agent()
    agent_a = source.start_agent()

    # --- the VM runs on host A as domain 3.
    create_web(source, SOURCE_DOMID, NAME)
    line = GuestLine(str(tmp_path / "guest-xenbus.sock"), source.xenstored.guest_socket)
    guest_policy = tmp_path / "guest.toml"
    guest_policy.write_text(GUEST_POLICY)
    guest = AgentProcess(["guest-agent", "--xenstore", line.path, "--mode", "full",
                          "--toggles", "none", "--config", str(guest_policy)],
                         tmp_path / "guest.log")
    try:
        source.wait_settled(SOURCE_DOMID, {**BEFORE, 3: COMPUTED, 4: SUPPRESSED})
        source.set(f"{NAME}/3", "--tx", "on", "--rx", "on")  # host A's override, by UUID
        done = run_cli("set", "--xenstore", line.path, "--local", "4", "--rx", "off")
        assert done.returncode == 0, done.stderr  # in the guest: its own vif 4, rx = to-guest
        source.wait_settled(SOURCE_DOMID, BEFORE)
        override = override_path(0, Role.BACKEND, vif_key(UUID, SOURCE_DOMID, 3))
        assert source.toolstack.try_read(override) is not None

        # --- xl migrate-receive on host B: same UUID, new domid, named web--incoming.
        create_web(dest, DEST_DOMID, f"{NAME}--incoming")
        # B's agent saw /xapi appear after it started: vif 1's other-config is in force at
        # once (the backend offers blank checksums before the guest is there); web--incoming
        # is not "web": the domain rule does not match vif 2 yet.
        offers = {0: ALL, 1: ALL, 2: FamilyFlags(), 3: FamilyFlags(), 4: ALL}
        wait_until(lambda: dest.offers(DEST_DOMID) == offers, 10,
                   f"host B's backends (InitWait) to offer {offers}")

        # --- xl migrate on host A: the domain renamed away; host B renames its own.
        source.rename(SOURCE_DOMID, NAME, f"{NAME}--migratedaway")
        dest.rename(DEST_DOMID, f"{NAME}--incoming", NAME)
        wait_until(lambda: dest.offers(DEST_DOMID) == {**offers, 2: ALL}, 10,
                   "host B's vif 2 re-matched against the domain rule after the rename")
        # ... unpauses it: the guest runs on host B, as domain 7.
        line.move_to(dest.xenstored.guest_socket)
        dest.wait_settled(DEST_DOMID, AFTER)
        # ... and host A destroys its domain.
        source.destroy(SOURCE_DOMID)

        # Host B: what both hosts ship and what the pool carries followed; so did the
        # guest's own override (its agent carried it to the new home); host A's did not.
        dest.wait_settled(DEST_DOMID, AFTER)
        assert "this domain is now domid 7 (was 3" in guest.log()
        local = override_path(DEST_DOMID, Role.FRONTEND, "vif/4")
        carried = dest.toolstack.try_read(local)
        assert carried is not None
        assert parse_override(local, carried) == OverrideSetting(
            to_guest=DirectionSetting(False, False))
        assert dest.toolstack.try_read(override_path(0, Role.BACKEND, vif_key(
            UUID, DEST_DOMID, 3))) is None

        # Host A: nothing of domain 3 left (its agent wrote nothing back), the agent running
        # and forgetting the vifs; its override stays, keyed by the UUID, until cleared.
        wait_until(lambda: agent_a.log().count("device removed") >= len(DEVIDS), 10,
                   "host A's agent to drop domain 3's vifs")
        for path in (domain_path(SOURCE_DOMID), f"/local/domain/0/backend/vif/{SOURCE_DOMID}",
                     vm_dir(UUID), f"/xapi/{SOURCE_DOMID}"):
            assert source.toolstack.try_read(path) is None, path
        assert source.toolstack.try_read(override) is not None
        assert agent_a.running() and agent_b.running() and guest.running()
        for agent in (agent_a, agent_b, guest):
            assert "Traceback" not in agent.log() and " ERROR " not in agent.log()
    finally:
        guest.stop()
        line.close()
        os.unlink(line.path)
