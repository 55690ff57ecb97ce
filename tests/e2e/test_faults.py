"""Faults: the agent reconnects with backoff, re-reads, converges, flaps nothing, loses no policy.

Agents run in-process (the Python API: BackendAgent/GuestAgent driven by Runner) over pyxs and
the embedded xenstored, enforcing on veth stand-ins through netlink wrapped in a counter of
kernel change requests. Every test starts from the same world:

* guest 1: vif 1/0 on xenbr0 (checksums computed), vif 1/1 on xenpriv0 (suppressed by the
  dom0 policy file);
* guest 2: vif 2/0 on xenbr0, suppressed by a run-time override (``xenoffload set 2/0``), the
  policy that must never be lost.
"""

from __future__ import annotations

import logging
import re
import threading

import pytest

from xenoffload.override_store import write_override
from xenoffload.overrides import OverrideSetting
from xenoffload.paths import override_path
from xenoffload.policy import DirectionSetting, parse_policy
from xenoffload.schema import Role
from xenoffload.store.base import Store, Transaction, run_transaction
from xenoffload.store.pyxs_store import connect_store
from xenoffload.toggles.base import DeviceRef
from xenoffload.toggles.netlink import NetlinkToggles
from xenoffload.toolstack import VifSpec, create_domain, create_vif
from xenoffload.xenstored.server import RequestRecord

from .lab import COMPUTED, SUPPRESSED, AgentThread, CountingToggles, EventFaults, Lab, wait_until

BACKEND_POLICY = parse_policy({"rule": [{"bridge": "xenpriv0", "to-guest": True,
                                         "from-guest": True}]})
GUEST_POLICY = parse_policy({"default": {"to-guest": True, "from-guest": True}})
ON = OverrideSetting(DirectionSetting(True, True), DirectionSetting(True, True))
OFF = OverrideSetting(DirectionSetting(False, False), DirectionSetting(False, False))
EXPECTED = {(1, 0): COMPUTED, (1, 1): SUPPRESSED, (2, 0): SUPPRESSED}
LAYOUT = {1: ["xenbr0", "xenpriv0"], 2: ["xenbr0"]}


class World:
    """The lab above, its agents and the kernel-change counter."""

    def __init__(self, lab: Lab, wrap: type[EventFaults] | None = None,
                 **faults: float | bool) -> None:
        self.lab = lab
        self.toggles = CountingToggles(NetlinkToggles())
        for domid, bridges in LAYOUT.items():
            lab.add_guest(domid, bridges)
        write_override(lab.toolstack, 0, Role.BACKEND, "vif/2/0", ON)

        def connect(path: str) -> Store:
            store = connect_store(path, timeout=2.0)
            return wrap(store, **faults) if wrap is not None else store  # type: ignore[arg-type]

        self.backend = lab.backend_agent(BACKEND_POLICY, self.toggles,
                                         lambda: connect(lab.socket))
        self.guests = [lab.guest_agent(domid, GUEST_POLICY, self.toggles,
                                       lambda d=domid: connect(lab.guest_socket(d)))  # type: ignore[misc]
                       for domid in LAYOUT]

    @property
    def devices(self) -> list[DeviceRef]:
        return [dev for key in EXPECTED
                for dev in (self.lab.vif_device(*key), self.lab.eth_device(*key))]

    def converged(self, expected: dict[tuple[int, int], object] | None = None,
                  timeout: float = 15.0) -> None:
        """Wait until every vif is Connected with the expected result, then check the
        kernel of both ends."""
        wanted = expected or EXPECTED
        self.lab.wait_settled(wanted, timeout)  # type: ignore[arg-type]
        # XenStore settles first; each end applies on its own snapshot, a moment later.
        wait_until(lambda: all(self.lab.kernel_matches(key, result)  # type: ignore[arg-type]
                               for key, result in wanted.items()), 5, "kernel to match")
        for key, result in wanted.items():
            self.lab.assert_kernel_matches(key, result)  # type: ignore[arg-type]

    def sets_since(self, index: int) -> dict[DeviceRef, int]:
        changed: dict[DeviceRef, int] = {}
        for record in self.toggles.sets[index:]:
            changed[record.device] = changed.get(record.device, 0) + 1
        return changed

    def override_kept(self) -> bool:
        raw = self.lab.store().try_read("/local/domain/0/xenoffload/policy/vif/2/0")
        return raw is not None and b"to-guest-ipv4=on" in raw


def _backoff_delays(caplog: pytest.LogCaptureFixture, thread: str) -> list[float]:
    return [float(m.group(1)) for r in caplog.records if r.threadName == thread
            for m in [re.search(r"retrying in ([\d.]+)s", r.getMessage())] if m]


def _recreate_toolstack_layout(lab: Lab) -> None:
    """What the toolstack does once a xenstored restarted without its tree: lay out the
    domains and their vifs again (guests keep running; frontends start over)."""
    store = lab.store()
    create_domain(store, 0, "Domain-0")
    for domid, bridges in LAYOUT.items():
        create_domain(store, domid, f"guest{domid}")
        for devid, bridge in enumerate(bridges):
            create_vif(store, VifSpec(domid, devid, f"00:16:3e:00:{domid:02x}:{devid:02x}",
                                      bridge))


def _stall_on(lab: Lab, wanted: bytes) -> threading.Event:
    """From the next request whose payload is ``wanted`` on, the server answers nothing (its
    reply still goes out): the moment to kill it."""
    hit = threading.Event()

    def on_request(record: RequestRecord) -> None:
        if record.payload == wanted and not hit.is_set():
            lab.xenstored.faults.stall_replies = True
            hit.set()

    lab.xenstored.server.on_request = on_request
    return hit


@pytest.mark.parametrize("keep_tree", [True, False], ids=["keep-tree", "fresh-tree"])
def test_xenstored_killed_mid_negotiation_and_restarted(
        netlab: Lab, caplog: pytest.LogCaptureFixture, keep_tree: bool) -> None:
    caplog.set_level(logging.INFO)
    backend_dir = "/local/domain/0/backend/vif/1/1"
    # Stall as soon as the backend of vif 1/1 announces InitWait: mid-negotiation.
    hit = _stall_on(netlab, f"{backend_dir}/state\0".encode() + b"2")
    world = World(netlab)
    assert hit.wait(10), "the backend never reached InitWait"
    applied_before = {dev for dev in world.devices if world.toggles.sets_on(dev)}
    sets = len(world.toggles.sets)

    netlab.xenstored.kill()
    wait_until(lambda: len(_backoff_delays(caplog, "backend")) >= 2, 10,
               "two reconnection attempts while xenstored is down")
    netlab.xenstored.faults.stall_replies = False
    netlab.xenstored.restart(keep_tree=keep_tree)
    if not keep_tree:
        _recreate_toolstack_layout(netlab)

    world.converged()
    delays = _backoff_delays(caplog, "backend")
    assert len(delays) >= 2 and delays == sorted(delays) and delays[-1] > delays[0]
    assert world.override_kept()
    for device, count in world.sets_since(sets).items():
        assert device not in applied_before, f"{device} flapped"
        assert count == 1, f"{device} set {count} times"
    assert world.backend.alive


@pytest.mark.parametrize("keep_tree", [True, False], ids=["keep-tree", "fresh-tree"])
def test_xenstored_killed_while_connected_and_restarted(
        netlab: Lab, caplog: pytest.LogCaptureFixture, keep_tree: bool) -> None:
    caplog.set_level(logging.INFO)
    world = World(netlab)
    world.converged()
    sets = len(world.toggles.sets)

    netlab.xenstored.kill()
    wait_until(lambda: len(_backoff_delays(caplog, "backend")) >= 2, 10,
               "two reconnection attempts while xenstored is down")
    netlab.xenstored.restart(keep_tree=keep_tree)
    if not keep_tree:
        _recreate_toolstack_layout(netlab)
        wait_until(world.override_kept, 10, "the agent restoring the lost override")

    world.converged()
    assert world.override_kept()
    assert world.sets_since(sets) == {}  # no kernel toggle flapped
    delays = _backoff_delays(caplog, "backend")
    assert len(delays) >= 2 and delays == sorted(delays) and delays[-1] > delays[0]
    if not keep_tree:
        assert any("restored 1 policy override" in r.getMessage() for r in caplog.records)


def test_connection_cut_reconnects_and_rereads_what_changed_meanwhile(netlab: Lab) -> None:
    world = World(netlab)
    world.converged()
    sets, requests = len(world.toggles.sets), len(netlab.xenstored.request_log)
    (old_conn,) = netlab.conn_ids("xenoffload-backend")

    model = netlab.xenstored.model
    conn = next(c for c in model.connections() if c.conn_id == old_conn)
    model.disconnect(conn)  # xenstored ends the session and resets its socket
    conn.close_listener(conn)  # type: ignore[misc]
    write_override(netlab.toolstack, 0, Role.BACKEND, "vif/1/0", ON)  # while it is away

    expected = {**EXPECTED, (1, 0): SUPPRESSED}
    world.converged(expected)
    assert world.backend.runner.reconnects >= 1
    assert set(world.sets_since(sets)) == {netlab.vif_device(1, 0), netlab.eth_device(1, 0)}
    new_conns = netlab.conn_ids("xenoffload-backend") - {old_conn}
    assert new_conns
    for key in ((1, 1), (2, 0)):  # unchanged vifs: nothing rewritten by the new connection
        paths = next(p for p in netlab.vifs if (p.guest_domid, p.devid) == key)
        assert not netlab.mutations_under(paths.backend_dir, requests, new_conns)


def test_commits_failing_with_eagain_many_times_in_a_row(
        netlab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    world = World(netlab)
    world.converged()
    sets = len(world.toggles.sets)

    netlab.xenstored.fail_next_commits(300)  # many times the 8 attempts of one step
    write_override(netlab.toolstack, 0, Role.BACKEND, "vif/1/0", ON)

    expected = {**EXPECTED, (1, 0): SUPPRESSED}
    world.converged(expected, timeout=20)
    assert any("conflicted (EAGAIN) 8 times in a row; retrying later" in r.getMessage()
               for r in caplog.records)
    # A storm of conflicts is retried per vif with backoff, never by dropping the connection.
    assert world.backend.runner.reconnects == 0
    assert set(world.sets_since(sets)) == {netlab.vif_device(1, 0), netlab.eth_device(1, 0)}
    assert all(count == 1 for count in world.sets_since(sets).values())
    assert world.override_kept()
    assert world.backend.alive


def _guest_keeps_checksums_on_both_vifs(lab: Lab) -> None:
    """The guest administrator of guest 1 turns suppression off on both of its vifs at once
    (two guest overrides in one transaction): the guest rewrites both frontends' keys."""

    def body(txn: Transaction) -> None:
        for devid in (0, 1):
            txn.write(override_path(1, Role.FRONTEND, f"vif/{devid}"),
                      b"to-guest=off from-guest=off")

    run_transaction(lab.store(), body)


@pytest.mark.parametrize("faults", [{"duplicate": True}, {"delay": 0.3},
                                    {"coalesce": True, "delay": 0.2}],
                         ids=["duplicated", "late", "coalesced"])
def test_watch_events_duplicated_late_or_coalesced(
        netlab: Lab, faults: dict[str, float | bool]) -> None:
    world = World(netlab, EventFaults, **faults)
    world.converged()
    sets, requests = len(world.toggles.sets), len(netlab.xenstored.request_log)

    _guest_keeps_checksums_on_both_vifs(netlab)

    expected = {**EXPECTED, (1, 1): COMPUTED}
    world.converged(expected)
    changed = world.sets_since(sets)
    assert set(changed) == {netlab.vif_device(1, 1), netlab.eth_device(1, 1)}
    assert all(count == 1 for count in changed.values())
    backend = netlab.conn_ids("xenoffload-backend")
    # Re-reading after every (duplicated, late) event writes nothing twice.
    for paths in netlab.vifs:
        mutations = netlab.mutations_under(paths.backend_dir, requests, backend)
        written = [m.payload.split(b"\0")[0] for m in mutations]
        assert len(written) == len(set(written)), written
    assert world.override_kept()


def test_vif_device_vanishing_while_being_toggled_is_retried_until_it_is_back(
        netlab: Lab) -> None:
    world = World(netlab)
    world.converged()
    victim = netlab.vif_device(1, 1)
    sets = len(world.toggles.sets)

    def vanish(device: DeviceRef) -> None:
        if device == victim:
            world.toggles.before_apply = None
            netlab.delete_device(1, 1)  # netback removed vif1.1 between read and set

    world.toggles.before_apply = vanish
    write_override(netlab.toolstack, 0, Role.BACKEND, "vif/1/1", OFF)
    status = "/local/domain/0/backend/vif/1/1/xenoffload-csum-status"
    wait_until(lambda: netlab.store().read(status).startswith(b"no-device"), 10,
               "the backend reporting the missing device")
    assert world.backend.alive
    netlab.add_device(1, 1)  # the device is back (a fresh veth: tx checksum on)

    wait_until(lambda: netlab.store().read(status) == b"ok", 10, "the retry succeeding")
    assert netlab.kernel(victim)["tx-checksum-ip-generic"] is False
    assert netlab.ethtool_k(victim)["tx-checksum-ip-generic"] is False
    unchanged = {dev for key in ((1, 0), (2, 0))
                 for dev in (netlab.vif_device(*key), netlab.eth_device(*key))}
    assert not unchanged & set(world.sets_since(sets))
    assert world.override_kept()


def test_backend_agent_restart_in_process_sets_nothing(netlab: Lab) -> None:
    world = World(netlab)
    world.converged()
    sets, requests = len(world.toggles.sets), len(netlab.xenstored.request_log)
    world.backend.stop()

    again: AgentThread = netlab.backend_agent(BACKEND_POLICY, world.toggles)
    wait_until(lambda: len(again.logic.endpoints) == 3 and all(  # type: ignore[attr-defined]
        e.result is not None for e in list(again.logic.endpoints.values())),  # type: ignore[attr-defined]
        10, "the new agent to adopt every vif")
    again.quiesce()  # everything it was told since it started is handled
    assert world.sets_since(sets) == {}
    new_conns = netlab.conn_ids("xenoffload-backend") - {
        r.conn_id for r in netlab.xenstored.request_log[:requests]}
    assert not netlab.mutations_under("/local/domain", requests, new_conns)
    assert world.override_kept()
