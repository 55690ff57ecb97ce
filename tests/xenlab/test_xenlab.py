"""Real-Xen lab tests: boot Xen, dom0 and a PV guest under QEMU once; check each scenario's facts.

Opt-in (about 3 minutes, root, downloads Debian packages on first use): set
XENOFFLOAD_XENLAB=1 (``tox -e xenlab``). XENOFFLOAD_XENLAB_WORKDIR keeps the run's files
(serial log, images, xenstored trace, report.json) in a chosen directory; XENOFFLOAD_XENLAB_CACHE
moves the package cache from /var/cache/xenoffload-xenlab; XENOFFLOAD_XENLAB_REPORT=report.json
checks an earlier run's report instead of booting.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("XENOFFLOAD_XENLAB") != "1":
    pytest.skip("real Xen lab under QEMU (root, ~3 min): opt in with XENOFFLOAD_XENLAB=1 "
                "(tox -e xenlab)", allow_module_level=True)

import xenlab  # tests/xenlab/xenlab.py, beside this file

Report = dict[str, Any]
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "stock-linux-two-vifs.trace"


@pytest.fixture(scope="module")
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Report:
    """Run the lab once for this module and return its report; print stage wall times."""
    saved = os.environ.get("XENOFFLOAD_XENLAB_REPORT")
    if saved:  # re-check the report of an earlier run (developing assertions)
        result: Report = json.loads(Path(saved).read_text())
        workdir = Path(result["workdir"])
    else:
        if os.geteuid() != 0:
            pytest.fail("XENOFFLOAD_XENLAB=1 but not root: the lab needs root")
        workdir_env = os.environ.get("XENOFFLOAD_XENLAB_WORKDIR")
        workdir = Path(workdir_env) if workdir_env else tmp_path_factory.mktemp("xenlab")
        cache = Path(os.environ.get("XENOFFLOAD_XENLAB_CACHE", str(xenlab.DEFAULT_CACHE)))
        result = xenlab.run_lab(workdir, cache=cache, scenarios="all")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    text = "\n".join(["", f"xenlab workdir: {workdir}", xenlab.summary(result), ""])
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(text, flush=True)
    else:
        print(text, flush=True)
    return result


def facts(report: Report, fact: str, scenario: str | None = None,
          domain: str | None = None) -> list[dict[str, Any]]:
    """Return the facts named ``fact`` (optionally of one scenario and domain)."""
    return [f for f in report["facts"] if f.get("fact") == fact
            and (scenario is None or f.get("scenario") == scenario)
            and (domain is None or f.get("domain") == domain)]


def one(report: Report, fact: str, **where: Any) -> dict[str, Any]:
    """Return the single fact matching ``fact`` and every ``where`` field."""
    found = [f for f in facts(report, fact) if all(f.get(k) == v for k, v in where.items())]
    assert len(found) == 1, f"expected one {fact} fact with {where}, got {len(found)}"
    return found[0]


def feature(report: Report, iface: str, label: str, name: str, scenario: str) -> str:
    """Return ethtool's state string of one feature of one interface at one labelled moment."""
    fact = one(report, "ethtool", iface=iface, label=label, scenario=scenario)
    assert fact["rc"] == 0, fact
    state: str = fact["features"][name]
    return state


@pytest.fixture(scope="module")
def guest_domid(report: Report) -> int:
    domid: int = one(report, "xl-create")["domid"]
    return domid


# ------------------------------------------------------------------------------------ the run

def test_run_powered_off_within_its_deadline(report: Report) -> None:
    assert not report["qemu"]["timed_out"]
    assert "poweroff" in report["vm_stages"]
    assert not facts(report, "watchdog")
    assert not facts(report, "timeout"), facts(report, "timeout")
    assert report["errors"] == []


def test_every_console_fact_parsed(report: Report) -> None:
    assert report["unparsed"] == []


def test_every_scenario_ran_to_its_end(report: Report) -> None:
    ends = {f["scenario"]: f["rc"] for f in facts(report, "scenario-end")}
    assert ends == {"1": 0, "2": 0, "3": 0, "4": 0, "5": 0}


def test_stage_wall_times_recorded(report: Report) -> None:
    wall = report["wall"]
    for stage in ("fetch", "build", "boot_to_dom0", "guest_connected", "scenarios", "shutdown"):
        assert wall[stage] >= 0, f"stage {stage} not reached"
    assert wall["total"] < 600


def test_xenstored_trace_recorded(report: Report, guest_domid: int) -> None:
    trace = Path(report["trace"]).read_text()
    for devid in (0, 1):
        assert f"/local/domain/0/backend/vif/{guest_domid}/{devid}" in trace
        assert f"/local/domain/{guest_domid}/device/vif/{devid}" in trace
    assert "hotplug-status" in trace


def test_committed_stock_trace_fixture_is_a_two_vif_trace() -> None:
    trace = FIXTURE.read_text()
    assert "backend/vif/1/0/state" in trace and "backend/vif/1/1/state" in trace


# ------------------------------------------------------------------ scenario 1: boot, connect

@pytest.mark.parametrize("devid", [0, 1])
def test_s1_vif_connected_at_both_ends(report: Report, devid: int) -> None:
    vif = one(report, "vif", scenario="1", devid=devid)
    assert (vif["backend_state"], vif["frontend_state"]) == (4, 4)
    assert vif["operstate"] == "up"


@pytest.mark.parametrize(("devid", "bridge"), [(0, "xenbr0"), (1, "xenpriv0")])
def test_s1_stock_vif_bridge_hotplug_put_each_vif_on_its_bridge(report: Report, devid: int,
                                                                bridge: str) -> None:
    vif = one(report, "vif", scenario="1", devid=devid)
    assert vif["hotplug_status"] == "connected"
    assert vif["bridge_key"] == vif["bridge_actual"] == bridge
    assert one(report, "hotplug", scenario="1")["script"] == "/etc/xen/scripts/vif-bridge"


@pytest.mark.parametrize("iface", ["eth0", "eth1"])
def test_s1_netfront_reports_connected(report: Report, iface: str) -> None:
    nf = one(report, "netfront", scenario="1", iface=iface)
    assert nf["xenbus_state"] == "Connected"
    assert nf["nodename"] == f"device/vif/{iface[-1]}"


@pytest.mark.parametrize("devid", [0, 1])
def test_s1_stock_feature_keys_and_permissions(report: Report, devid: int) -> None:
    backend = one(report, "xsdir", scenario="1", label=f"backend-{devid}")["keys"]
    frontend = one(report, "xsdir", scenario="1", label=f"frontend-{devid}")["keys"]
    assert backend["feature-ipv6-csum-offload"] == ["1", "n0,r1"]
    assert backend["feature-rx-copy"][0] == "1"
    assert frontend["feature-ipv6-csum-offload"] == ["1", "n1,r0"]
    assert frontend["request-rx-copy"][0] == "1"
    assert "feature-no-csum-offload" not in frontend  # stock netfront never writes it
    assert backend["state"][0] == frontend["state"][0] == "4"


@pytest.mark.parametrize("domain", ["dom0", "guest"])
def test_s1_python_and_xenoffload_import(report: Report, domain: str) -> None:
    py = one(report, "python", scenario="1", domain=domain)
    assert py["failed"] == {}
    assert py["version"].startswith("3.11.")
    assert py["xenoffload_file"] == "/usr/lib/python3/dist-packages/xenoffload/__init__.py"


def test_s1_stock_offloads_dom0_vif_tx_checksum_changeable(report: Report,
                                                            guest_domid: int) -> None:
    for devid in (0, 1):
        iface = f"vif{guest_domid}.{devid}"
        assert feature(report, iface, "stock", "tx-checksum-ipv4", "1") == "on"
        assert feature(report, iface, "stock", "rx-checksumming", "1") == "on [fixed]"


def test_s1_stock_offloads_netfront_ipv4_tx_checksum_fixed(report: Report) -> None:
    for iface in ("eth0", "eth1"):
        assert feature(report, iface, "stock", "tx-checksum-ipv4", "1") == "on [fixed]"
        assert feature(report, iface, "stock", "rx-checksumming", "1") == "on [fixed]"


# -------------------------------------------------------------------- scenario 2: traffic

@pytest.mark.parametrize("net", ["public", "private"])
@pytest.mark.parametrize("sender", ["dom0", "guest"])
def test_s2_ping(report: Report, net: str, sender: str) -> None:
    assert one(report, "ping", scenario="2", label=net, domain=sender)["rc"] == 0


@pytest.mark.parametrize("net", ["public", "private"])
@pytest.mark.parametrize("direction", ["dom0-to-guest", "guest-to-dom0"])
def test_s2_tcp_transfer_intact(report: Report, net: str, direction: str) -> None:
    label = f"{net}-{direction}"
    sent = one(report, "tcp-send", scenario="2", label=label)
    got = one(report, "tcp-recv", scenario="2", label=label)
    assert sent["ok"] and got["ok"], (sent, got)
    assert got["bytes"] == sent["bytes"] == 1 << 20
    assert got["sha256"] == sent["sha256"]


# ------------------------------------------------------- scenario 3: packet-level evidence

def counts(report: Report, mode: str, point: str, dst: str, proto: str) -> dict[str, int]:
    capture = one(report, "csum-capture", scenario="3", mode=mode, point=point)
    found: dict[str, int] = capture["counts"][dst][proto]
    return found


POINTS = [("eth0", "10.0.0.2"), ("eth0", "10.9.0.2"), ("xo-r", "10.9.0.2")]


@pytest.mark.parametrize(("point", "dst"), POINTS)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_s3_vif_tx_offload_on_guest_sees_blank_checksums(report: Report, point: str, dst: str,
                                                         proto: str) -> None:
    """Stock setting: every TCP/UDP packet dom0's stack sends reaches the guest, and leaves the
    guest router, with its checksum still to be completed."""
    c = counts(report, "on", point, dst, proto)
    assert c["incorrect"] > 0
    assert c["correct"] == 0, c


@pytest.mark.parametrize(("point", "dst"), POINTS)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_s3_vif_tx_offload_off_every_checksum_correct(report: Report, point: str, dst: str,
                                                      proto: str) -> None:
    """Safe policy (vif tx checksum off, guest GRO off): every checksum arrives computed."""
    c = counts(report, "off", point, dst, proto)
    assert c["correct"] > 0
    assert c["incorrect"] == 0, c


def test_s3_guest_gro_makes_merged_tcp_partial_again(report: Report) -> None:
    """With GRO on, the guest itself turns merged TCP segments into partial-checksum packets
    (so what leaves the router carries blank checksums even though dom0 computed them)."""
    assert counts(report, "off+gro", "xo-r", "10.9.0.2", "tcp")["incorrect"] > 0
    assert counts(report, "off+gro", "eth0", "10.0.0.2", "udp")["incorrect"] == 0


@pytest.mark.parametrize("mode", ["on", "off", "off+gro"])
def test_s3_traffic_intact_in_every_mode(report: Report, mode: str) -> None:
    for path in ("direct", "routed"):
        sent = one(report, "tcp-send", scenario="3", label=f"{mode}-{path}")
        got = one(report, "tcp-recv", scenario="3", label=f"{mode}-{path}")
        assert got["sha256"] == sent["sha256"] and got["bytes"] == 262144
        udp = one(report, "udp-recv", scenario="3", label=f"{mode}-{path}")
        assert udp["intact"] == udp["datagrams"] == 20


def test_s3_ethtool_K_switches_vif_tx_checksum(report: Report, guest_domid: int) -> None:
    iface = f"vif{guest_domid}.0"
    assert feature(report, iface, "mode-on", "tx-checksum-ipv4", "3") == "on"
    assert feature(report, iface, "mode-off", "tx-checksum-ipv4", "3") == "off"


# ------------------------------------------------------------------- scenario 4: agents

@pytest.fixture(scope="module")
def agents(report: Report) -> Report:
    presence = {f["domain"]: f["agent"] for f in facts(report, "agent", scenario="4")}
    assert set(presence) == {"dom0", "guest"}, presence
    assert presence == {"dom0": "present", "guest": "present"}
    return report


def cli(report: Report, label: str) -> dict[str, Any]:
    return one(report, "cli", scenario="4", label=label)


def test_s4_agents_exit_zero(agents: Report) -> None:
    for label in ("backend-agent", "guest-agent"):
        assert cli(agents, label)["rc"] == 0, cli(agents, label)


def test_s4_backend_agent_enforces_policy_per_bridge(agents: Report, guest_domid: int) -> None:
    """Public vif: checksums computed (vif tx checksum off); private vif: blank allowed."""
    assert feature(agents, f"vif{guest_domid}.0", "after-agents", "tx-checksum-ipv4", "4") \
        == "off"
    assert feature(agents, f"vif{guest_domid}.1", "after-agents", "tx-checksum-ipv4", "4") \
        == "on"


def test_s4_guest_agent_switches_what_netfront_lets_it(agents: Report) -> None:
    """Public eth0: IPv6 tx checksum turned off (IPv4 is fixed on by netfront); private eth1
    keeps it on."""
    assert feature(agents, "eth0", "after-agents", "tx-checksum-ipv6", "4") == "off"
    assert feature(agents, "eth0", "after-agents", "tx-checksum-ipv4", "4") == "on [fixed]"
    assert feature(agents, "eth1", "after-agents", "tx-checksum-ipv6", "4") == "on"


def test_s4_show_json_reports_negotiation_per_bridge(agents: Report) -> None:
    shown = one(agents, "show", scenario="4")
    assert shown["rc"] == 0
    assert isinstance(shown["json"], list), json.dumps(shown)[:300]
    by_bridge = {vif["bridge"]: vif for vif in shown["json"]}
    assert by_bridge["xenbr0"]["negotiated"]["to_guest"] == {"ipv4": False, "ipv6": False}
    assert by_bridge["xenpriv0"]["negotiated"]["to_guest"] == {"ipv4": True, "ipv6": True}
    assert all(vif["connected"] for vif in shown["json"])


@pytest.mark.parametrize("value", ["on", "off"])
def test_s4_set_override_reaches_the_vif(agents: Report, guest_domid: int, value: str) -> None:
    assert cli(agents, f"set-tx-{value}")["rc"] == 0
    assert cli(agents, f"backend-agent-after-set-tx-{value}")["rc"] == 0
    state = feature(agents, f"vif{guest_domid}.0", f"after-set-tx-{value}", "tx-checksum-ipv4",
                    "4")
    assert state == value


def test_s4_clear_restores_policy(agents: Report, guest_domid: int) -> None:
    assert cli(agents, "set-clear")["rc"] == 0
    assert feature(agents, f"vif{guest_domid}.0", "after-clear", "tx-checksum-ipv4", "4") == "off"


# ------------------------------------------------ scenario 5: frontend reconnect, agents again

#: What xenoffload writes into each end's directory (its own keys, and the legacy keys it
#: rewrites: docs/protocol.md R1, R4).
XO_KEYS = ("feature-csum-tx", "feature-csum-rx", "feature-csum-tx-ipv6", "feature-csum-rx-ipv6",
           "xenoffload-csum-status")
XO_LEGACY_KEYS = {"backend": ("feature-ipv6-csum-offload",),
                  "frontend": ("feature-no-csum-offload", "feature-ipv6-csum-offload")}


@pytest.fixture(scope="module")
def reconnect(report: Report) -> Report:
    presence = {f["domain"]: f["agent"] for f in facts(report, "agent", scenario="5")}
    assert presence == {"dom0": "present"}, presence
    return report


def xs_keys(report: Report, moment: str, end: str, devid: int) -> dict[str, list[str]]:
    fact = one(report, "xsdir", scenario="5", label=f"{moment}-{end}-{devid}")
    assert fact["rc"] == 0, fact
    keys: dict[str, list[str]] = fact["keys"]
    return keys


@pytest.mark.parametrize("devid", [0, 1])
def test_s5_netfront_unbound_then_rebound(reconnect: Report, devid: int) -> None:
    """sysfs unbind closes the frontend (its netdev goes); bind probes a new one, Connected."""
    unbind = one(reconnect, "unbind", scenario="5", device=f"vif-{devid}")
    assert unbind["rc"] == 0 and unbind["xenbus_state"] == "Closed", unbind
    assert unbind["driver"] == ""
    bind = one(reconnect, "bind", scenario="5", device=f"vif-{devid}")
    assert bind["rc"] == 0, bind
    assert (bind["iface"], bind["xenbus_state"]) == (f"eth{devid}", "Connected")
    nf = one(reconnect, "netfront", scenario="5", iface=f"eth{devid}")
    assert nf["xenbus_state"] == "Connected"
    assert nf["nodename"] == f"device/vif/{devid}"


@pytest.mark.parametrize("devid", [0, 1])
def test_s5_xenbus_states_renegotiated_from_scratch(reconnect: Report, devid: int) -> None:
    """From xenstored's trace: netback Closing, Closed, InitWait, Connected; netfront Closing,
    Closed, Initialising, Connected (R12), and both Connected again."""
    backend = one(reconnect, "xenbus-states", scenario="5", label=f"backend-{devid}")
    frontend = one(reconnect, "xenbus-states", scenario="5", label=f"frontend-{devid}")
    assert backend["mark_found"] and frontend["mark_found"]
    assert backend["states"] == [5, 6, 2, 4], backend
    assert frontend["states"] == [5, 6, 1, 4], frontend
    assert one(reconnect, "reconnected", scenario="5")["ok"] == 1
    vif = one(reconnect, "vif", scenario="5", devid=devid)
    assert (vif["backend_state"], vif["frontend_state"]) == (4, 4)
    assert vif["hotplug_status"] == "connected"
    assert vif["bridge_actual"] == ("xenbr0", "xenpriv0")[devid]
    assert vif["operstate"] == "up"


def test_s5_agents_exit_zero(reconnect: Report) -> None:
    for label in ("backend-agent", "guest-agent"):
        fact = one(reconnect, "cli", scenario="5", label=label)
        assert fact["rc"] == 0, fact


def test_s5_kernel_features_equal_the_policy_again(reconnect: Report, guest_domid: int) -> None:
    """After the reconnect and one pass of each agent: public vif tx checksum off, private on;
    guest eth0 IPv6 tx checksum off (IPv4 fixed on by netfront), eth1 on — as in scenario 4."""
    def after(iface: str, name: str) -> str:
        return feature(reconnect, iface, "after-agents", name, "5")

    assert after(f"vif{guest_domid}.0", "tx-checksum-ipv4") == "off"
    assert after(f"vif{guest_domid}.0", "tx-checksum-ipv6") == "off"
    assert after(f"vif{guest_domid}.1", "tx-checksum-ipv4") == "on"
    assert after(f"vif{guest_domid}.1", "tx-checksum-ipv6") == "on"
    assert after("eth0", "tx-checksum-ipv6") == "off"
    assert after("eth0", "tx-checksum-ipv4") == "on [fixed]"
    assert after("eth1", "tx-checksum-ipv6") == "on"
    for iface in ("eth0", "eth1"):  # the new netdevs: reported before the agents ran too
        assert feature(reconnect, iface, "before-agents", "tx-checksum-ipv4", "5") == "on [fixed]"


def test_s5_public_vif_never_offloads_during_the_reconnect(reconnect: Report,
                                                           guest_domid: int) -> None:
    """Before the agents' pass: dom0's vif keeps tx checksum off (the netdev survives and netback
    keeps the wanted features), and the guest's new eth0 comes up with IPv6 tx checksum off
    because stock netfront reads the backend's feature-ipv6-csum-offload, which xenoffload's
    backend agent left at 0."""
    assert feature(reconnect, f"vif{guest_domid}.0", "before-agents", "tx-checksum-ipv4",
                   "5") == "off"
    assert feature(reconnect, "eth0", "before-agents", "tx-checksum-ipv6", "5") \
        == "off [requested on]"
    assert feature(reconnect, "eth1", "before-agents", "tx-checksum-ipv6", "5") == "on"


@pytest.mark.parametrize("end", ["backend", "frontend"])
@pytest.mark.parametrize("devid", [0, 1])
def test_s5_reconnect_leaves_xenoffload_keys_to_the_agents(reconnect: Report, end: str,
                                                           devid: int) -> None:
    """The stock drivers rewrite only their own keys on reconnect (rings, event channels, their
    feature flags); xenoffload's keys stay as they were until an agent re-checks them."""
    before = xs_keys(reconnect, "before", end, devid)
    between = xs_keys(reconnect, "reconnected", end, devid)
    for key in (*XO_KEYS, *XO_LEGACY_KEYS[end]):
        assert between.get(key) == before[key], (end, devid, key)


@pytest.mark.parametrize("end", ["backend", "frontend"])
@pytest.mark.parametrize("devid", [0, 1])
def test_s5_xenoffload_keys_present_again_with_the_same_values(reconnect: Report, end: str,
                                                                devid: int) -> None:
    before = xs_keys(reconnect, "before", end, devid)
    after = xs_keys(reconnect, "after", end, devid)
    for key in (*XO_KEYS, *XO_LEGACY_KEYS[end]):
        assert key in after, f"{end}-{devid}: {key} missing after the reconnect"
        assert after[key] == before[key], (end, devid, key, before[key], after[key])
    assert before["xenoffload-csum-status"][0] in (
        "ok", "unenforced: tx-checksum-ipv4 stays on (fixed on by the driver)")
    assert after["state"][0] == "4"


@pytest.mark.parametrize("net", ["public", "private"])
def test_s5_traffic_flows_again(reconnect: Report, net: str) -> None:
    label = f"{net}-dom0-to-guest"
    sent = one(reconnect, "tcp-send", scenario="5", label=label)
    got = one(reconnect, "tcp-recv", scenario="5", label=label)
    assert sent["ok"] and got["ok"], (sent, got)
    assert got["bytes"] == sent["bytes"] == 262144 and got["sha256"] == sent["sha256"]
    for sender in ("dom0", "guest"):
        assert one(reconnect, "ping", scenario="5", label=net, domain=sender)["rc"] == 0


def test_summary_has_stage_times_and_packet_table(report: Report) -> None:
    text = xenlab.summary(report)
    assert "boot_to_dom0" in text
    assert "off+gro" in text
