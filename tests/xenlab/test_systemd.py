"""Real-Xen lab, systemd boot: dom0 with systemd as PID 1 drives xenoffload's backend unit
(scenario 9, docs/xenlab.md "systemd as dom0's init"); these tests check that boot's report.

Opt-in like test_xenlab.py (XENOFFLOAD_XENLAB=1; root). XENOFFLOAD_XENLAB_SYSTEMD_WORKDIR keeps
the run's files in a chosen directory, XENOFFLOAD_XENLAB_SYSTEMD_REPORT=report.json checks an
earlier run's report instead of booting; XENOFFLOAD_XENLAB_CACHE as for test_xenlab.py.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

if os.environ.get("XENOFFLOAD_XENLAB") != "1":
    pytest.skip("real Xen lab under QEMU, systemd boot (root, ~5 min): opt in with "
                "XENOFFLOAD_XENLAB=1 (tox -e xenlab-systemd)", allow_module_level=True)

import xenlab  # tests/xenlab/xenlab.py, beside this file
from labreport import module_report
from test_xenlab import STATUS, check_probe_step, facts, feature, one, probe, step_xs

Report = dict[str, Any]
#: Bounds this boot (dom0's watchdog fires 45 s before): a guard, not a target. Idle it takes
#: about half of it (docs/xenlab.md); beside another TCG guest on the same two cores, more.
TIMEOUT = 1500.0
UNIT = "xenoffload-backend.service"
#: The probe steps of scenario 9 and whether the public vif may carry blank checksums there
#: (the private one always may). "stopped" is checked on its own.
STEPS = {"start": False, "reload-allow": True, "reload-revoke": False, "killed": False,
         "started": True, "xenbus": False}


@pytest.fixture(scope="module")
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Report:
    """Boot the systemd lab once for this module and return its report."""
    return module_report(
        request, tmp_path_factory, saved_env="XENOFFLOAD_XENLAB_SYSTEMD_REPORT",
        workdir_env="XENOFFLOAD_XENLAB_SYSTEMD_WORKDIR", tmp_name="xenlab-sd",
        opt_in="XENOFFLOAD_XENLAB=1", label="xenlab (systemd)",
        run=lambda workdir, cache: xenlab.run_lab(workdir, cache=cache, scenarios="9",
                                                  init="systemd", timeout=TIMEOUT))


def state(report: Report, label: str) -> dict[str, Any]:
    """Return ``systemctl show`` of the unit at one labelled moment."""
    return one(report, "unit-state", scenario="9", label=label)


def ctl(report: Report, label: str) -> dict[str, Any]:
    """Return one ``systemctl`` call (rc, output, seconds)."""
    return one(report, "systemctl", scenario="9", label=label)


def cli(report: Report, label: str) -> dict[str, Any]:
    return one(report, "cli", scenario="9", label=label)


# ------------------------------------------------------------------------------------ the run

def test_run_powered_off_within_its_deadline(report: Report) -> None:
    assert report["init"] == "systemd"
    assert not report["qemu"]["timed_out"]
    assert "poweroff" in report["vm_stages"]
    assert not facts(report, "watchdog")
    assert not facts(report, "timeout"), facts(report, "timeout")
    assert report["errors"] == []
    assert report["unparsed"] == []


def test_scenario_ran_to_its_end(report: Report) -> None:
    ends = {f["scenario"]: f["rc"] for f in facts(report, "scenario-end")}
    assert ends == {"9": 0}


def test_systemd_is_pid_1_with_journald(report: Report) -> None:
    init = one(report, "init", scenario="9")
    assert init["comm"] == "systemd"
    assert init["version"].startswith("systemd 252 ")
    assert init["journald"] == "active"
    # xenlab.service (the lab's own /init) is still starting up nothing: the system runs.
    assert init["state"] in ("running", "degraded"), init


# --------------------------------------------------------------------------- installed as a user

def test_installed_as_the_readme_says(report: Report) -> None:
    for label in ("venv", "pip-install", "units"):
        assert cli(report, label)["rc"] == 0, cli(report, label)
    assert "Successfully installed" in cli(report, "pip-install")["output"]
    installed = one(report, "installed", scenario="9")
    assert installed["xenoffload"] == "/opt/xenoffload/bin/xenoffload"
    # The unit runs this installation's own command (xenoffload units), not a guess.
    assert installed["exec_start"] == \
        "ExecStart=/opt/xenoffload/bin/xenoffload backend-agent -v"
    # Documentation= names the copy the wheel installed, and it is there.
    assert installed["documentation"] == \
        "Documentation=file:///opt/xenoffload/share/doc/xenoffload/docs/agents.md"
    assert str(installed["doc_present"]) == "1"


# ------------------------------------------------------------------------ readiness and sandbox

def test_enable_now_returns_once_ready(report: Report) -> None:
    """Type=notify: `systemctl enable --now` returns after READY=1; show and status say so."""
    assert ctl(report, "daemon-reload")["rc"] == 0
    assert ctl(report, "enable-now")["rc"] == 0, ctl(report, "enable-now")
    start = state(report, "start")
    assert (start["Type"], start["NotifyAccess"]) == ("notify", "main")
    assert (start["ActiveState"], start["SubState"]) == ("active", "running")
    assert start["StatusText"] == "acting for the backend end of domain 0 on the system XenStore" \
        or start["StatusText"].startswith("acting for "), start
    assert int(start["MainPID"]) > 0 and int(start["NRestarts"]) == 0
    status = one(report, "status", scenario="9", label="start")["text"]
    assert "Active: active (running)" in status
    assert f"Status: \"{start['StatusText']}\"" in status


def test_the_agent_runs_sandboxed(report: Report) -> None:
    """The unit's hardening is in force on the running agent (not just rendered): only
    CAP_NET_ADMIN (bit 12), no new privileges, a seccomp filter, a mount namespace of its own."""
    for label in ("start", "xenbus"):
        box = one(report, "sandbox", scenario="9", label=label)
        assert int(box["cap_eff"], 16) == 1 << 12, box
        assert int(box["cap_bnd"], 16) == 1 << 12, box
        assert str(box["no_new_privs"]) == "1", box
        assert str(box["seccomp"]) == "2", box
        assert str(box["own_mnt_ns"]) == "1", box


@pytest.mark.parametrize("label", list(STEPS))
def test_each_step_converges_and_the_packets_follow(report: Report, label: str) -> None:
    """Under the sandbox the agent reached XenStore, ethtool's netlink and tc: both ends'
    results, the devices' features, tc's rules and the packets follow the policy in force."""
    conv = one(report, "converged", scenario="9", label=label)
    assert conv["rc"] == 0, conv
    check_probe_step(report, "9", label, STEPS[label])


# ------------------------------------------------------------------- reload, kill -9, stop

def test_reload_is_a_sighup_to_the_same_process(report: Report) -> None:
    pid = state(report, "start")["MainPID"]
    for label in ("reload-allow", "reload-revoke"):
        assert ctl(report, label)["rc"] == 0
        after = state(report, label)
        assert (after["ActiveState"], after["MainPID"], int(after["NRestarts"])) == \
            ("active", pid, 0), after


def test_kill_9_restarts_the_agent(report: Report) -> None:
    """Restart=on-failure: SIGKILL is a failure; systemd starts a new agent (NRestarts 1),
    which takes the vifs over as they were negotiated (step "killed" above)."""
    restarted = one(report, "restarted", scenario="9")
    assert restarted["rc"] == 0, restarted
    assert restarted["new_pid"] != restarted["old_pid"]
    killed = state(report, "killed")
    assert (killed["ActiveState"], killed["SubState"]) == ("active", "running")
    assert int(killed["NRestarts"]) == 1
    assert str(killed["MainPID"]) == str(restarted["new_pid"])


def test_stop_mid_negotiation_is_clean(report: Report) -> None:
    """`systemctl stop` right after a reload (its negotiation in flight): the agent exits 0 on
    SIGTERM (Result=success), within the stop timeout, and what both ends published agrees
    with the device and the packets (whichever policy the agent got to apply)."""
    assert ctl(report, "reload-then-stop")["rc"] == 0
    stop = ctl(report, "stop")
    assert stop["rc"] == 0, stop
    assert float(stop["secs"]) < 30, stop
    assert str(one(report, "stopped", scenario="9")["pid_gone"]) == "1"
    stopped = state(report, "stopped")
    assert (stopped["ActiveState"], stopped["Result"]) == ("inactive", "success"), stopped
    # Exited (CLD_EXITED 1) with status 0.
    assert (str(stopped["ExecMainCode"]), str(stopped["ExecMainStatus"])) == ("1", "0"), stopped
    # The status systemd keeps after the exit is the agent's last word, not "acting for".
    assert stopped["StatusText"] == \
        "stopped: no longer acting for the backend end of domain 0 on the system XenStore"
    values = step_xs(report, "9", "stopped")
    domid = one(report, "probe-step", scenario="9", label="stopped")["domid"]
    back = values[f"/local/domain/0/backend/vif/{domid}/0/xenoffload-csum-result"]
    front = values[f"/local/domain/{domid}/device/vif/0/xenoffload-csum-result"]
    assert back == front, values
    assert back in ("to-guest=none from-guest=none",
                    "to-guest=ipv4+ipv6 from-guest=ipv4+ipv6"), values
    blank = back != "to-guest=none from-guest=none"
    dev = one(report, "probe-step", scenario="9", label="stopped")["dom0_devices"].split()[0]
    assert feature(report, dev, "stopped", "tx-checksum-ipv4", "9") == ("on" if blank else "off")
    c = probe(report, "9", "stopped", "to-guest public", "udp")
    assert c["correct"] + c["incorrect"] > 0
    assert (c["incorrect"] > 0) == blank, c
    assert values[f"/local/domain/0/backend/vif/{domid}/0/xenoffload-csum-status"] == \
        ("ok" if blank else STATUS[("backend", 0)])


def test_start_again(report: Report) -> None:
    assert ctl(report, "start")["rc"] == 0
    started = state(report, "started")
    assert (started["ActiveState"], started["SubState"]) == ("active", "running")


def test_driver_domain_path_through_the_xenbus_device(report: Report) -> None:
    """XENSTORED_PATH=/dev/xen/xenbus (a drop-in): the sandboxed agent reaches XenStore
    through the xenbus device (PrivateDevices=yes with DeviceAllow/BindPaths of it)."""
    for label in ("xenbus-daemon-reload", "xenbus-restart", "xenbus-reload"):
        assert ctl(report, label)["rc"] == 0, ctl(report, label)
    assert state(report, "xenbus")["ActiveState"] == "active"
    box = one(report, "sandbox", scenario="9", label="xenbus")
    assert int(box["xenbus_open"]) >= 1, box


def test_final_stop(report: Report) -> None:
    assert ctl(report, "final-stop")["rc"] == 0


# ------------------------------------------------------------------------------ the journal

def test_journal_holds_the_agent_and_systemd_lines(report: Report) -> None:
    """journald has the agent's own log lines (stderr) and systemd's about the unit."""
    journal = one(report, "journal", scenario="9")
    # Started: enable --now, the restart after kill -9, start, the xenbus restart.
    assert int(journal["started_lines"]) == 4, journal
    assert int(journal["xenbus_lines"]) == 1, journal
    # Reloaded: reload-allow, reload-revoke, the xenbus step's; the one before the stop may
    # or may not have been acted on.
    assert int(journal["reloaded_lines"]) in (3, 4), journal
    assert int(journal["killed_lines"]) >= 1, journal
    assert int(journal["restart_lines"]) == 1, journal
    assert int(journal["enforce_lines"]) > 0, journal
    assert int(journal["denied_lines"]) == 0, journal
