"""A network driver domain's backend agent with that domain's own XenStore permissions.

The Xen lab's scenario 10 (docs/xenlab.md) runs the agent in a real driver domain; this plays
the same over the embedded xenstored: driver domain 4 (``driver4``) serves guest 6's vif 0 on
``ddbr0``, laid out as libxl lays out a vif with ``backend=driver4`` (the backend directory
owned by domain 4, readable by 6; the guest's home, name, ``vm`` and ``/vm/<uuid>`` its
toolstack's, which domain 4 may not read). The agent runs over domain 4's own, unprivileged
connection; which domid it acts for without ``--domid`` (its unit passes none) is checked
beside it, the host playing a Xen domain through the two files the agent reads.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenoffload import cli
from xenoffload.policy import builtin_policy
from xenoffload.schema import Role
from xenoffload.store.base import XenStoreError
from xenoffload.store.pyxs_store import connect_store
from xenoffload.toggles.simulated import SimulatedKernel, profile_for_name
from xenoffload.toolstack import VifSpec, create_domain, create_vif

from .lab import Lab, lab_context

MAC = "00:16:3e:00:06:00"
UUID = "6a1c3f52-0000-4000-8000-000000000006"
BACKEND = "/local/domain/4/backend/vif/6/0"
FRONTEND = "/local/domain/6/device/vif/0"


@pytest.fixture
def ddlab(tmp_path: Path) -> Iterator[Lab]:
    """Driver domain 4 and guest 6 (each with its own socket), guest 6's vif 0 served by 4,
    a guest agent running for 6."""
    with lab_context(tmp_path, with_netns=False, guests=(4, 6)) as lab:
        create_domain(lab.toolstack, 4, "driver4")
        create_domain(lab.toolstack, 6, "guest6", uuid=UUID)
        create_vif(lab.toolstack, VifSpec(6, 0, MAC, "ddbr0", backend_domid=4))
        sock = lab.guest_socket(6)
        lab.guest_agent(6, builtin_policy(Role.FRONTEND),
                        SimulatedKernel(auto_profile=profile_for_name),
                        factory=lambda: connect_store(sock, timeout=2.0))
        yield lab


def _backend_once(lab: Lab, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xenoffload", "-v", "backend-agent", "--domid", "4",
         "--xenstore", lab.guest_socket(4), "--config", str(config), "--toggles", "dry-run",
         "--mode", "full", "--once", "--settle", "1", "--timeout", "20"],
        capture_output=True, text=True, timeout=60, check=False)


def test_the_driver_domains_agent_negotiates_its_vifs_with_its_own_permissions(
        ddlab: Lab) -> None:
    """``/xapi`` unreadable taken as absent (it exited 1 on EACCES
    before), the vif negotiated at both ends; of the policy's selectors only those the driver
    domain can read match: the backend's ``bridge`` and ``mac``, not the guest's name nor its
    UUID (one selector per family and direction, so the result says which matched)."""
    # Domain 4 cannot read what the name and UUID selectors need.
    dd = connect_store(ddlab.guest_socket(4), timeout=2.0)
    try:
        for path in ("/local/domain/6/name", "/local/domain/6/vm", f"/vm/{UUID}", "/xapi"):
            with pytest.raises(XenStoreError, match="EACCES"):
                dd.try_read(path)
        assert dd.try_read(f"{BACKEND}/bridge") == b"ddbr0"
    finally:
        dd.close()
    config = ddlab.write_file("dd.toml", "\n".join([
        '[[rule]]', 'domain = "guest6"', 'to-guest = { ipv4 = true }',
        '[[rule]]', f'uuid = "{UUID}"', 'to-guest = { ipv6 = true }',
        '[[rule]]', 'bridge = "ddbr0"', 'from-guest = { ipv4 = true }',
        '[[rule]]', f'mac = "{MAC}"', 'from-guest = { ipv6 = true }', ""]))
    done = _backend_once(ddlab, config)
    assert done.returncode == 0, done.stderr
    assert "domid=6 devid=0 found (bridge=ddbr0" in done.stderr
    result = b"to-guest=none from-guest=ipv4+ipv6"
    assert ddlab.toolstack.try_read(f"{BACKEND}/xenoffload-csum-result") == result
    assert ddlab.toolstack.try_read(f"{FRONTEND}/xenoffload-csum-result") == result
    # Nothing was written outside the driver domain's own backend directory.
    assert ddlab.toolstack.try_read("/local/domain/0/backend") is None


@pytest.mark.parametrize(("hypervisor", "capabilities", "expected"), [
    (None, None, 0),                 # not under Xen: an embedded xenstored, dom0's role
    ("xen", "control_d", 0),         # dom0
    ("xen", "", 4),                  # a driver domain: its own domid, read from XenStore
    ("xen", None, 4),                # the same without xenfs mounted
])
def test_without_domid_the_backend_agent_acts_for_its_own_domain(
        ddlab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hypervisor: str | None,
        capabilities: str | None, expected: int) -> None:
    for name, value in (("HYPERVISOR_TYPE", hypervisor), ("XEN_CAPABILITIES", capabilities)):
        path = tmp_path / name
        if value is not None:
            path.write_text(value + "\n")
        monkeypatch.setattr(cli, name, str(path))
    # dom0 (and a host without Xen) never connects for it: a dead path would fail otherwise.
    where = ddlab.guest_socket(4) if expected else str(tmp_path / "no.sock")
    assert cli._backend_domid(where, None) == expected


@pytest.mark.parametrize(("target", "node"), [(["6/0"], "vif/6/0"),
                                              (["--bridge", "ddbr0"], "bridge/ddbr0")])
def test_an_override_from_dom0_steers_the_driver_domains_agent(ddlab: Lab, target: list[str],
                                                               node: str) -> None:
    """``set --backend-domid 4`` (dom0, where the toolstack runs): a vif's override is keyed
    by domid (by the VM's UUID, which domain 4 cannot read, it would never match there); a
    bridge's matches the backend's ``bridge`` key."""
    done = subprocess.run(
        [sys.executable, "-m", "xenoffload", "set", "--xenstore", ddlab.socket,
         "--backend-domid", "4", *target, "--tx", "on", "--rx", "on"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert ddlab.toolstack.try_read(f"/local/domain/4/xenoffload/policy/{node}") is not None
    done = _backend_once(ddlab, ddlab.write_file("none.toml", "[default]\nto-guest = false\n"))
    assert done.returncode == 0, done.stderr
    assert ddlab.toolstack.try_read(f"{BACKEND}/xenoffload-csum-result") == \
        b"to-guest=ipv4+ipv6 from-guest=ipv4+ipv6"
