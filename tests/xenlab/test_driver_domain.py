"""Real-Xen lab, scenario 10: a network driver domain serving the guest's vif (docs/xenlab.md).

Its own boot (``run --scenario 10``): Xen, dom0 and the guest as in test_xenlab.py, plus
xenlab-netdd, a PV guest created with ``driver_domain=1`` running netback, a bridge, ``xl
devd`` and the backend agent as its unit runs it. Opt-in (about 4-6 minutes, root): set
XENOFFLOAD_XENLAB_DD=1 (``tox -e xenlab-dd``). XENOFFLOAD_XENLAB_WORKDIR and
XENOFFLOAD_XENLAB_CACHE as for test_xenlab.py; XENOFFLOAD_XENLAB_DD_REPORT=report.json checks an
earlier run's report instead of booting.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

if os.environ.get("XENOFFLOAD_XENLAB_DD") != "1":
    pytest.skip("real Xen lab's driver domain (root, ~5 min): opt in with XENOFFLOAD_XENLAB_DD=1 "
                "(tox -e xenlab-dd)", allow_module_level=True)

import xenlab  # tests/xenlab/xenlab.py, beside this file
from labreport import module_report

Report = dict[str, Any]
S = "10"
#: The results the scenario's policies give (the policy of step 0 names the guest four ways,
#: one family and direction each; only the backend's bridge and mac can be read there).
SELECTORS = "to-guest=none from-guest=ipv4+ipv6"
ALLOWED = "to-guest=ipv4+ipv6 from-guest=ipv4+ipv6"
COMPUTED = "to-guest=none from-guest=none"
#: Bounds QEMU for this boot (dom0's watchdog fires 45 s before).
DD_TIMEOUT = 1200.0
BACK_COMPUTE = "ok (enforced-by-tc: ingress ipv4, ingress ipv6)"
FRONT_COMPUTE = "ok (enforced-by-tc: egress ipv4)"


@pytest.fixture(scope="module")
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Report:
    """Run scenario 10 in a boot of its own and return the report; print its summary."""
    # A guard, not a target: alone on two cores the boot takes about 6 minutes; beside
    # another QEMU lab the driver domain's steps ran 3-10 times slower.
    return module_report(
        request, tmp_path_factory, saved_env="XENOFFLOAD_XENLAB_DD_REPORT",
        workdir_env="XENOFFLOAD_XENLAB_WORKDIR", tmp_name="xenlab-dd",
        opt_in="XENOFFLOAD_XENLAB_DD=1",
        run=lambda workdir, cache: xenlab.run_lab(workdir, cache=cache, scenarios=S,
                                                  timeout=DD_TIMEOUT),
        lines=lambda result: ["scenario 10 packets (to-guest counted in the guest, from-guest "
                              "in the driver domain):", xenlab.format_dd(dd_rows(result))])


def facts(report: Report, fact: str, **where: Any) -> list[dict[str, Any]]:
    """The scenario's facts named ``fact`` with every ``where`` field."""
    return [f for f in report["facts"] if f.get("fact") == fact and f.get("scenario") == S
            and all(f.get(k) == v for k, v in where.items())]


def one(report: Report, fact: str, **where: Any) -> dict[str, Any]:
    found = facts(report, fact, **where)
    assert len(found) == 1, f"expected one {fact} fact with {where}, got {found}"
    return found[0]


def dd_rows(report: Report) -> list[dict[str, Any]]:
    return xenlab.dd_table(report["facts"])


def row(report: Report, step: str, flow: str, proto: str) -> dict[str, Any]:
    (found,) = [r for r in dd_rows(report) if r["label"] == step and r["flow"] == flow
                and r["proto"] == proto]
    return found


# ------------------------------------------------------------------------------------ the run

def test_run_powered_off_and_scenario_10_ran_to_its_end(report: Report) -> None:
    assert not report["qemu"]["timed_out"]
    assert report["errors"] == []
    assert report["unparsed"] == []
    assert not [f for f in report["facts"] if f.get("fact") in ("timeout", "watchdog")]
    assert {f["scenario"]: f["rc"] for f in report["facts"]
            if f.get("fact") == "scenario-end"} == {S: 0}


@pytest.mark.parametrize("label", ["first", "again"])
def test_the_driver_domain_boots_with_netback_xl_devd_and_its_agent(report: Report,
                                                                    label: str) -> None:
    created = one(report, "dd-create", label=label)
    assert created["rc"] == 0 and created["ready"] == 1
    assert created["driver_domain"] == 1  # xl list -l: driver_domain True
    booted = one(report, "dd-boot", label=label)
    assert booted["domid"] == created["domid"] != 0
    assert (booted["netback"], booted["devd"], booted["agent"]) == ("loaded", "running",
                                                                    "running")
    assert booted["capabilities"] == ""  # not the control domain
    assert "Traceback" not in booted["agent_log"] and "refused" not in booted["agent_log"]


def test_the_vif_lives_under_the_driver_domain_and_its_hotplug_ran_there(report: Report) -> None:
    dd = one(report, "dd-create", label="first")["domid"]
    vif = one(report, "dd-vif")
    guest = one(report, "converged", label="selectors")["domid"]
    assert vif["backend"] == f"/local/domain/{dd}/backend/vif/{guest}/{vif['devid']}"
    state = one(report, "vif-state", label="selectors")
    # xl devd ran the stock vif-bridge in the driver domain: connected, on its bridge.
    assert (state["hotplug_status"], state["bridge"]) == ("connected", "ddbr0")
    assert (state["backend_state"], state["frontend_state"]) == (4, 4)
    # libxl's permissions: each end owned by its domain, readable by the other.
    assert state["backend_perms"] == f"n{dd},r{guest}"
    assert state["frontend_perms"] == f"n{guest},r{dd}"
    assert f"vif{guest}.{vif['devid']}" in one(report, "dd-hotplug")["bridge_ports"].split()


READABLE = {"frontend-state": True, "bridge": True, "mac": True,
            "name": False, "vm": False, "vm-dir": False, "vm-name": False, "xapi": False,
            "dom0-name": False, "dom0-backends": False}


@pytest.mark.parametrize("what", sorted(READABLE))
def test_what_the_driver_domain_may_read(report: Report, what: str) -> None:
    """Its own XenStore permissions: the backend directory and the guest's frontend, not the
    guest's name, its VM's UUID (``vm``, ``/vm/<uuid>``), dom0's tree or ``/xapi``."""
    read = one(report, "dd-read", what=what)
    assert (read["rc"] == 0) is READABLE[what], read


def test_the_unreadable_nodes_exist(report: Report) -> None:
    """What the driver domain could not read is there (EACCES, not ENOENT) except /xapi and
    the overrides, which nothing wrote."""
    exists = {f["path"].rsplit("/", 1)[-1] if "/vm/" not in f["path"] else "vm-dir":
              f["exists"] for f in facts(report, "dom0-exists")}
    assert (exists["name"], exists["vm"], exists["vm-dir"]) == ("yes", "yes", "yes")
    assert exists["xapi"] == "no"


def test_the_driver_domain_writes_its_backend_not_its_home(report: Report) -> None:
    assert one(report, "dd-write", what="own-backend")["rc"] == 0
    assert one(report, "dd-write", what="own-xenoffload")["rc"] != 0


def test_the_agent_found_the_vif_by_its_bridge_and_mac_only(report: Report) -> None:
    agent = one(report, "dd-agent")
    assert agent["running"] == "yes"
    assert "found (bridge=ddbr0" in agent["found"]
    converged = one(report, "converged", label="selectors")
    assert converged["backend_result"] == converged["frontend_result"] == SELECTORS


def test_the_toolstacks_override_from_dom0(report: Report) -> None:
    """``set --backend-domid DD G/N`` where the toolstack runs (dom0)."""
    assert one(report, "cli", label="set-allow")["rc"] == 0
    allowed = one(report, "converged", label="set-allow")
    assert allowed["rc"] == 0, allowed
    assert allowed["backend_result"] == allowed["frontend_result"] == ALLOWED
    cleared = one(report, "converged", label="set-clear")
    assert cleared["rc"] == 0 and cleared["backend_result"] == SELECTORS


def test_a_sighup_revokes_at_both_ends(report: Report) -> None:
    revoked = one(report, "converged", label="hup-compute")
    assert revoked["rc"] == 0, revoked
    assert revoked["backend_result"] == revoked["frontend_result"] == COMPUTED
    assert (revoked["backend_status"], revoked["frontend_status"]) == (BACK_COMPUTE,
                                                                       FRONT_COMPUTE)


def test_the_vif_comes_back_negotiated_after_the_driver_domain_restarts(report: Report) -> None:
    restart = one(report, "dd-restart")
    assert restart["new_domid"] != restart["old_domid"]
    again = one(report, "converged", label="restart")
    assert again["rc"] == 0, again
    assert again["dd"] == restart["new_domid"]
    assert again["backend_result"] == again["frontend_result"] == ALLOWED
    assert one(report, "xl", label="reattach")["rc"] == 0


@pytest.mark.parametrize(("step", "blank_to", "blank_from"), [
    ("selectors", False, True),       # to-guest computed, from-guest allowed
    ("set-allow", True, True),
    ("hup-compute", False, False),
    ("restart", True, True),
])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_packets_follow_the_result(report: Report, step: str, blank_to: bool,
                                   blank_from: bool, proto: str) -> None:
    for flow, blank in (("to-guest", blank_to), ("from-guest", blank_from)):
        counts = row(report, step, flow, proto)
        assert counts["correct"] + counts["incorrect"] > 0, (flow, counts)
        if blank:
            assert counts["incorrect"] > 0, (flow, counts)
        else:
            assert counts["incorrect"] == 0, (flow, counts)


def test_every_transfer_arrived(report: Report) -> None:
    sends = facts(report, "tcp-send")
    assert len(sends) == 8 and all(s["ok"] for s in sends), sends


@pytest.mark.parametrize("step", ["selectors", "set-allow", "hup-compute", "restart"])
def test_the_devices_follow_the_result(report: Report, step: str) -> None:
    """The driver domain's vif: tx checksum off when to-guest is computed; the guest's eth:
    IPv6 tx checksum off when from-guest is computed (IPv4 is fixed on: tc's egress rule)."""
    to_blank = step in ("set-allow", "restart")
    from_blank = step != "hup-compute"
    (vif,) = [f for f in facts(report, "ethtool", label=step) if f["iface"].startswith("vif")]
    assert vif["features"]["tx-checksum-ipv4"].startswith("on" if to_blank else "off"), vif
    (eth,) = [f for f in facts(report, "ethtool", label=step) if f["iface"].startswith("eth")]
    assert eth["features"]["tx-checksum-ipv6"].startswith("on" if from_blank else "off"), eth
