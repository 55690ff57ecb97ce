"""dom0 with systemd as PID 1: what the lab's systemd boot adds to the dom0 image.

``python tests/xenlab/xenlab.py run --init systemd ...`` boots dom0 with ``rdinit=`` Debian 12's
``/lib/systemd/systemd`` (systemd 252) instead of the lab's ``/init``. The image then also holds
(docs/xenlab.md, "systemd as dom0's init"):

- systemd, systemctl, journalctl, journald and their libraries (``dpkg -x`` of ``systemd`` and
  ``libsystemd-shared``; ``ldd`` finds the rest), the stock unit files without their ``.wants``
  links: the boot pulls in only journald (and its sockets) and ``xenlab.service``;
- ``xenlab.service``: the lab's ``/init`` as a service (``XO_SYSTEMD=1``: systemd mounted the
  file systems): Xen daemons, bridges, the guest, the selected scenarios (9), poweroff;
- no xenoffload: the wheel built from the working tree and its dependencies' wheels sit in
  ``/root/wheels`` and scenario 9 installs them as the README tells a user (``python3 -m venv
  /opt/xenoffload``, then that venv's pip), so this image's Python carries the whole standard
  library (pip's needs) instead of the traced subset, and Debian's ensurepip (python3.11-venv)
  with the pip and setuptools wheels it installs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Debian packages of the systemd boot (beside the lab's).
#: python3.11-venv (ensurepip) and the wheels it installs: `python3 -m venv` as on Debian.
SYSTEMD_DEBS = ("systemd", "libsystemd-shared", "python3.11-venv", "python3-pip-whl",
                "python3-setuptools-whl")
#: Binaries of the systemd packages the boot runs (their libraries are copied by ldd).
SYSTEMD_BINARIES = ("lib/systemd/systemd", "lib/systemd/systemd-journald",
                    "lib/systemd/systemd-shutdown", "lib/systemd/systemd-cgroups-agent",
                    "bin/systemctl", "bin/journalctl", "bin/systemd-notify",
                    "bin/systemd-tmpfiles", "bin/systemd-escape", "usr/bin/systemd-run",
                    "usr/bin/systemd-analyze")
#: What the boot starts besides the lab's service: journald and its sockets.
SYSTEMD_WANTS = {
    "sysinit.target.wants": ("systemd-journald.service",),
    "sockets.target.wants": ("systemd-journald.socket", "systemd-journald-dev-log.socket"),
    "multi-user.target.wants": ("xenlab.service",),
}
#: Standard-library directories no user of the image needs (pip included).
STDLIB_SKIP = ("test", "idlelib", "tkinter", "turtledemo", "lib2to3", "pydoc_data",
               "config-3.11-x86_64-linux-gnu", "__pycache__")

XENLAB_UNIT = """\
# The Xen lab's dom0 under systemd: the lab's own /init, run as a service. It starts the Xen
# daemons (xenstored, xen-init-dom0, xenconsoled), the bridges and the guest, runs the selected
# scenarios (scenario 9 drives xenoffload's units through systemctl), dumps the xenstored trace
# and powers the VM off; its watchdog bounds it all (docs/xenlab.md).
[Unit]
Description=xenoffload Xen lab (dom0 setup, guest, scenarios)
After=systemd-journald.service

[Service]
Type=exec
Environment=XO_SYSTEMD=1
ExecStart=/init
StandardInput=null
StandardOutput=tty
StandardError=tty
TTYPath=/dev/hvc0
TTYReset=no
TTYVHangup=no
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
"""


def build_wheel(repo: Path, dest: Path) -> Path:
    """Build xenoffload's wheel from the working tree (``pip wheel --no-deps``) into ``dest``;
    return its path."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                           str(dest), str(repo)], capture_output=True, text=True, timeout=600,
                          check=False)
    wheels = sorted(dest.glob("xenoffload-*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        raise RuntimeError(f"pip wheel of {repo} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    return wheels[0]


def python_tree(pytree: Path, py_root: Path, sd_root: Path, dest: Path,
                py: str) -> dict[str, Any]:
    """Return facts about ``dest``: a copy of the lab's Python tree ``pytree`` with the whole
    standard library of ``py_root`` and Debian's ensurepip (``sd_root``, python3.11-venv), all
    precompiled, and nothing in dist-packages: xenoffload and its dependencies are
    pip-installed in a venv in the VM."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(pytree, dest, symlinks=True)
    site = dest / "usr/lib/python3/dist-packages"
    shutil.rmtree(site)
    site.mkdir()
    stdlib = py_root / f"usr/lib/python{py}"
    shutil.copytree(stdlib, dest / f"usr/lib/python{py}", dirs_exist_ok=True,
                    ignore_dangling_symlinks=True,
                    ignore=shutil.ignore_patterns(*STDLIB_SKIP))
    shutil.copytree(sd_root / f"usr/lib/python{py}/ensurepip",
                    dest / f"usr/lib/python{py}/ensurepip")
    python = py_root / f"usr/bin/python{py}"
    subprocess.run([str(python), "-E", "-m", "compileall", "-q", "-j", "0",
                    "--invalidation-mode", "unchecked-hash", "-s", str(dest), "-p", "/",
                    str(dest / f"usr/lib/python{py}")], capture_output=True, timeout=900,
                   check=False)  # a module that does not compile (py2 leftovers) stays source
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file() and not p.is_symlink())
    return {"bytes": size}


def install(image: Any, sd_root: Path, wheel_files: Sequence[Path]) -> None:
    """Add systemd, its units, the lab's service and the wheels to the dom0 ``image`` (an
    xenlab.Image, before its libraries are copied)."""
    for rel in SYSTEMD_BINARIES:
        image.path(rel).unlink(missing_ok=True)  # never write through a busybox applet link
        image.copy(sd_root / rel, rel, binary=True)
    shared = sd_root / "usr/lib/x86_64-linux-gnu/systemd"
    for lib in shared.glob("libsystemd-*.so"):
        image.copy(lib, f"usr/lib/x86_64-linux-gnu/systemd/{lib.name}")
    units = image.root / "lib/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    for unit in sorted((sd_root / "lib/systemd/system").iterdir()):
        if unit.is_dir() or unit.name == "default.target":
            continue  # the stock .wants links would start what this image does not carry
        target = units / unit.name
        if unit.is_symlink():
            target.symlink_to(unit.readlink())
        else:
            shutil.copyfile(unit, target)
    (units / "default.target").symlink_to("multi-user.target")
    image.write("lib/systemd/system/xenlab.service", XENLAB_UNIT)
    for wants, names in SYSTEMD_WANTS.items():
        (units / wants).mkdir(exist_ok=True)
        for name in names:
            (units / wants / name).symlink_to(f"../{name}")
    for rel in ("etc/systemd/system", "var/log/journal", "var/lib/systemd", "usr/local/bin",
                "usr/local/lib/python3.11/dist-packages"):
        (image.root / rel).mkdir(parents=True, exist_ok=True)
    image.write("etc/os-release", 'PRETTY_NAME="xenoffload Xen lab dom0 (Debian 12)"\nID=debian\n'
                'VERSION_ID="12"\n')
    image.write("etc/machine-id", uuid.uuid4().hex + "\n", mode=0o444)
    image.write("etc/hostname", "xenlab-dom0\n")
    # The users and groups systemd and journald look up (lab_files wrote root and tcpdump).
    with (image.root / "etc/passwd").open("a") as f:
        f.write("nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    with (image.root / "etc/group").open("a") as f:
        f.write("systemd-journal:x:101:\nadm:x:4:\nnogroup:x:65534:\n")
    for wheel in wheel_files:
        image.copy(wheel, f"root/wheels/{wheel.name}")
    # What Debian's ensurepip installs into a new venv (its WHEEL_PKG_DIR).
    for name in ("pip", "setuptools"):
        found = sorted((sd_root / "usr/share/python-wheels").glob(f"{name}-*.whl"))
        if not found:
            raise RuntimeError(f"no {name} wheel in /usr/share/python-wheels")
        image.copy(found[-1], f"usr/share/python-wheels/{found[-1].name}")
