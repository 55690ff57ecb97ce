"""Acceptance through the CLI: agents as ``xenoffload`` processes, real veths, real sockets.

The backend agent runs as ``xenoffload backend-agent`` on the dom0 socket, each guest agent as
``xenoffload guest-agent`` on its guest's unprivileged socket; both in full mode (they play
netback/netfront's XenStore part) and with netlink toggles on veth stand-ins. What the tests
read back: ``xenoffload show --json``, the server's request log, the agents' logs (one line
per kernel change: ``(changed)``), and the kernel via netlink and ``ethtool -k``.
"""

from __future__ import annotations

import json
import re

from xenoffload.schema import OWN_KEYS
from xenoffload.toolstack import VifSpec, create_vif, destroy_vif

from .lab import (
    COMPUTED,
    GUEST_POLICY_TOML,
    PRIVATE_POLICY_TOML,
    SUPPRESSED,
    AgentProcess,
    Lab,
    run_cli,
    wait_until,
)


def _start(lab: Lab, config: str = PRIVATE_POLICY_TOML) -> tuple[AgentProcess, list[AgentProcess]]:
    """Guests 1 (xenbr0, xenpriv0) and 2 (xenbr0, xenpriv0), a backend agent and a guest
    agent per guest, settled."""
    lab.add_guest(1, ["xenbr0", "xenpriv0"])
    lab.add_guest(2, ["xenbr0", "xenpriv0"])
    backend = lab.backend_process("--config", str(lab.write_file("dom0.toml", config)))
    guest_config = str(lab.write_file("guest.toml", GUEST_POLICY_TOML))
    guests = [lab.guest_process(domid, "--config", guest_config) for domid in (1, 2)]
    lab.wait_settled({(1, 0): COMPUTED, (1, 1): SUPPRESSED, (2, 0): COMPUTED,
                      (2, 1): SUPPRESSED})
    return backend, guests


def _negotiations(log: str, since: int) -> set[str]:
    """The vifs an agent (re)negotiated in its log after offset ``since``."""
    return set(re.findall(r"(domid=\d+ devid=\d+) \w+ negotiated", log[since:]))


def _kernel_changes(log: str, since: int = 0) -> list[str]:
    """The devices an agent changed in the kernel after offset ``since``."""
    return re.findall(r"(\S+) \w+: [^\n]*\(changed\)", log[since:])


def _vif_set(lab: Lab, *args: str) -> None:
    done = run_cli("set", "--xenstore", lab.socket, *args)
    assert done.returncode == 0, done.stderr


def test_guest_appears_both_ends_connect_with_the_policy_result_and_matching_kernel(
        netlab: Lab) -> None:
    config = str(netlab.write_file("dom0.toml", PRIVATE_POLICY_TOML))
    backend = netlab.backend_process("--config", config)
    wait_until(lambda: netlab.conn_ids("xenoffload-backend"), 10, "backend agent watching")
    netlab.add_guest(1, ["xenbr0", "xenpriv0"])  # the guest appears after the agent
    netlab.guest_process(1)  # domid read from XenStore, built-in guest policy
    netlab.wait_settled({(1, 0): COMPUTED, (1, 1): SUPPRESSED})

    netlab.assert_kernel_matches((1, 0), COMPUTED)
    netlab.assert_kernel_matches((1, 1), SUPPRESSED)
    shown = run_cli("show", "--xenstore", netlab.socket, "--json", "--kernel", "netlink",
                    "--netns", netlab.netns[0])
    assert shown.returncode == 0, shown.stderr
    rows = {f"{row['domid']}/{row['devid']}": row for row in json.loads(shown.stdout)}
    assert rows["1/0"]["connected"] and rows["1/1"]["connected"]
    assert rows["1/1"]["negotiated"]["to_guest"] == {"ipv4": True, "ipv6": True}
    assert rows["1/0"]["negotiated"]["from_guest"] == {"ipv4": False, "ipv6": False}
    vif11 = rows["1/1"]["kernel"]
    assert vif11["device"] == f"{netlab.netns[0]}/vif1.1"
    assert vif11["features"]["tx-checksum-ip-generic"]["active"] is True
    assert backend.running()


def test_set_on_one_vif_renegotiates_and_reapplies_only_that_vif(netlab: Lab) -> None:
    backend, guests = _start(netlab)
    mark, guest_marks = len(backend.log()), [len(g.log()) for g in guests]
    requests = len(netlab.xenstored.request_log)

    _vif_set(netlab, "1/0", "--tx", "on", "--rx", "on")

    netlab.wait_settled({(1, 0): SUPPRESSED, (1, 1): SUPPRESSED, (2, 0): COMPUTED,
                         (2, 1): SUPPRESSED})
    netlab.assert_kernel_matches((1, 0), SUPPRESSED)
    assert _negotiations(backend.log(), mark) == {"domid=1 devid=0"}
    assert _negotiations(guests[0].log(), guest_marks[0]) == {"domid=1 devid=0"}
    assert _negotiations(guests[1].log(), guest_marks[1]) == set()
    assert _kernel_changes(backend.log(), mark) == [f"{netlab.netns[0]}/vif1.0"]
    agents = netlab.conn_ids("xenoffload-")
    for untouched in netlab.vifs[1:]:
        assert not netlab.mutations_under(untouched.backend_dir, requests, agents)
        assert not netlab.mutations_under(untouched.frontend_dir, requests, agents)


def test_set_on_a_bridge_renegotiates_every_vif_on_it_and_nothing_else(netlab: Lab) -> None:
    backend, _guests = _start(netlab)
    mark = len(backend.log())

    _vif_set(netlab, "--bridge", "xenpriv0", "--tx", "off", "--rx", "off")

    netlab.wait_settled({key: COMPUTED for key in ((1, 0), (1, 1), (2, 0), (2, 1))})
    for key in ((1, 1), (2, 1)):
        netlab.assert_kernel_matches(key, COMPUTED)
    assert _negotiations(backend.log(), mark) == {"domid=1 devid=1", "domid=2 devid=1"}
    assert sorted(_kernel_changes(backend.log(), mark)) == [
        f"{netlab.netns[0]}/vif1.1", f"{netlab.netns[0]}/vif2.1"]


def test_sighup_reloads_the_config_and_reapplies_only_the_vifs_it_changes(netlab: Lab) -> None:
    backend, _guests = _start(netlab)
    mark = len(backend.log())
    netlab.write_file("dom0.toml", PRIVATE_POLICY_TOML + """
[[rule]]
name = "guest 2 public vif too"
domid = 2
devid = 0
to-guest = true
from-guest = true
""")
    backend.hup()

    netlab.wait_settled({(1, 0): COMPUTED, (1, 1): SUPPRESSED, (2, 0): SUPPRESSED,
                         (2, 1): SUPPRESSED})
    netlab.assert_kernel_matches((2, 0), SUPPRESSED)
    assert _negotiations(backend.log(), mark) == {"domid=2 devid=0"}
    assert _kernel_changes(backend.log(), mark) == [f"{netlab.netns[0]}/vif2.0"]
    assert "policy reloaded" in backend.log()[mark:]


def test_a_broken_config_on_sighup_keeps_the_running_policy(netlab: Lab) -> None:
    backend, _guests = _start(netlab)
    mark = len(backend.log())
    netlab.write_file("dom0.toml", "[[rule]\nbroken")
    backend.hup()

    wait_until(lambda: "policy reload refused" in backend.log()[mark:], 10, "refusal logged")
    assert backend.running()
    assert netlab.settled({(1, 1): SUPPRESSED, (2, 1): SUPPRESSED})
    assert _kernel_changes(backend.log(), mark) == []


def test_guest_reboot_closes_and_renegotiates_from_scratch(netlab: Lab) -> None:
    backend, guests = _start(netlab)
    guests[0].stop()  # the guest goes down: its netfront closes, then boots again
    guest_store = netlab.guest_socket(1)
    front = netlab.vifs[1].frontend_dir
    back_state = f"{netlab.vifs[1].backend_dir}/state"
    _guest_write(guest_store, f"{front}/state", "5")  # netfront: Closing, then Closed
    wait_until(lambda: netlab.store().read(back_state) in (b"5", b"6"), 10,
               "backend closing after the frontend")
    _guest_write(guest_store, f"{front}/state", "6")
    wait_until(lambda: netlab.store().read(back_state) == b"6", 10, "backend Closed")
    _guest_write(guest_store, f"{front}/state", "1")
    wait_until(lambda: netlab.store().read(back_state) == b"2", 10,
               "backend back in InitWait for the rebooted frontend")
    # After the reboot the guest administrator keeps checksums on eth1.
    netlab.write_file("guest-rebooted.toml", "[default]\nto-guest = false\nfrom-guest = false\n")
    netlab.guest_process(1, "--config", str(netlab.tmp / "guest-rebooted.toml"))

    netlab.wait_settled({(1, 0): COMPUTED, (1, 1): COMPUTED, (2, 1): SUPPRESSED})
    netlab.assert_kernel_matches((1, 1), COMPUTED)
    written = [r.payload.split(b"\0")[1] for r in netlab.xenstored.request_log
               if r.op == "WRITE" and r.payload.startswith(f"{back_state}\0".encode())]
    assert written[-3:] == [b"6", b"2", b"4"]  # Closed, InitWait, Connected
    assert backend.running()


def _guest_write(socket: str, path: str, value: str) -> None:
    from xenoffload.store.pyxs_store import connect_store

    with connect_store(socket) as guest:
        guest.write(path, value.encode())


def test_backend_agent_restart_changes_nothing_on_the_wire_or_in_the_kernel(
        netlab: Lab) -> None:
    backend, _guests = _start(netlab)
    assert backend.stop() == 0
    tree = netlab.xenstored.model.dump("/local/domain")
    kernel = {dev: netlab.kernel(dev) for key in ((1, 0), (1, 1), (2, 0), (2, 1))
              for dev in (netlab.vif_device(*key), netlab.eth_device(*key))}
    requests, events = len(netlab.xenstored.request_log), len(netlab.xenstored.event_log)

    restarted = netlab.backend_process("--config", str(netlab.tmp / "dom0.toml"),
                                       log_name="backend-restarted.log")
    wait_until(lambda: restarted.log().count("already so") == 4, 10,
               "the restarted agent re-checked all four vifs")

    new_conn = netlab.conn_ids("xenoffload-backend") - {
        r.conn_id for r in netlab.xenstored.request_log[:requests]}
    assert not netlab.mutations_under("/local/domain", requests, new_conn)
    assert netlab.xenstored.model.dump("/local/domain") == tree
    assert _kernel_changes(restarted.log()) == []
    assert {dev: netlab.kernel(dev) for dev in kernel} == kernel
    guest_events = [e for e in netlab.xenstored.event_log[events:] if e.domid != 0]
    assert guest_events == []  # nothing the guests watch moved


def test_device_removal_is_forgotten_cleanly(netlab: Lab) -> None:
    backend, guests = _start(netlab)
    removed = netlab.vifs[1]
    requests = len(netlab.xenstored.request_log)
    destroy_vif(netlab.store(), removed)
    netlab.delete_device(1, 1)  # netback deletes vif1.1 (and its veth peer eth1)

    wait_until(lambda: "domid=1 devid=1 backend device removed" in backend.log(), 10,
               "backend forgot vif 1/1")
    wait_until(lambda: "domid=1 devid=1 frontend device removed" in guests[0].log(), 10,
               "guest forgot vif 1/1")
    store = netlab.store()
    assert store.try_read(removed.backend_dir) is None  # never re-created by a late write
    assert store.try_read(removed.frontend_dir) is None
    agents = netlab.conn_ids("xenoffload-")
    assert not netlab.mutations_under(removed.backend_dir, requests, agents)
    shown = run_cli("show", "--xenstore", netlab.socket, "--json", "1")
    assert [(row["domid"], row["devid"]) for row in json.loads(shown.stdout)] == [(1, 0)]
    netlab.vifs.remove(removed)
    assert netlab.settled({(1, 0): COMPUTED, (2, 1): SUPPRESSED})
    assert backend.running() and guests[0].running()


def _own_keys(lab: Lab, key: tuple[int, int]) -> dict[str, bytes | None]:
    """Both ends' xenoffload feature keys of vif ``key`` as XenStore holds them."""
    paths = next(p for p in lab.vifs if (p.guest_domid, p.devid) == key)
    return {f"{end}/{name}": lab.store().try_read(f"{directory}/{name}")
            for end, directory in (("backend", paths.backend_dir),
                                   ("frontend", paths.frontend_dir))
            for name in OWN_KEYS.values()}


def test_a_policy_change_undone_leaves_the_keys_and_kernel_as_before(netlab: Lab) -> None:
    """A -> B -> A through ``xenoffload set`` and ``--clear``, then through SIGHUP: every end
    advertises the policy in force again (issue 10, defect 1)."""
    backend, _guests = _start(netlab)
    before = _own_keys(netlab, (1, 0))
    _vif_set(netlab, "1/0", "--tx", "on", "--rx", "on")
    netlab.wait_settled({(1, 0): SUPPRESSED})
    assert _own_keys(netlab, (1, 0)) != before
    _vif_set(netlab, "1/0", "--clear")
    netlab.wait_settled({(1, 0): COMPUTED})
    assert _own_keys(netlab, (1, 0)) == before
    netlab.assert_kernel_matches((1, 0), COMPUTED)

    allow = netlab.write_file("dom0.toml", PRIVATE_POLICY_TOML + """
[[rule]]
bridge = "xenbr0"
to-guest = true
from-guest = true
""")
    backend.hup()
    netlab.wait_settled({(1, 0): SUPPRESSED, (2, 0): SUPPRESSED})
    allow.write_text(PRIVATE_POLICY_TOML)
    backend.hup()
    netlab.wait_settled({(1, 0): COMPUTED, (2, 0): COMPUTED})
    assert _own_keys(netlab, (1, 0)) == before
    for key in ((1, 0), (2, 0)):
        netlab.assert_kernel_matches(key, COMPUTED)


def test_a_device_recreated_in_one_transaction_is_negotiated_afresh(netlab: Lab) -> None:
    """The toolstack removes both directories and writes them anew in one transaction (states
    back to Initialising): both ends write their keys again and connect (issue 10, defect 2)."""
    _backend, _guests = _start(netlab)
    before = _own_keys(netlab, (1, 1))
    create_vif(netlab.store(), VifSpec(1, 1, "00:16:3e:00:01:01", "xenpriv0"))
    netlab.wait_settled({(1, 0): COMPUTED, (1, 1): SUPPRESSED})
    assert _own_keys(netlab, (1, 1)) == before  # every key written again, none missing
    netlab.assert_kernel_matches((1, 1), SUPPRESSED)

