"""The systemd units and the hotplug wrapper as ``xenoffload units`` writes them: they pass
``systemd-analyze verify`` (Debian 12's systemd; the Xen units they are ordered against are
Debian's xen.service and upstream's xenstored.service, ordering only), run this installation's
own command, and ``systemd-analyze security`` rates their exposure well under 5."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_tool
from e2e.lab import run_cli

from xenoffload.units import TEMPLATES, entry_point

UNITS = ("xenoffload-backend.service", "xenoffload-guest.service")


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    done = run_cli("units", "--output", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(TEMPLATES)
    return tmp_path


def test_units_pass_systemd_analyze_verify(rendered: Path) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    done = subprocess.run([analyze, "verify", *(str(rendered / unit) for unit in UNITS)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # no warning either (unknown keys...)


@pytest.mark.parametrize("unit", UNITS)
def test_units_expose_well_under_5(rendered: Path, unit: str) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    done = subprocess.run([analyze, "security", "--offline=true", "--no-pager",
                           str(rendered / unit)], capture_output=True, text=True, timeout=60,
                          check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0, done.stdout


def test_units_run_this_installations_command(rendered: Path) -> None:
    command = entry_point()
    for unit in UNITS:
        text = (rendered / unit).read_text()
        assert f"ExecStart={command} " in text
        assert "/usr/local/bin" not in text or command.startswith("/usr/local/bin")
        assert "Type=notify" in text and "CapabilityBoundingSet=CAP_NET_ADMIN" in text
    # The command really is xenoffload.
    version = subprocess.run([*shlex.split(command), "--version"], capture_output=True,
                             text=True, timeout=30, check=False)
    assert version.returncode == 0 and version.stdout.startswith("xenoffload ")


def test_the_guest_unit_needs_no_configuration_file(rendered: Path) -> None:
    text = (rendered / "xenoffload-guest.service").read_text()
    assert "--config" not in text  # /etc/xenoffload/guest.toml is read only if it exists
    assert "ConditionPathExists=/dev/xen/xenbus" in text


def test_the_backend_unit_starts_after_debians_xen_and_before_guests(rendered: Path) -> None:
    text = (rendered / "xenoffload-backend.service").read_text()
    after = re.search(r"^After=(.*)$", text, re.M)
    assert after and {"xen.service", "xenstored.service"} <= set(after.group(1).split())
    assert re.search(r"^Before=xendomains.service$", text, re.M)
    assert "Requires=" not in text  # ordering only: the agent waits for XenStore itself


def test_the_hotplug_wrapper_runs_this_installations_command(rendered: Path) -> None:
    wrapper = rendered / "vif-bridge-xenoffload"
    assert wrapper.stat().st_mode & 0o111
    text = wrapper.read_text()
    assert f"\n{entry_point()} -v hotplug \"$1\"" in text
    syntax = subprocess.run(["bash", "-n", str(wrapper)], capture_output=True, text=True,
                            timeout=30, check=False)
    assert syntax.returncode == 0, syntax.stderr


def test_units_without_output_prints_them() -> None:
    done = subprocess.run([sys.executable, "-m", "xenoffload", "units"], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0
    assert all(f"# ---- {name}" in done.stdout for name in TEMPLATES)
