"""Host side of xenoffload's real Xen lab: builds images, boots Xen + dom0 + a PV guest under QEMU.

``python tests/xenlab/xenlab.py run --workdir DIR --scenario all --json OUT`` (as root):

1. fetch: Debian 12 packages (Xen 4.17 hypervisor and tools, a Debian kernel, python3.11,
   bridge-utils) with ``apt-get download`` into a cache reused between runs, plus the wheels of
   xenoffload's pure-Python dependencies (attrs, pyxs==0.4.1); host tools (QEMU, busybox-static,
   ethtool, tcpdump, iproute2) are apt-get installed when missing;
2. build: a dom0 and a guest initramfs (busybox, real tools, Debian's python3.11 with a stripped,
   precompiled stdlib, the xenoffload package from the working tree, the scenario scripts);
3. boot: Xen + dom0 under qemu-system-x86_64 (TCG), bounded by a timeout (QEMU is killed);
   dom0 runs the scenarios of tests/xenlab/scenarios/ and powers off;
4. parse: the serial console's ``@@XO {json}`` facts, the guest's console and the xenstored
   trace become one JSON report.

tests/xenlab/test_xenlab.py asserts on that report; docs/xenlab.md explains it all.
"""

from __future__ import annotations

import argparse
import ast
import base64
import ctypes
import functools
import gzip
import hashlib
import json
import lzma
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_CACHE = Path("/var/cache/xenoffload-xenlab")
XEN = "4.17"
PY = "3.11"
MULTIARCH = "x86_64-linux-gnu"
GUEST_NAME = "xenlab-guest"
#: Bounds QEMU (dom0's watchdog fires 45 s before): a guard against a hung scenario, not a
#: target. An idle 2-core host has run all eight scenarios in 8.5 to 13.5 minutes
#: (docs/xenlab.md); a loaded one (TCG shares the cores) takes longer, and must not fail for
#: it. 19 minutes keeps `tox -e xenlab` under 20.
DEFAULT_TIMEOUT = 1140.0

# Host files the build copies or runs, with the Debian package providing each.
HOST_FILES = {
    "/usr/bin/qemu-system-x86_64": "qemu-system-x86",
    "/bin/busybox": "busybox-static",
    "/usr/sbin/ethtool": "ethtool",
    "/usr/bin/tcpdump": "tcpdump",
    "/sbin/ip": "iproute2",
    "/sbin/tc": "iproute2",
    "/bin/bash": "bash",
}
XEN_DEBS = (
    f"xen-hypervisor-{XEN}-amd64", f"xen-utils-{XEN}", "xen-utils-common", "xenstore-utils",
    "libxencall1", "libxenevtchn1", "libxenforeignmemory1", "libxengnttab1", f"libxenmisc{XEN}",
    "libxenstore4", "libxentoollog1", "libxenhypfs1", "libxendevicemodel1", "libxentoolcore1",
    "libyajl2", "bridge-utils",
)
PY_DEBS = (f"python{PY}-minimal", f"libpython{PY}-minimal", f"libpython{PY}-stdlib")
WHEELS = ("attrs", "pyxs==0.4.1")

# tc: clsact (sch_ingress), the classifiers xenoffload uses (u32, then matchall) and its csum
# action; gact for the lab's own "foreign" filter. There is no modprobe in the images: the kernel
# cannot load a module on demand, so everything tc needs is loaded at boot (docs/xenlab.md).
# act_csum needs libcrc32c, whose init needs a "crc32c" hash (modinfo: softdep=pre: crc32c,
# which the insmod order does not follow): crc32c_generic first.
TC_MODULES = ("sch_ingress", "cls_u32", "cls_matchall", "crc32c_generic", "act_csum",
              "act_gact")
DOM0_MODULES = ("xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xenfs", "xen-netback",
                "bridge", "veth", *TC_MODULES)
GUEST_MODULES = ("xen-netfront", "veth", *TC_MODULES)
# The network driver domain (scenario 10): netback and a bridge, xl's needs (privcmd, evtchn,
# gntdev for `xl devd`), tc's modules for the backend agent's enforcement.
NETDD_MODULES = ("xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xenfs",
                 "xen-netback", "bridge", *TC_MODULES)
NETDD_NAME = "xenlab-netdd"
#: Scenarios that boot on their own, left out of "all": 9 (``--init systemd --scenario 9``;
#: tox -e xenlab-systemd) and 10 (``--scenario 10``; tox -e xenlab-dd).
OWN_BOOT_SCENARIOS = ("9", "10")
XEN_DAEMONS = ("xenstored", "xl", "xenconsoled", "xen-init-dom0", "xenconsole",
               "libxl-save-helper")
XENSTORE_TOOLS = ("xenstore", "xenstore-chmod", "xenstore-exists", "xenstore-list", "xenstore-ls",
                  "xenstore-read", "xenstore-rm", "xenstore-watch", "xenstore-write")
# Stdlib modules the agents need whatever the package's imports say (the brief's list).
STDLIB_BASE = ("asyncio", "argparse", "logging", "logging.handlers", "json", "socket", "ctypes",
               "struct", "tomllib", "selectors", "subprocess", "signal", "hashlib", "random",
               "shlex", "textwrap", "traceback", "pathlib", "tempfile", "ipaddress", "fcntl",
               "threading", "dataclasses", "enum", "typing", "copy", "errno", "contextlib",
               "functools", "collections", "re", "string", "datetime", "uuid", "queue",
               "concurrent.futures", "importlib.metadata", "encodings.idna", "encodings.ascii",
               "encodings.latin_1", "encodings.utf_8_sig",
               # `xenoffload units` reads its templates with importlib.resources and finds
               # its entry point with sysconfig (whose data module Debian names per arch)
               "importlib.resources", "importlib.readers", "importlib.resources.readers",
               "sysconfig", f"_sysconfigdata__{MULTIARCH}",
               # the lab helper's datetime.strptime (xo.py logtime) imports it lazily
               "_strptime")


# The guest's /sbin/poweroff and /sbin/reboot (see Builder.guest).
GUEST_SHUTDOWN = """#!/bin/sh
# xenlab guest: run by the kernel for xl shutdown / xl reboot. Stop the guest agent as a
# service manager would (SIGTERM, at most 5 s), then {how} for real.
_pid=$(cat /run/xo-guest-agent.pid 2>/dev/null)
if [ -n "$_pid" ] && kill -TERM "$_pid" 2>/dev/null; then
    _i=0
    while kill -0 "$_pid" 2>/dev/null && [ $_i -lt 25 ]; do sleep 0.2; _i=$((_i + 1)); done
fi
echo "@@XL [guest] {how}: guest agent stopped"
sync
exec /bin/busybox {how} -f
"""


# The driver domain's /sbin/poweroff and /sbin/reboot: stop its backend agent and `xl devd`
# (SIGTERM, at most 5 s each), then go.
NETDD_SHUTDOWN = """#!/bin/sh
for _f in /run/xo-dd/backend.pid /run/xldevd.pid; do
    _pid=$(cat "$_f" 2>/dev/null)
    if [ -n "$_pid" ] && kill -TERM "$_pid" 2>/dev/null; then
        _i=0
        while kill -0 "$_pid" 2>/dev/null && [ $_i -lt 25 ]; do sleep 0.2; _i=$((_i + 1)); done
    fi
done
echo "@@XL [netdd] {how}: backend agent and xl devd stopped"
sync
exec /bin/busybox {how} -f
"""


class LabError(RuntimeError):
    """The lab could not be built or run (missing prerequisite, failed download, ...)."""


def log(msg: str) -> None:
    """Print one progress line on stderr."""
    print(f"[xenlab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd: Sequence[str | Path], *, timeout: float = 600, cwd: Path | None = None,
       env: dict[str, str] | None = None) -> str:
    """Run a command; return its stdout. Raises LabError with its stderr if it fails."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env, check=False)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}): "
                       f"{proc.stderr.strip()[-2000:]}")
    return proc.stdout


# --------------------------------------------------------------------------------------- fetch

class Fetcher:
    """Debian packages and wheels in a cache directory, downloaded only when missing."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.debs = cache / "debs"
        self.updated = False

    def apt_update(self) -> None:
        """Run apt-get update once per run."""
        if not self.updated:
            log("apt-get update")
            sh(["apt-get", "update", "-qq"], timeout=600)
            self.updated = True

    def ensure_host_packages(self) -> None:
        """apt-get install the host tools the build copies or runs, if any is missing."""
        missing = sorted({pkg for path, pkg in HOST_FILES.items() if not Path(path).exists()})
        if not missing:
            return
        self.apt_update()
        log(f"apt-get install {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        sh(["apt-get", "install", "-y", "-qq", *missing], timeout=900, env=env)

    def kernel_package(self) -> str:
        """Return the versioned Debian kernel package linux-image-amd64 depends on."""
        for attempt in range(2):
            try:
                out = sh(["apt-cache", "depends", "linux-image-amd64"], timeout=60)
            except LabError:
                out = ""
            names = re.findall(r"Depends: (linux-image-\d\S*-amd64)\b", out)
            if names:
                return names[0]
            if attempt == 0:
                self.apt_update()
        raise LabError("cannot resolve the kernel package of linux-image-amd64 (apt lists?)")

    def download(self, packages: Iterable[str]) -> dict[str, Path]:
        """Return ``package -> .deb path``, downloading only the files not in the cache."""
        packages = list(packages)
        self.debs.mkdir(parents=True, exist_ok=True)
        uris = ""
        for attempt in range(2):
            try:
                # In an empty directory: apt prints nothing for files already in cwd.
                with tempfile.TemporaryDirectory() as empty:
                    uris = sh(["apt-get", "download", "--print-uris", *packages], timeout=120,
                              cwd=Path(empty))
                break
            except LabError:
                if attempt == 1:
                    raise
                self.apt_update()
        files = re.findall(r"^'[^']+' (\S+\.deb) \d+ ", uris, flags=re.MULTILINE)
        if len(files) != len(packages):
            raise LabError(f"apt-get --print-uris gave {len(files)} files for {len(packages)}")
        by_name = {f.split("_", 1)[0]: self.debs / f for f in files}
        missing = [name for name, path in by_name.items() if not path.exists()]
        if missing:
            log(f"apt-get download {len(missing)} packages")
            sh(["apt-get", "download", *missing], timeout=900, cwd=self.debs)
        for name, path in by_name.items():
            if not path.exists():
                raise LabError(f"{name}: {path.name} not downloaded")
        return by_name

    def extract(self, group: str, debs: Iterable[Path]) -> Path:
        """Return a directory holding ``dpkg -x`` of all ``debs`` (reused while they are)."""
        debs = sorted(debs)
        key = hashlib.sha1("\n".join(d.name for d in debs).encode()).hexdigest()[:12]
        root = self.cache / "roots" / f"{group}-{key}"
        if (root / ".complete").exists():
            return root
        for old in (self.cache / "roots").glob(f"{group}-*"):
            shutil.rmtree(old)
        root.mkdir(parents=True)
        for deb in debs:
            sh(["dpkg", "-x", deb, root], timeout=300)
        (root / ".complete").write_text("\n".join(d.name for d in debs) + "\n")
        return root

    def wheels(self) -> list[Path]:
        """Return the wheels of xenoffload's runtime dependencies (pip download when missing)."""
        wheel_dir = self.cache / "wheels"
        wheel_dir.mkdir(parents=True, exist_ok=True)
        found: list[Path] = []
        for spec in WHEELS:
            name, _, version = spec.partition("==")
            pattern = f"{name}-{version or '*'}-*.whl"
            hits = sorted(wheel_dir.glob(pattern))
            if not hits:
                log(f"pip download {spec}")
                sh([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "-d", wheel_dir, spec], timeout=300)
                hits = sorted(wheel_dir.glob(pattern))
            if not hits:
                raise LabError(f"no wheel for {spec}")
            found.append(hits[-1])
        return found


def extract_vmlinux(bzimage: Path, out: Path) -> None:
    """Write the uncompressed ELF kernel found inside a bzImage (xz, gzip or zstd payload)."""
    data = bzimage.read_bytes()
    for magic, opener in ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gzip")):
        start = data.find(magic)
        while start != -1:
            try:
                if opener == "xz":
                    elf = lzma.LZMADecompressor().decompress(data[start:])
                else:
                    elf = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[start:])
            except (lzma.LZMAError, zlib.error):
                elf = b""
            if elf[:4] == b"\x7fELF":
                out.write_bytes(elf)
                return
            start = data.find(magic, start + 1)
    raise LabError(f"no xz/gzip ELF payload found in {bzimage}")


# --------------------------------------------------------------------------------------- build

class Image:
    """A root directory being filled for one initramfs."""

    def __init__(self, root: Path) -> None:
        if root.exists():
            shutil.rmtree(root)
        self.root = root
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", f"lib/{MULTIARCH}", "lib64", "proc", "sys",
                  "dev", "tmp", "run", "etc", "root", "var/log", "lib/modules", "usr/lib/xenlab"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "var/run").symlink_to("../run")
        (root / f"usr/lib/{MULTIARCH}").symlink_to(f"../../lib/{MULTIARCH}")
        self.binaries: list[Path] = []

    def path(self, rel: str) -> Path:
        """Return the image path of ``rel`` (absolute or relative), creating its parent."""
        dest = self.root / rel.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest

    def copy(self, src: Path, rel: str, mode: int | None = None, binary: bool = False) -> Path:
        """Copy one file (following symlinks) into the image; remember ELF binaries."""
        dest = self.path(rel)
        shutil.copyfile(src, dest)
        shutil.copymode(src, dest)
        if mode is not None:
            dest.chmod(mode)
        if binary:
            self.binaries.append(dest)
        return dest

    def write(self, rel: str, text: str, mode: int = 0o644) -> None:
        """Write a text file into the image."""
        dest = self.path(rel)
        dest.write_text(text)
        dest.chmod(mode)

    def busybox(self) -> None:
        """Install busybox-static and its applets (in /bin only: real tools live in /usr)."""
        self.copy(Path("/bin/busybox"), "bin/busybox")
        for applet in sh(["/bin/busybox", "--list"]).split():
            link = self.root / "bin" / applet
            if not link.exists() and applet != "busybox":
                link.symlink_to("busybox")

    def libraries(self, extra_lib_dirs: Sequence[Path]) -> None:
        """Copy every shared library the remembered binaries need (ldd), plus libgcc_s."""
        env = dict(os.environ, LD_LIBRARY_PATH=":".join(map(str, extra_lib_dirs)))
        needed: set[Path] = set()
        for binary in self.binaries:
            out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env,
                                 timeout=60, check=False).stdout
            for line in out.splitlines():
                match = re.search(r"=> (/\S+)", line) or re.match(r"\s*(/\S+ld-linux\S*)", line)
                if match:
                    needed.add(Path(match.group(1)))
        libgcc = Path(f"/lib/{MULTIARCH}/libgcc_s.so.1")
        needed.add(libgcc)
        for lib in sorted(needed):
            if "ld-linux" in lib.name:
                self.copy(lib, f"lib64/{lib.name}")
            else:
                self.copy(lib, f"lib/{MULTIARCH}/{lib.name}")

    def modules(self, modroot: Path, names: Sequence[str]) -> None:
        """Copy kernel modules with their dependencies, writing the insmod order file."""
        index = {p.name.split(".ko")[0]: p for p in modroot.rglob("*.ko*")}
        order: list[str] = []

        def add(name: str, depth: int = 0) -> None:
            key = name if name in index else name.replace("_", "-")
            if key not in index:
                raise LabError(f"kernel module {name} not found under {modroot}")
            if key in order:
                return
            data = index[key].read_bytes()
            if index[key].name.endswith(".xz"):
                data = lzma.decompress(data)
            deps = re.search(rb"\x00depends=([^\x00]*)\x00", b"\x00" + data)
            for dep in (deps.group(1).decode().split(",") if deps else []):
                if dep and depth < 10:
                    add(dep, depth + 1)
            (self.root / "lib/modules" / f"{key}.ko").write_bytes(data)
            order.append(key)

        for name in names:
            add(name)
        self.write("lib/modules/xenlab.order", "".join(f"{m}.ko\n" for m in order))

    def lab_files(self, init: str) -> None:
        """Install the init script, lib.sh, xo.py and the scenario scripts."""
        images = HERE / "images"
        self.copy(images / init, "init", mode=0o755)
        self.copy(images / "lib.sh", "usr/lib/xenlab/lib.sh")
        self.copy(images / "xo.py", "usr/lib/xenlab/xo.py")
        shutil.copytree(HERE / "scenarios", self.root / "usr/lib/xenlab/scenarios",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        self.write("etc/passwd", "root:x:0:0:root:/root:/bin/sh\ntcpdump:x:100:100::/:/bin/false\n")
        self.write("etc/group", "root:x:0:\ntcpdump:x:100:\n")



def write_newc(root: Path, out: Path) -> int:
    """Write ``root`` as an uncompressed newc cpio archive (owner root); return its size."""
    inode = 1

    def header(f: BinaryIO, name: str, mode: int, size: int, nlink: int, mtime: int,
               rdev: tuple[int, int] = (0, 0)) -> None:
        nonlocal inode
        fields = (inode, mode, 0, 0, nlink, mtime, size, 0, 0, *rdev, len(name) + 1, 0)
        inode += 1
        f.write(b"070701" + b"".join(b"%08X" % v for v in fields))
        f.write(name.encode() + b"\x00")
        f.write(b"\x00" * (-(110 + len(name) + 1) % 4))

    def entries() -> Iterator[Path]:
        yield from sorted(root.rglob("*"))

    with out.open("wb") as f:
        for path in entries():
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            mtime = int(st.st_mtime)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path).encode()
                header(f, rel, st.st_mode, len(target), 1, mtime)
                f.write(target + b"\x00" * (-len(target) % 4))
            elif stat.S_ISDIR(st.st_mode):
                header(f, rel, st.st_mode, 0, 2, mtime)
                if rel == "dev":  # init's stdout before devtmpfs is mounted
                    header(f, "dev/console", stat.S_IFCHR | 0o600, 0, 1, mtime, (5, 1))
            elif stat.S_ISREG(st.st_mode):
                header(f, rel, st.st_mode, st.st_size, 1, mtime)
                with path.open("rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
                f.write(b"\x00" * (-st.st_size % 4))
        header(f, "TRAILER!!!", 0, 0, 1, 0)
        f.write(b"\x00" * (-f.tell() % 512))
        return f.tell()


_TRACER = r"""
import importlib, json, pkgutil, sys
site, names, packages = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
sys.path.append(site)
failed = {}
def attempt(name):
    try:
        importlib.import_module(name)
    except BaseException as exc:
        failed[name] = type(exc).__name__ + ": " + str(exc)[:120]
for name in names:
    attempt(name)
for pkg in packages:
    attempt(pkg)
    mod = sys.modules.get(pkg)
    for info in pkgutil.walk_packages(getattr(mod, "__path__", []), pkg + ".",
                                      onerror=lambda n: None):
        if not info.name.endswith("._server"):
            attempt(info.name)
files = sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())})
print(json.dumps({"files": [f for f in files if f], "failed": failed}))
"""


def top_level_imports(paths: Iterable[Path]) -> set[str]:
    """Return the top-level module names imported anywhere (even lazily) in these sources."""
    names: set[str] = set()
    for path in paths:
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def build_python(py_root: Path, wheels: Sequence[Path], dest: Path) -> dict[str, Any]:
    """Build /usr of a minimal Python: Debian's python3.11, the stdlib modules the package and the
    lab helper import (closure traced by running that interpreter), xenoffload from the working
    tree and its dependencies in dist-packages, all precompiled. Returns facts about it."""
    if dest.exists():
        shutil.rmtree(dest)
    site = dest / "usr/lib/python3/dist-packages"
    site.mkdir(parents=True)
    for wheel in wheels:  # pure-Python wheels: installing is unzipping (no pip, no compile)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    (site / "pyxs" / "_server.py").unlink(missing_ok=True)  # imports gevent; never used
    shutil.copytree(REPO / "xenoffload", site / "xenoffload",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    packages = sorted(p.name for p in site.iterdir() if (p / "__init__.py").exists())
    wanted = set(STDLIB_BASE) | top_level_imports([*site.rglob("*.py"), HERE / "images/xo.py"])
    wanted -= set(packages)
    python = py_root / f"usr/bin/python{PY}"
    out = sh([python, "-E", "-c", _TRACER, site, json.dumps(sorted(wanted)),
              json.dumps(packages)], timeout=300)
    traced = json.loads(out)
    stdlib = py_root / f"usr/lib/python{PY}"
    copied = 0
    for name in traced["files"]:
        src = Path(name)
        if src.is_relative_to(stdlib) and src.exists():
            target = dest / "usr/lib" / f"python{PY}" / src.relative_to(stdlib)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            copied += 1
    # site.py's Debian dist-packages lookup needs nothing else; os.py is the prefix landmark.
    (dest / "usr/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(python, dest / f"usr/bin/python{PY}")
    (dest / "usr/bin/python3").symlink_to(f"python{PY}")
    sh([python, "-E", "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
        "-s", dest, "-p", "/", dest / f"usr/lib/python{PY}", site], timeout=600)
    check = ("import asyncio, argparse, logging, json, socket, ctypes, struct, tomllib, "
             "selectors, subprocess, attrs, pyxs, xenoffload; print(xenoffload.__file__)")
    where = sh([dest / f"usr/bin/python{PY}", "-E", "-c", check], timeout=120, cwd=dest).strip()
    if not where.startswith(str(site)):
        raise LabError(f"stripped python imported xenoffload from {where}, not the image")
    stdlib_missing = {k: v for k, v in traced["failed"].items()
                      if not k.startswith(tuple(packages))}
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file() and not p.is_symlink())
    return {"stdlib_files": copied, "bytes": size, "packages": packages,
            "not_importable": stdlib_missing}


class Builder:
    """Builds the guest and dom0 initramfs images of one lab run."""

    def __init__(self, workdir: Path, xen_root: Path, py_root: Path, kernel: str,
                 deadline: int) -> None:
        self.workdir = workdir
        self.xen_root = xen_root
        self.py_root = py_root
        self.kernel = kernel
        self.deadline = deadline
        self.modroot = xen_root / "lib/modules" / kernel.removeprefix("linux-image-")
        self.facts: dict[str, Any] = {}

    def common(self, image: Image, pytree: Path) -> None:
        """Busybox, python, real tools every domain needs."""
        image.busybox()
        shutil.copytree(pytree / "usr", image.root / "usr", symlinks=True, dirs_exist_ok=True)
        image.binaries.append(image.root / f"usr/bin/python{PY}")
        image.binaries.extend((image.root / f"usr/lib/python{PY}/lib-dynload").glob("*.so"))
        for host, dest in (("/sbin/ip", "usr/sbin/ip"), ("/sbin/tc", "usr/sbin/tc"),
                           ("/usr/sbin/ethtool", "usr/sbin/ethtool"),
                           ("/usr/bin/tcpdump", "usr/bin/tcpdump")):
            image.copy(Path(os.path.realpath(host)), dest, binary=True)
        for tool in XENSTORE_TOOLS:
            image.copy(self.xen_root / "usr/bin" / tool, f"usr/bin/{tool}", binary=True)

    def guest(self, pytree: Path) -> Path:
        """Build the guest image; return its cpio path."""
        image = Image(self.workdir / "guest-root")
        self.common(image, pytree)
        image.modules(self.modroot, GUEST_MODULES)
        image.lab_files("guest-init")
        # What the kernel runs for xl shutdown / xl reboot (orderly_poweroff/_reboot; without
        # them poweroff never happens): stop the services (the guest agent), then go.
        for name, how in (("poweroff", "poweroff"), ("reboot", "reboot")):
            image.write(f"sbin/{name}", GUEST_SHUTDOWN.format(how=how), mode=0o755)
        image.libraries([self.xen_root / f"usr/lib/{MULTIARCH}"])
        out = self.workdir / "guest.cpio"
        self.facts["guest_cpio_bytes"] = write_newc(image.root, out)
        return out

    def dom0(self, pytree: Path, guest_cpio: Path, vmlinux: Path,
             extra: Callable[[Image], None] | None = None) -> Path:
        """Build the dom0 image (holding the guest's kernel and image); return its cpio path.
        ``extra`` adds to it before the libraries are copied (the systemd boot)."""
        image = Image(self.workdir / "dom0-root")
        self.common(image, pytree)
        image.copy(Path("/bin/bash"), "bin/bash", binary=True)
        image.copy(self._find("sbin/brctl"), "usr/sbin/brctl", binary=True)
        for daemon in XEN_DAEMONS:
            image.copy(self.xen_root / f"usr/lib/xen-{XEN}/bin" / daemon,
                       f"usr/lib/xen-{XEN}/bin/{daemon}", binary=True)
        shutil.copytree(self.xen_root / "etc/xen/scripts", image.root / "etc/xen/scripts",
                        symlinks=True)
        image.copy(self.xen_root / "etc/xen/xl.conf", "etc/xen/xl.conf")
        for d in ("var/lib/xen", "var/log/xen/console", "var/lock"):
            image.path(d + "/.keep").touch()
        image.modules(self.modroot, DOM0_MODULES)
        image.lab_files("dom0-init")
        if extra is not None:
            extra(image)
        image.libraries([self.xen_root / f"usr/lib/{MULTIARCH}"])
        image.copy(vmlinux, "boot/guest-vmlinux")
        image.copy(guest_cpio, "boot/guest.cpio")
        image.write("etc/xen/xenlab-guest.cfg", self.guest_cfg())
        # Scenario 10's network driver domain: its image and its config (driver_domain=1).
        image.copy(self.netdd(pytree), "boot/netdd.cpio")
        image.write("etc/xen/xenlab-netdd.cfg", self.netdd_cfg())
        # Scenario 8 creates the guest again from this one: both vifs hotplugged by
        # xenoffload's wrapper, the private one named by vifname=.
        image.write("etc/xen/xenlab-guest-xo.cfg", self.guest_cfg(
            ("script=vif-bridge-xenoffload", "script=vif-bridge-xenoffload,vifname=xo-priv")))
        out = self.workdir / "dom0.cpio"
        self.facts["dom0_cpio_bytes"] = write_newc(image.root, out)
        return out

    def netdd(self, pytree: Path) -> Path:
        """Build the network driver domain's image (scenario 10): dom0's Xen tools minus the
        daemons only dom0 runs (xl for `xl devd`, the stock hotplug scripts under bash, brctl),
        netback, python and xenoffload; return its cpio path."""
        image = Image(self.workdir / "netdd-root")
        self.common(image, pytree)
        image.copy(Path("/bin/bash"), "bin/bash", binary=True)
        image.copy(self._find("sbin/brctl"), "usr/sbin/brctl", binary=True)
        image.copy(self.xen_root / f"usr/lib/xen-{XEN}/bin/xl", f"usr/lib/xen-{XEN}/bin/xl",
                   binary=True)
        shutil.copytree(self.xen_root / "etc/xen/scripts", image.root / "etc/xen/scripts",
                        symlinks=True)
        image.copy(self.xen_root / "etc/xen/xl.conf", "etc/xen/xl.conf")
        for d in ("var/lib/xen", "var/log/xen", "var/lock"):
            image.path(d + "/.keep").touch()
        image.modules(self.modroot, NETDD_MODULES)
        image.lab_files("netdd-init")
        for name, how in (("poweroff", "poweroff"), ("reboot", "reboot")):
            image.write(f"sbin/{name}", NETDD_SHUTDOWN.format(how=how), mode=0o755)
        image.libraries([self.xen_root / f"usr/lib/{MULTIARCH}"])
        out = self.workdir / "netdd.cpio"
        self.facts["netdd_cpio_bytes"] = write_newc(image.root, out)
        return out

    def netdd_cfg(self) -> str:
        """Return the xl configuration of the network driver domain: PV, 1 vCPU, 256 MiB,
        ``driver_domain=1``, no vif of its own (it serves the guest's)."""
        return (f'name = "{NETDD_NAME}"\ntype = "pv"\nkernel = "/boot/guest-vmlinux"\n'
                f'ramdisk = "/boot/netdd.cpio"\n'
                f'extra = "console=hvc0 rdinit=/init quiet xo_deadline={self.deadline}"\n'
                "memory = 256\nvcpus = 1\ndriver_domain = 1\n"
                'on_crash = "preserve"\non_poweroff = "destroy"\non_reboot = "restart"\n')

    def guest_cfg(self, vifs: Sequence[str] = ("script=vif-bridge", "script=vif-bridge")) -> str:
        """Return an xl configuration of the guest: PV, 1 vCPU, 256 MiB, a vif on xenbr0 and
        one on xenpriv0, each with its extra ``vifs`` options (hotplug script, vifname...)."""
        specs = ", ".join(
            f"'mac=00:16:3e:58:4f:0{n},bridge={br},{extra}'"
            for n, (br, extra) in enumerate(zip(("xenbr0", "xenpriv0"), vifs, strict=True)))
        return (f'name = "{GUEST_NAME}"\ntype = "pv"\nkernel = "/boot/guest-vmlinux"\n'
                f'ramdisk = "/boot/guest.cpio"\n'
                f'extra = "console=hvc0 rdinit=/init quiet xo_deadline={self.deadline}"\n'
                f"memory = 256\nvcpus = 1\nvif = [ {specs} ]\n"
                'on_crash = "preserve"\non_poweroff = "destroy"\non_reboot = "restart"\n')

    def _find(self, rel: str) -> Path:
        for base in (self.xen_root, self.xen_root / "usr"):
            if (base / rel).exists():
                return base / rel
        raise LabError(f"{rel} not found in the extracted packages")


# ---------------------------------------------------------------------------------------- boot

def boot(workdir: Path, xen_elf: Path, vmlinux: Path, dom0_cpio: Path, scenarios: str,
         deadline: int, timeout: float, init: str = "/init") -> dict[str, Any]:
    """Boot Xen + dom0 under QEMU/TCG until it powers off or ``timeout`` passes (then kill it).

    Returns the QEMU facts and the host wall time (seconds since QEMU started) at which each
    stage marker first appeared on the serial console.
    """
    serial = workdir / "serial.log"
    serial.unlink(missing_ok=True)
    for p in (xen_elf, vmlinux, dom0_cpio):
        if "," in str(p):
            raise LabError(f"QEMU cannot take a path with a comma: {p}")
    xen_args = ("console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=2 "
                "bootscrub=0 loglvl=warning guest_loglvl=warning")
    scen = "+".join(s for s in re.split(r"[,+ ]+", scenarios) if s) or "all"
    if scen == "all":  # every scenario script but those booting on their own
        scen = "+".join(str(n) for n in sorted(
            int(m.group(1)) for m in (re.match(r"0*(\d+)-.*\.sh$", f.name)
                                      for f in (HERE / "scenarios").iterdir()) if m)
            if str(n) not in OWN_BOOT_SCENARIOS)
    dom0_args = (f"console=hvc0 earlyprintk=xen rdinit={init} loglevel=4 xo_scen={scen} "
                 f"xo_deadline={deadline}")
    cmd = ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "qemu64", "-m", "2048",
           "-smp", "2", "-nodefaults", "-no-user-config", "-display", "none", "-nic", "none",
           "-monitor", "none", "-no-reboot", "-serial", f"file:{serial}",
           "-kernel", str(xen_elf), "-append", xen_args,
           "-initrd", f"{vmlinux} {dom0_args},{dom0_cpio}"]
    (workdir / "qemu.cmd").write_text(" ".join(cmd) + "\n")
    started = time.monotonic()
    marks: dict[str, float] = {}
    with (workdir / "qemu.out").open("wb") as qout:
        proc = subprocess.Popen(cmd, stdout=qout, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_parent_death_signal())
        timed_out = False
        offset = 0
        pending = b""
        # QEMU never outlives this call: timeout, Ctrl-C, SIGTERM (tox, CI) or an exception all
        # end in _stop_qemu; SIGKILL of this process kills QEMU too (PR_SET_PDEATHSIG).
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_sigterm) if main else None
        try:
            while proc.poll() is None:
                if time.monotonic() - started > timeout:
                    timed_out = True
                    log(f"timeout after {timeout:.0f}s: killing QEMU (pid {proc.pid})")
                    break
                time.sleep(0.25)
                offset, pending = _scan_stages(serial, offset, pending, marks, started)
        finally:
            _stop_qemu(proc)
            if main:
                signal.signal(signal.SIGTERM, previous)
        _scan_stages(serial, offset, pending, marks, started)
    total = time.monotonic() - started
    maxrss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024  # largest child
    return {"rc": proc.returncode, "timed_out": timed_out, "secs": round(total, 2),
            "maxrss_mb": maxrss_mb,
            "marks": {k: round(v, 2) for k, v in marks.items()}, "cmd": cmd}


def _parent_death_signal() -> Callable[[], None]:
    """Return a preexec_fn making the child SIGKILLed when this process dies (Linux
    PR_SET_PDEATHSIG); libc is loaded here, in the parent, not between fork and exec."""
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1

    return preexec


def _raise_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(f"xenlab: signal {signum} while QEMU ran")


def _stop_qemu(proc: subprocess.Popen[bytes]) -> None:
    """Terminate QEMU's process group if it still runs (TERM, then KILL); reap it."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait(10)


def _scan_stages(serial: Path, offset: int, pending: bytes, marks: dict[str, float],
                 started: float) -> tuple[int, bytes]:
    """Read new serial output; record when each stage marker first shows up."""
    try:
        with serial.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return offset, pending
    data = pending + chunk
    lines = data.split(b"\n")
    for line in lines[:-1]:
        if line.startswith(b'@@XO {"stage":'):
            try:
                stage = json.loads(line[5:].decode(errors="replace").strip())["stage"]
            except (ValueError, KeyError):
                continue
            marks.setdefault(stage, time.monotonic() - started)
    return offset + len(chunk), lines[-1]


# --------------------------------------------------------------------------------------- parse

def parse_serial(text: str) -> dict[str, Any]:
    """Split the serial console into facts, stage records, guest console lines and the trace."""
    facts: list[dict[str, Any]] = []
    stages: dict[str, float] = {}
    bad: list[str] = []
    guest: list[str] = []
    trace_b64: list[str] = []
    in_trace = False
    for raw in text.replace("\r", "").split("\n"):
        line = raw.rstrip()
        if line == "@@TRACE BEGIN":
            in_trace, trace_b64 = True, []
        elif line == "@@TRACE END":
            in_trace = False
        elif in_trace:
            trace_b64.append(line.strip())
        elif line.startswith("@@XO "):
            try:
                record = json.loads(line[5:])
            except ValueError:
                bad.append(line[:300])
                continue
            if "stage" in record and "fact" not in record:
                stages.setdefault(record["stage"], record.get("uptime", -1))
            else:
                facts.append(record)
        elif line.startswith("@@G "):
            guest.append(line[4:])
    trace = ""
    if trace_b64:
        try:
            trace = gzip.decompress(base64.b64decode("".join(trace_b64))).decode(errors="replace")
        except (ValueError, OSError, EOFError, zlib.error) as exc:
            bad.append(f"trace undecodable: {exc}")
    return {"facts": facts, "stages": stages, "unparsed": bad, "guest_console": guest,
            "trace": trace}


def scenario_secs(facts: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Return each scenario's duration (dom0 uptime from scenario-begin to scenario-end)."""
    begin: dict[str, float] = {}
    secs: dict[str, float] = {}
    for fact in facts:
        try:
            uptime = float(fact.get("uptime", ""))
        except ValueError:
            continue
        if fact.get("fact") == "scenario-begin":
            begin[fact["scenario"]] = uptime
        elif fact.get("fact") == "scenario-end" and fact.get("scenario") in begin:
            secs[fact["scenario"]] = round(uptime - begin[fact["scenario"]], 2)
    return secs


#: Scenario 3's modes of dom0-sent traffic (the report's first table).
S3_MODES = ("on", "off", "off+gro")
#: Probe traffic (scenarios 7 and 8, probes.sh): (name, base port) per direction and network.
PROBE_FLOWS = (("to-guest public", "10.0.0.2", 6000), ("to-guest private", "10.1.0.2", 6001),
               ("from-guest public", "10.0.0.9", 6100), ("from-guest private", "10.1.0.1", 6101))


def csum_table(facts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the packet counts of scenario 3 and 6 (guest-sent rounds) as rows (scenario,
    mode, capture point, destination, proto, verdict counts)."""
    rows = []
    for fact in facts:
        if fact.get("fact") != "csum-capture" or str(fact.get("mode", "")).startswith("probe-"):
            continue
        for dst, protos in sorted(fact.get("counts", {}).items()):
            for proto, c in sorted(protos.items()):
                rows.append({"scenario": fact["scenario"], "mode": fact["mode"],
                             "point": fact["point"], "dst": dst, "proto": proto, **c})
    return rows


def probe_table(facts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the probes of scenarios 7 and 8 as rows: per step (scenario, number, label),
    direction and network, proto: the verdict counts of the captures (counted per destination
    port; the guest's captures for to-guest, dom0's for from-guest)."""
    counts: dict[tuple[str, str], dict[str, dict[str, int]]] = {}
    for fact in facts:
        if fact.get("fact") == "csum-capture" and str(fact.get("mode", "")).startswith("probe-"):
            for key, protos in fact.get("counts", {}).items():
                counts[(fact["scenario"], key)] = protos
    rows = []
    for fact in facts:
        if fact.get("fact") != "probe-step":
            continue
        step = int(fact["step"])
        for flow, dst, base in PROBE_FLOWS:
            for proto, offset in (("tcp", 0), ("udp", 2)):
                c = counts.get((fact["scenario"], f"{dst}:{base + offset + 4 * step}"), {}).get(
                    proto, {"correct": 0, "incorrect": 0, "unverified": 0, "large": 0,
                            "incorrect_large": 0})
                rows.append({"scenario": fact["scenario"], "step": step, "label": fact["label"],
                             "flow": flow, "proto": proto, **c})
    return rows


#: Scenario 10's packets (driver domain <-> guest): (flow, capture point, destination, base
#: port of TCP; UDP is base + 2), step K on base + 4K.
DD_FLOWS = (("to-guest", "tg", "10.3.0.2", 7000), ("from-guest", "fg", "10.3.0.1", 7100))


def dd_table(facts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return scenario 10's packets as rows: per step (number, label), flow and proto, the
    verdict counts (to-guest captured in the guest, from-guest in the driver domain)."""
    counts: dict[tuple[str, str], dict[str, dict[str, int]]] = {}
    for fact in facts:
        if fact.get("fact") == "csum-capture" and str(fact.get("mode", "")).startswith(
                "probe-dd-"):
            for key, protos in fact.get("counts", {}).items():
                counts[(fact["point"], key)] = protos
    rows = []
    for fact in facts:
        if fact.get("fact") != "dd-step":
            continue
        step = int(fact["step"])
        for flow, point, dst, base in DD_FLOWS:
            for proto, offset in (("tcp", 0), ("udp", 2)):
                c = counts.get((point, f"{dst}:{base + offset + 4 * step}"), {}).get(
                    proto, {"correct": 0, "incorrect": 0, "unverified": 0, "large": 0,
                            "incorrect_large": 0})
                rows.append({"scenario": fact["scenario"], "step": step, "label": fact["label"],
                             "flow": flow, "proto": proto, **c})
    return rows


#: A text table's column: header, width, and how to get the cell from a row.
Column = tuple[str, int, Callable[[dict[str, Any]], object]]


def render_rows(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """Render rows as a fixed-width text table (text left-aligned, numbers right-aligned)."""
    def cell(value: object, width: int) -> str:
        return f"{value:>{width}}" if isinstance(value, int) else f"{value!s:<{width}}"

    numeric = [bool(rows) and isinstance(get(rows[0]), int) for _head, _width, get in columns]
    lines = ["".join(f"{head:>{width}}" if right else f"{head:<{width}}"
                     for (head, width, _get), right in zip(columns, numeric, strict=True))]
    for row in rows:
        lines.append("".join(cell(get(row), width) for _head, width, get in columns))
    return "\n".join(lines)


def _key(name: str, default: object = 0) -> Callable[[dict[str, Any]], object]:
    return lambda row: row.get(name, default)


VERDICTS: list[Column] = [("correct", 8, _key("correct")), ("incorrect", 10, _key("incorrect"))]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Render scenario 3's checksum evidence rows as a text table."""
    return render_rows(rows, [("vif tx csum", 12, _key("mode")), ("captured on", 12, _key("point")),
                              ("dst", 11, _key("dst")), ("proto", 6, _key("proto")), *VERDICTS,
                              ("unverified", 11, _key("unverified"))])


def format_guest_tx(rows: Sequence[dict[str, Any]]) -> str:
    """Render the guest-sent rounds (scenario 3 "guest-tx", scenario 6) as a text table."""
    return render_rows(rows, [("scen step", 15, lambda r: f"{r['scenario']} {r['mode']}"),
                              ("captured on", 12, _key("point")), ("dst", 11, _key("dst")),
                              ("proto", 6, _key("proto")), *VERDICTS,
                              ("of them >MTU", 13, _key("incorrect_large"))])


def format_dd(rows: Sequence[dict[str, Any]]) -> str:
    """Render scenario 10's packet rows as a text table."""
    return render_rows(rows, [("step", 16, lambda r: f"{r['step']} {r['label']}"),
                              ("flow", 12, _key("flow")), ("proto", 6, _key("proto")),
                              *VERDICTS])


def format_probes(rows: Sequence[dict[str, Any]]) -> str:
    """Render the probe rows as a text table."""
    return render_rows(rows, [("scen step", 20, lambda r: f"{r['scenario']} {r['step']} "
                                                           f"{r['label']}"),
                              ("flow", 19, _key("flow")), ("proto", 6, _key("proto")),
                              *VERDICTS,
                              ("of them >MTU", 13, _key("incorrect_large"))])


# ----------------------------------------------------------------------------------------- run

def run_lab(workdir: Path, cache: Path = DEFAULT_CACHE, scenarios: str = "all",
            timeout: float = DEFAULT_TIMEOUT, init: str = "sh") -> dict[str, Any]:
    """Fetch, build, boot and parse one lab run; return the report (also in workdir).
    ``init="systemd"``: dom0 boots with systemd as PID 1 (systemd_image.py, scenario 9)."""
    if os.geteuid() != 0:
        raise LabError("the Xen lab needs root (apt-get, dpkg, QEMU images)")
    t0 = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    wall: dict[str, float] = {}
    report: dict[str, Any] = {"workdir": str(workdir), "scenarios": scenarios, "init": init,
                              "errors": []}

    log("fetch: host tools, Debian packages, wheels")
    fetcher = Fetcher(cache)
    fetcher.ensure_host_packages()
    kernel = fetcher.kernel_package()
    sd_debs: tuple[str, ...] = ()
    if init == "systemd":
        import systemd_image  # beside this file
        sd_debs = systemd_image.SYSTEMD_DEBS
    debs = fetcher.download([*XEN_DEBS, kernel, *PY_DEBS, *sd_debs])
    xen_root = fetcher.extract("xen", [debs[p] for p in (*XEN_DEBS, kernel)])
    py_root = fetcher.extract("python", [debs[p] for p in PY_DEBS])
    wheels = fetcher.wheels()
    kver = kernel.removeprefix("linux-image-")
    vmlinux = cache / "kernels" / f"vmlinux-{kver}"
    if not vmlinux.exists():
        vmlinux.parent.mkdir(parents=True, exist_ok=True)
        extract_vmlinux(xen_root / f"boot/vmlinuz-{kver}", vmlinux.with_suffix(".tmp"))
        vmlinux.with_suffix(".tmp").rename(vmlinux)
    xen_elf = cache / "kernels" / f"xen-{XEN}.elf"
    xen_gz = xen_root / f"boot/xen-{XEN}-amd64.gz"
    if not xen_elf.exists() or xen_elf.stat().st_mtime < xen_gz.stat().st_mtime:
        xen_elf.write_bytes(gzip.decompress(xen_gz.read_bytes()))
    report["versions"] = {"kernel": kver, "debs": sorted(p.name for p in debs.values()),
                          "wheels": [w.name for w in wheels]}
    wall["fetch"] = time.monotonic() - t0

    t1 = time.monotonic()
    log("build: python tree, guest and dom0 images")
    deadline = max(60, int(timeout) - 45)
    builder = Builder(workdir, xen_root, py_root, kernel, deadline)
    pytree = workdir / "python-tree"
    report["python"] = build_python(py_root, wheels, pytree)
    guest_cpio = builder.guest(pytree)
    extra: Callable[[Image], None] | None = None
    if init == "systemd":
        sd_root = fetcher.extract("systemd", [debs[p] for p in sd_debs])
        own = systemd_image.build_wheel(REPO, workdir / "wheels")
        report["python_systemd"] = systemd_image.python_tree(pytree, py_root, sd_root,
                                                             workdir / "python-tree-sd", PY)
        pytree = workdir / "python-tree-sd"
        extra = functools.partial(systemd_image.install, sd_root=sd_root,
                                  wheel_files=[own, *wheels])
    dom0_cpio = builder.dom0(pytree, guest_cpio, vmlinux, extra)
    report["images"] = {**builder.facts, "python_tree_bytes": report["python"]["bytes"],
                        "vmlinux_bytes": vmlinux.stat().st_size}
    wall["build"] = time.monotonic() - t1

    log(f"boot: Xen + dom0 under QEMU/TCG (timeout {timeout:.0f}s)")
    qemu = boot(workdir, xen_elf, vmlinux, dom0_cpio, scenarios, deadline, timeout,
                "/lib/systemd/systemd" if init == "systemd" else "/init")
    report["qemu"] = qemu
    marks = qemu["marks"]

    def since(a: str | None, b: str) -> float | None:
        if b not in marks:
            return None
        return round(marks[b] - (marks[a] if a else 0.0), 2) if (a is None or a in marks) else None

    wall["boot_to_dom0"] = since(None, "dom0-up") or -1
    wall["guest_connected"] = since("dom0-up", "guest-connected") or -1
    wall["scenarios"] = since("guest-connected", "scenarios-done") or -1
    wall["shutdown"] = (round(qemu["secs"] - marks["scenarios-done"], 2)
                        if "scenarios-done" in marks else -1)
    wall["qemu"] = qemu["secs"]

    parsed = parse_serial((workdir / "serial.log").read_text(errors="replace"))
    trace_path = workdir / "xenstored.trace"
    trace_path.write_text(parsed["trace"])
    (workdir / "guest-console.log").write_text("\n".join(parsed["guest_console"]) + "\n")
    report.update(facts=parsed["facts"], vm_stages=parsed["stages"], unparsed=parsed["unparsed"],
                  trace=str(trace_path), trace_lines=parsed["trace"].count("\n"),
                  serial=str(workdir / "serial.log"), csum_table=csum_table(parsed["facts"]),
                  probe_table=probe_table(parsed["facts"]))
    if qemu["timed_out"]:
        report["errors"].append(f"QEMU killed after the {timeout:.0f}s timeout")
    if "poweroff" not in parsed["stages"]:
        report["errors"].append("the VM did not reach its poweroff stage")
    if any(f.get("fact") == "watchdog" for f in parsed["facts"]):
        report["errors"].append("dom0's watchdog fired (a scenario hung)")
    if not parsed["trace"]:
        report["errors"].append("no xenstored trace in the console")
    report["scenario_secs"] = scenario_secs(parsed["facts"])
    wall["total"] = time.monotonic() - t0
    report["wall"] = {k: round(v, 2) for k, v in wall.items()}
    report["ok"] = not report["errors"]
    (workdir / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    return report


def summary(report: dict[str, Any]) -> str:
    """Return the human summary of a report: stage wall times and scenario 3's table."""
    w = report.get("wall", {})
    lines = ["xenlab wall times (s): " + ", ".join(f"{k} {v}" for k, v in w.items())]
    if report.get("scenario_secs"):
        lines.append("scenario times (s, dom0 uptime): " + ", ".join(
            f"{k} {v}" for k, v in sorted(report["scenario_secs"].items(), key=lambda i: int(i[0])
                                          if i[0].isdigit() else 0)))
    if "qemu" in report:
        lines.append(f"QEMU peak RSS: {report['qemu'].get('maxrss_mb', '?')} MiB")
    rows = report.get("csum_table", [])
    dom0_sent = [r for r in rows if r["scenario"] == "3" and r["mode"] in S3_MODES]
    guest_sent = [r for r in rows if r not in dom0_sent]
    if dom0_sent:
        lines += ["scenario 3 packet evidence (TCP/UDP checksums seen by the guest's tcpdump):",
                  format_table(dom0_sent)]
    if guest_sent:
        lines += ["guest-sent TCP/UDP (scenario 3 guest-tx: nothing of xenoffload; scenario 6: "
                  "tc steps), checksums as captured:", format_guest_tx(guest_sent)]
    if report.get("probe_table"):
        lines += ["probes of scenarios 7 and 8 (to-guest counted in the guest, from-guest in "
                  "dom0):", format_probes(report["probe_table"])]
    for fact in report.get("facts", []):
        if fact.get("fact") == "timeline":
            since = ", ".join(f"{fact[f'first_correct_after_{mark}']} s after {mark}"
                              for mark in ("cmd", "write", "done")
                              if f"first_correct_after_{mark}" in fact)
            lines.append(f"revocation {fact['label']} at {fact['point']}: first complete "
                         f"checksum {since} (stream: {fact.get('incorrect')} blank, "
                         f"{fact.get('correct')} complete)")
    if report.get("errors"):
        lines.append("errors: " + "; ".join(report["errors"]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``run`` (fetch, build, boot, report) or ``parse`` (re-read a serial log)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="fetch, build, boot, report")
    run_p.add_argument("--workdir", type=Path, required=True)
    run_p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    run_p.add_argument("--scenario", default="all", help="all or a list like 1,3")
    run_p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    run_p.add_argument("--json", type=Path, help="also write the report here")
    run_p.add_argument("--save-trace", type=Path, help="copy the xenstored trace here")
    run_p.add_argument("--init", choices=("sh", "systemd"), default="sh",
                       help="dom0's PID 1: the lab's /init, or systemd (scenario 9)")
    parse_p = sub.add_parser("parse", help="print the facts of an existing serial log")
    parse_p.add_argument("serial", type=Path)
    args = parser.parse_args(argv)
    if args.command == "parse":
        parsed = parse_serial(args.serial.read_text(errors="replace"))
        parsed["trace"] = f"<{parsed['trace'].count(chr(10))} lines>"
        print(json.dumps(parsed, indent=1))
        return 0
    try:
        report = run_lab(args.workdir, args.cache, args.scenario, args.timeout, args.init)
    except LabError as exc:
        log(f"error: {exc}")
        return 2
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, sort_keys=True))
    if args.save_trace:
        shutil.copyfile(report["trace"], args.save_trace)
    print(summary(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
