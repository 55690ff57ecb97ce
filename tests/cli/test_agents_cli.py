"""The agents as commands: SIGHUP with a file that does not load keeps the running policy; the
guest agent never guesses a kernel device; ``show --kernel`` prints what ethtool shows."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_root, require_tool
from e2e.lab import Lab, run_cli, wait_until

from .conftest import Processes
from .test_bad_inputs import NESTED, NOT_UTF8

ALLOW_PRIVATE = '[[rule]]\nbridge = "xenpriv0"\nto-guest = true\nfrom-guest = true\n'


@pytest.mark.parametrize("bad", [NOT_UTF8, NESTED], ids=["not UTF-8", "2000 nested arrays"])
def test_sighup_with_a_file_that_does_not_load_keeps_the_running_policy(
        lab: Lab, processes: Processes, bad: bytes) -> None:
    vif = lab.add_guest(1, ["xenpriv0"])[0]
    policy = lab.write_file("dom0.toml", ALLOW_PRIVATE)
    agent = processes.start("backend", "backend-agent", "--xenstore", lab.socket, "--mode",
                            "full", "--toggles", "none", "--config", str(policy))
    wait_until(lambda: lab.toolstack.try_read(f"{vif.backend_dir}/feature-csum-tx") == b"1",
               15, "the file's policy advertised")
    policy.write_bytes(bad)
    agent.hup()
    wait_until(lambda: "policy reload refused, keeping the old one" in agent.log(), 15,
               "the reload refused")
    assert agent.running()
    assert lab.toolstack.read(f"{vif.backend_dir}/feature-csum-tx") == b"1"
    assert "Traceback" not in agent.log()
    policy.write_text("")  # a valid file again: the built-in default, nothing allowed
    agent.hup()
    wait_until(lambda: lab.toolstack.try_read(f"{vif.backend_dir}/feature-csum-tx") == b"0",
               15, "the new policy advertised")


def test_guest_agent_without_a_sysfs_vif_touches_no_device(lab: Lab,
                                                           processes: Processes) -> None:
    """Run as root on a machine without Xen vifs, with real toggles and no --device-pattern:
    the vif is negotiated in XenStore but no kernel device is chosen (there is an eth0 here,
    which the old fallback would have switched)."""
    require_root()
    require_tool("ip", "iproute2")
    from xenoffload.netns import Namespaces

    with Namespaces("xo-noguess") as spaces:
        netns = spaces.add("g")
        subprocess.run(["ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer",
                        "name", "peer0"], check=True, timeout=20)
        before = subprocess.run(["ip", "netns", "exec", netns, "ethtool", "-k", "eth0"],
                                capture_output=True, text=True, timeout=20, check=True).stdout
        lab.add_guest(1, ["xenbr0"])
        processes.start("backend", "backend-agent", "--xenstore", lab.socket, "--mode",
                        "full", "--toggles", "none", "--no-config")
        done = run_cli("guest-agent", "--once", "--json", "--settle", "1", "--no-config",
                       "--mode", "full", "--toggles", "netlink", "--netns", netns,
                       "--xenstore", lab.guest_socket(1))
        assert done.returncode == 1, done.stderr  # not enforced: not a success
        (record,) = json.loads(done.stdout)
        assert record["agent"]["enforcement"]["status"] == "no-device: no Xen vif 0 in sysfs"
        assert record["agent"]["enforcement"]["retry"] is True
        assert record["frontend"]["status"] == "no-device: no Xen vif 0 in sysfs"
        after = subprocess.run(["ip", "netns", "exec", netns, "ethtool", "-k", "eth0"],
                               capture_output=True, text=True, timeout=20, check=True).stdout
        assert after == before


def test_show_kernel_prints_the_checksum_features_as_ethtool_does(netlab: Lab) -> None:
    netlab.add_guest(1, ["xenbr0"])
    ethtool = subprocess.run(["ip", "netns", "exec", netlab.netns[0], "ethtool", "-k",
                              "vif1.0"], capture_output=True, text=True, timeout=20,
                             check=True).stdout
    expected = {line.strip() for line in ethtool.splitlines()
                if line.strip().startswith(("tx-checksum-", "rx-checksum"))}
    done = run_cli("show", "--kernel", "netlink", "--netns", netlab.netns[0],
                   "--xenstore", netlab.socket)
    assert done.returncode == 0, done.stderr
    shown = {line.strip() for line in done.stdout.splitlines()
             if line.startswith("      ")}
    # ethtool calls rx-checksum "rx-checksumming"; every other line is the same, markers too.
    assert {line.replace("rx-checksum:", "rx-checksumming:") for line in shown} == expected
    assert any("[fixed]" in line for line in shown)


def test_show_kernel_reports_an_unreadable_device_as_an_error_not_a_feature(
        netlab: Lab) -> None:
    netlab.add_guest(1, ["xenbr0"])
    netlab.delete_device(1, 0)
    done = run_cli("show", "--json", "--kernel", "netlink", "--netns", netlab.netns[0],
                   "--xenstore", netlab.socket)
    assert done.returncode == 0, done.stderr
    (record,) = json.loads(done.stdout)
    assert record["kernel"]["features"] == {}
    assert "vif1.0" in record["kernel"]["error"]


@pytest.mark.parametrize("role", ["backend", "guest"])
def test_agents_tell_systemd_they_are_ready_once_they_act(lab: Lab, tmp_path: Path,
                                                          role: str) -> None:
    """Type=notify: READY=1 comes after the first attach (watches registered, vifs scanned),
    so `systemctl start` returns when the agent acts."""
    lab.add_guest(1, ["xenbr0"])
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(20)
        xenstore = lab.socket if role == "backend" else lab.guest_socket(1)
        process = subprocess.Popen(
            [sys.executable, "-m", "xenoffload", f"{role}-agent", "--xenstore", xenstore,
             "--toggles", "none", "--no-config"],
            env=dict(os.environ, NOTIFY_SOCKET=address), stderr=subprocess.DEVNULL)
        try:
            message = listener.recv(4096).decode()
            assert message.startswith("READY=1\n"), message
            token = f"xenoffload-{role}"
            assert lab.conn_ids(token), "ready before its watch was registered"
            process.send_signal(signal.SIGTERM)
            # With the status systemd keeps (and `systemctl status` shows) once it has exited.
            assert listener.recv(4096).decode().startswith(
                f"STOPPING=1\nSTATUS=stopped: no longer acting for the "
                f"{role if role == 'backend' else 'frontend'} end of domain "
                f"{0 if role == 'backend' else 1} on ")
            assert process.wait(20) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.mark.parametrize("role", ["backend", "guest"])
def test_both_daemons_wait_for_an_absent_xenstore_and_stop_cleanly(tmp_path: Path,
                                                                   processes: Processes,
                                                                   role: str) -> None:
    """No XenStore: the daemons (not --once) wait for it, retrying with backoff, both alike;
    SIGTERM ends them with exit 0."""
    agent = processes.start(role, f"{role}-agent", "--toggles", "none", "--no-config",
                            "--xenstore", str(tmp_path / "absent.sock"))
    wait_until(lambda: agent.log().count("retrying in") >= 3, 20, "three retries")
    assert agent.running()
    assert agent.stop() == 0
    assert "Traceback" not in agent.log()
