"""The vif hotplug hook: keys written at once, the result applied once both ends connect."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .lab import Lab, wait_until


def hotplug(lab: Lab, action: str, xenbus_path: str, config: str | None = None,
            wait: float = 20.0, vif: str = "vif1.1",
            log: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XENBUS_PATH=xenbus_path, vif=vif)
    args = [sys.executable, "-m", "xenoffload", "-v", "hotplug", action, "--xenstore",
            lab.socket, "--toggles", "dry-run", "--wait", str(wait)]
    args += ["--config", config] if config else ["--no-config"]
    if log is not None:
        args += ["--log", str(log)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=30,
                          check=False)


def test_online_writes_the_backend_keys_before_returning_then_applies_on_connect(
    lab: Lab,
) -> None:
    policy = lab.write_file("policy.toml", '[[rule]]\nbridge = "xenpriv0"\n'
                            "to-guest = true\nfrom-guest = true\n")
    vif = lab.add_guest(1, ["xenbr0", "xenpriv0"])[1]
    store = lab.toolstack
    store.write(f"{vif.backend_dir}/state", b"2")  # netback waits (InitWait) while hotplug runs
    started = time.monotonic()
    done = hotplug(lab, "online", "backend/vif/1/1", str(policy))
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 10  # the hook never holds up the device
    assert store.read(f"{vif.backend_dir}/feature-csum-tx") == b"1"
    assert store.read(f"{vif.backend_dir}/feature-ipv6-csum-offload") == b"1"
    assert store.try_read(f"{vif.backend_dir}/xenoffload-csum-status") is None

    # A stock netfront connects (legacy keys only), then netback does.
    store.write(f"{vif.frontend_dir}/feature-ipv6-csum-offload", b"1")
    store.write(f"{vif.frontend_dir}/state", b"4")
    store.write(f"{vif.backend_dir}/state", b"4")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if store.try_read(f"{vif.backend_dir}/xenoffload-csum-status") is not None:
            break
        time.sleep(0.05)
    assert store.read(f"{vif.backend_dir}/xenoffload-csum-status") == b"ok"
    assert store.read(f"{vif.backend_dir}/state") == b"4"  # companion: never written by us


def test_hook_refuses_a_path_that_is_not_a_vif_backend(lab: Lab) -> None:
    done = hotplug(lab, "online", "backend/vbd/1/51712")
    assert done.returncode == 2
    assert "not a vif backend path" in done.stderr


def test_offline_has_nothing_to_undo(lab: Lab) -> None:
    lab.add_guest(1, ["xenbr0"])
    done = hotplug(lab, "offline", "backend/vif/1/0")
    assert done.returncode == 0
    assert "nothing to undo" in done.stderr


def _connect_stock_frontend(lab: Lab, backend_dir: str, frontend_dir: str) -> None:
    """A stock netfront connects (legacy keys only), then netback does."""
    store = lab.toolstack
    store.write(f"{frontend_dir}/state", b"4")
    store.write(f"{backend_dir}/state", b"4")


@pytest.mark.parametrize(("vifname", "vif_env", "device"), [
    ("web0", "vif1.0", "web0"),     # xl vifname=: the stock script renamed the device
    (None, "vif1.0", "vif1.0"),     # xl's $vif
    (None, "", "vif1.0"),           # neither: netback's own name
])
def test_online_applies_to_the_device_xl_named(lab: Lab, tmp_path: Path, vifname: str | None,
                                               vif_env: str, device: str) -> None:
    vif = lab.add_guest(1, ["xenbr0"])[0]
    if vifname:
        lab.toolstack.write(f"{vif.backend_dir}/vifname", vifname.encode())
    lab.toolstack.write(f"{vif.backend_dir}/state", b"2")
    log = tmp_path / "hook.log"
    done = hotplug(lab, "online", "backend/vif/1/0", vif=vif_env, log=log)
    assert done.returncode == 0, done.stderr
    _connect_stock_frontend(lab, vif.backend_dir, vif.frontend_dir)
    wait_until(lambda: "negotiated" in log.read_text(), 20, "the background part applied")
    assert f"{device} backend:" in log.read_text()


def test_add_and_remove_are_the_emulated_nic_and_do_nothing(lab: Lab) -> None:
    vif = lab.add_guest(1, ["xenbr0"])[0]
    for action in ("add", "remove"):
        done = hotplug(lab, action, "backend/vif/1/0", vif="vif1.0-emu")
        assert done.returncode == 0
        assert "emulated NIC" in done.stderr
    assert lab.toolstack.try_read(f"{vif.backend_dir}/feature-csum-tx") is None


def test_online_applies_the_run_time_overrides_as_an_agent_would(lab: Lab) -> None:
    """`xenoffload set` is policy whoever negotiates: the hook alone (no agent) takes a vif's
    override, keyed by its VM's UUID, over the file's default."""
    vif = lab.add_guest(1, ["xenbr0"])[0]
    store = lab.toolstack
    uuid = store.read("/local/domain/1/vm").decode().removeprefix("/vm/")
    store.write(f"/local/domain/0/xenoffload/policy/vif/{uuid}/0", b"to-guest=on")
    store.write(f"{vif.backend_dir}/state", b"2")
    done = hotplug(lab, "online", "backend/vif/1/0", wait=1.0)
    assert done.returncode == 0, done.stderr
    assert store.read(f"{vif.backend_dir}/feature-csum-tx") == b"1"  # to-guest allowed
    assert store.read(f"{vif.backend_dir}/feature-csum-rx") == b"0"  # the default: computed


def test_online_applies_xapis_other_config_as_the_agent_does(lab: Lab) -> None:
    """xapi's ``other-config:ethtool-*`` is policy for the hook as for the agent: over the
    file's rules, under the run-time overrides."""
    vif = lab.add_guest(1, ["xenbr0"])[0]
    store = lab.toolstack
    store.write("/xapi/1/private/vif/0/other-config/ethtool-tx", b"on")
    store.write(f"{vif.backend_dir}/state", b"2")
    done = hotplug(lab, "online", "backend/vif/1/0", wait=1.0)
    assert done.returncode == 0, done.stderr
    assert store.read(f"{vif.backend_dir}/feature-csum-tx") == b"1"  # to-guest allowed
    assert store.read(f"{vif.backend_dir}/feature-csum-rx") == b"0"  # the default: computed
