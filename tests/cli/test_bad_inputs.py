"""Every bad input and every outcome that must not pass for success, through the real command:
a documented exit code, one line on stderr, never a traceback (docs/cli.md, "Exit codes").
One row per input; ``{sock}`` is a live embedded xenstored with guest 1 (``guest1``, vifs 0 on
xenbr0 and 1 on xenpriv0) laid out as libxl does, ``{guest1}`` its guest socket, ``{tmp}`` the
test's directory. A row's optional :class:`Expect` says more: what stdout holds, what the
store must (not) hold afterwards, a setup (e.g. a driver domain 4 whose guest 6 runs an
agent, so that ``--once`` connects), the environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
import pytest
from e2e.lab import Lab, wait_until

from xenoffload.cli import (
    EXIT_BUSY,
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_NOT_ENFORCED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_OUTCOME,
    EXIT_PIPE,
    EXIT_UNSEEN,
    EXIT_USAGE,
    EXIT_XENSTORE,
)

NOT_UTF8 = b"[default]\nto-guest = true # caf\xe9\n"
BAD_SELECTORS = {
    "mac-dashes": 'mac = "00-16-3e-aa-bb-01"\nto-guest = true',
    "mac-zz": 'mac = "zz"\nto-guest = true',
    "domid-negative": "domid = -1\nto-guest = true",
    "domid-20-digits": "domid = 12345678901234567890\nto-guest = true",
    "no-direction": 'bridge = "xenpriv0"',
}
#: PYTHONPATH of the start-up row: its sitecustomize holds start-up until the SIGINT.
STARTUP_PROBE = Path(__file__).parent / "startup_probe"

NESTED = b"[default]\nto-guest = " + b"[" * 2000 + b"]" * 2000 + b"\n"



@attrs.frozen
class Expect:
    """More than the one stderr line: ``stdout`` a fragment of the standard output;
    ``one_line`` False when the command may log more than one line (the fragment is then
    looked for in stdout and stderr); ``setup`` run on the lab first; ``check`` run on the
    lab after; ``env`` added to the environment; ``stdin`` fed to the command."""

    stdout: str | None = None
    one_line: bool | None = True  # None: nothing at all on stderr
    setup: Callable[[Lab], None] | None = None
    check: Callable[[Lab], None] | None = None
    env: Mapping[str, str] = attrs.field(factory=dict)
    stdin: str | None = None
    #: SIGINT once this holds of (lab, test directory)
    interrupt: Callable[[Lab, Path], bool] | None = None
    #: the command's stdout piped into this shell command (``head -1``)
    pipe_to: str | None = None


def driver_domain_with_a_running_guest(lab: Lab) -> None:
    """Driver domain 4 (``driver4``) serves guest 6's vif 0 on xenpriv0; a guest agent runs
    for guest 6 (over the privileged socket), so a backend ``--once --domid 4`` connects."""
    from xenoffload.policy import builtin_policy
    from xenoffload.schema import Role
    from xenoffload.store.pyxs_store import connect_store
    from xenoffload.toggles.simulated import SimulatedKernel, profile_for_name
    from xenoffload.toolstack import VifSpec, create_domain, create_vif

    create_domain(lab.toolstack, 4, "driver4")
    create_domain(lab.toolstack, 6, "guest6")
    create_vif(lab.toolstack, VifSpec(6, 0, "00:16:3e:00:06:00", "xenpriv0", backend_domid=4))
    lab.guest_agent(6, builtin_policy(Role.FRONTEND),
                    SimulatedKernel(auto_profile=profile_for_name),
                    factory=lambda: connect_store(lab.socket, timeout=2.0))


def _nothing_under(lab: Lab, path: str) -> None:
    assert lab.toolstack.try_read(path) is None, f"{path} was written"


def _dead_socket(path: Path) -> None:
    """A Unix socket nothing listens on (a xenstored that died)."""
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


def _lock_files(lab: Lab) -> list[Path]:
    from xenoffload.agentlock import EndKey, lock_dir
    from xenoffload.schema import Role

    return sorted(lock_dir().glob(f"{EndKey.of(Role.BACKEND, 0, lab.socket).stem}*"))


def _no_lock_files(lab: Lab) -> None:
    assert not _lock_files(lab)


def _no_status(lab: Lab) -> None:
    status = "/local/domain/0/backend/vif/1/0/xenoffload-csum-status"
    assert lab.toolstack.try_read(status) is None, "a status was published"


#: the hook for vif 1/0, its frontend Connected (the hook could act at once)
HOOK10 = Expect(env={"XENBUS_PATH": "backend/vif/1/0", "vif": "vif1.0"}, check=_no_status,
                setup=lambda lab: lab.toolstack.write(
                    "/local/domain/1/device/vif/0/state", b"4"))
DRIVER4 = Expect(setup=driver_domain_with_a_running_guest, one_line=False)
ONCE4 = ["backend-agent", "--once", "--mode", "full", "--no-config", "--domid", "4",
         "--settle", "1", "--xenstore", "{sock}"]


# (id, arguments, exit code, a fragment of the one line on stderr[, Expect])
ROWS: list[tuple[object, ...]] = [
    ("pattern unknown placeholder", ["backend-agent", "--device-pattern", "foo{{x}}"],
     EXIT_USAGE, "unknown placeholder 'x'"),
    ("pattern not a device name", ["backend-agent", "--device-pattern", "a/b"],
     EXIT_USAGE, "not a network device name"),
    ("pattern positional field", ["guest-agent", "--device-pattern", "eth{{}}"],
     EXIT_USAGE, "device pattern"),
    ("guest pattern with domid", ["guest-agent", "--device-pattern", "vif{{domid}}"],
     EXIT_USAGE, "unknown placeholder 'domid'"),
    ("negative domid", ["backend-agent", "--domid", "-1"], EXIT_USAGE, "not a domid"),
    ("reserved domid", ["guest-agent", "--domid", "32752"], EXIT_USAGE, "not a domid"),
    ("timeout nan", ["backend-agent", "--once", "--timeout", "nan"], EXIT_USAGE,
     "--timeout"),
    ("timeout negative", ["guest-agent", "--once", "--settle", "-1"], EXIT_USAGE, "--settle"),
    ("demo timeout inf", ["demo", "--timeout", "inf"], EXIT_USAGE, "--timeout"),
    # (a TMPDIR whose socket paths do not fit sun_path: the line names the socket)
    ("demo TMPDIR too long", ["demo", "--dry-run"], EXIT_OUTCOME,
     "/xenstored.sock: AF_UNIX path too long", Expect(env={"TMPDIR": "{tmp}/" + "d" * 100})),
    ("huge domid in set", ["set", "99999999999999999999999/0", "--tx", "on",
                           "--xenstore", "{sock}"], EXIT_USAGE, "not a domid"),
    ("huge devid in set", ["set", "1/99999999", "--tx", "on", "--xenstore", "{sock}"],
     EXIT_USAGE, "not a devid or MAC"),
    ("set without a target", ["set", "--tx", "on", "--xenstore", "{sock}"], EXIT_USAGE,
     "name exactly one of"),
    ("set vif and bridge", ["set", "1/0", "--bridge", "xenbr0", "--tx", "on",
                            "--xenstore", "{sock}"], EXIT_USAGE, "got DOMAIN/DEVICE, --bridge"),
    ("clear with tx", ["set", "1/0", "--clear", "--tx", "on", "--xenstore", "{sock}"],
     EXIT_USAGE, "takes no --tx"),
    ("ipv6 alone", ["set", "1/0", "--ipv6", "on", "--xenstore", "{sock}"], EXIT_USAGE,
     "give --tx and/or --rx"),
    ("set nothing", ["set", "1/0", "--xenstore", "{sock}"], EXIT_USAGE, "give --tx"),
    ("tx not on/off", ["set", "1/0", "--tx", "yes", "--xenstore", "{sock}"], EXIT_USAGE,
     "expected on or off"),
    ("bridge with slash", ["set", "--bridge", "a/b", "--tx", "on", "--xenstore", "{sock}"],
     EXIT_USAGE, "not a bridge name"),
    ("bridge too long", ["set", "--bridge", "b" * 16, "--tx", "on", "--xenstore", "{sock}"],
     EXIT_USAGE, "not a bridge name"),
    ("vif spec with bad device", ["show", "1/eth0", "--xenstore", "{sock}"], EXIT_USAGE,
     "not a devid or MAC"),
    ("set unknown domid", ["set", "99/0", "--tx", "on", "--xenstore", "{sock}"],
     EXIT_NOT_FOUND, "no vif 99/0"),
    ("set unknown devid", ["set", "1/9", "--tx", "on", "--xenstore", "{sock}"],
     EXIT_NOT_FOUND, "no vif 1/9"),
    ("set unknown name", ["set", "nosuch/0", "--tx", "on", "--xenstore", "{sock}"],
     EXIT_NOT_FOUND, "no domain named 'nosuch'"),
    ("set unknown MAC", ["set", "1/00:16:3e:99:99:99", "--tx", "on", "--xenstore", "{sock}"],
     EXIT_NOT_FOUND, "with MAC 00:16:3e:99:99:99"),
    ("clear a vif never set", ["set", "1/0", "--clear", "--xenstore", "{sock}"],
     EXIT_NOT_FOUND, "nothing to clear"),
    ("clear vif that does not exist", ["set", "5/5", "--clear", "--xenstore", "{sock}"],
     EXIT_NOT_FOUND, "no vif 5/5"),
    ("clear a bridge never set", ["set", "--bridge", "nosuch", "--clear",
                                  "--xenstore", "{sock}"], EXIT_NOT_FOUND, "nothing to clear"),
    ("show unknown name", ["show", "nosuch", "--xenstore", "{sock}"], EXIT_NOT_FOUND,
     "no domain named"),
    ("show unknown vif", ["show", "guest1/7", "--xenstore", "{sock}"], EXIT_NOT_FOUND,
     "no vif 1/7"),
    ("local outside a guest", ["set", "--local", "0", "--tx", "on", "--xenstore", "{sock}"],
     EXIT_NOT_FOUND, "has no vif 0"),
    ("no XenStore: show", ["show", "--xenstore", "{tmp}/none.sock"], EXIT_XENSTORE,
     "XenStore unavailable at"),
    ("no XenStore: set", ["set", "1/0", "--tx", "on", "--xenstore", "{tmp}/none.sock"],
     EXIT_XENSTORE, "XenStore unavailable at"),
    ("no XenStore: backend once", ["backend-agent", "--once", "--toggles", "none",
                                   "--no-config", "--xenstore", "{tmp}/none.sock"],
     EXIT_XENSTORE, "XenStore unavailable at"),
    ("no XenStore: guest once", ["guest-agent", "--once", "--toggles", "none", "--no-config",
                                 "--xenstore", "{tmp}/none.sock"], EXIT_XENSTORE,
     "XenStore unavailable at"),
    ("guest domid unreadable", ["guest-agent", "--once", "--toggles", "none", "--no-config",
                                "--xenstore", "{guest2}"], EXIT_USAGE, "pass --domid N"),
    ("policy file missing", ["backend-agent", "--once", "--config", "{tmp}/none.toml",
                             "--xenstore", "{sock}"], EXIT_CONFIG, "none.toml"),
    ("policy not UTF-8", ["backend-agent", "--once", "--config", "{tmp}/latin1.toml",
                          "--xenstore", "{sock}"], EXIT_CONFIG, "not UTF-8"),
    ("policy nested 2000 deep", ["guest-agent", "--once", "--config", "{tmp}/nested.toml",
                                 "--xenstore", "{guest1}"], EXIT_CONFIG, "nested too deeply"),
    ("policy unknown key", ["backend-agent", "--once", "--config", "{tmp}/unknown.toml",
                            "--xenstore", "{sock}"], EXIT_CONFIG, "unknown top-level keys"),
    ("config and no-config", ["backend-agent", "--config", "x", "--no-config"], EXIT_USAGE,
     "not allowed with"),
    ("junit in a missing directory", ["conformance", "--role", "backend", "--impl", "true",
                                      "--junit", "{tmp}/nodir/report.xml"], EXIT_USAGE,
     "does not exist"),
    ("unknown scenario", ["conformance", "--role", "backend", "--impl", "true",
                          "--scenario", "R99-nothing"], EXIT_USAGE, "unknown scenario"),
    ("units into a missing directory", ["units", "--output", "{tmp}/nodir"], EXIT_USAGE,
     "not a directory"),
    ("hotplug not a vif path", ["hotplug", "online", "--xenstore", "{sock}"], EXIT_USAGE,
     "not a vif backend path"),
    ("unknown command", ["frobnicate"], EXIT_USAGE, "invalid choice"),
    ("write refused by XenStore", ["set", "--local", "0", "--tx", "on", "--xenstore",
                                   "{guest3}"], EXIT_OUTCOME, "EACCES"),
    # 11. one line everywhere: the path once and what is wrong with it; huge arguments cut;
    # empty values and stray flags refused, not ignored
    ("11: XenStore is a regular file", ["show", "--xenstore", "{tmp}/latin1.toml"],
     EXIT_XENSTORE, "XenStore unavailable at {tmp}/latin1.toml: not a socket"),
    ("11: XenStore is a directory", ["show", "--xenstore", "{tmp}"], EXIT_XENSTORE,
     "XenStore unavailable at {tmp}: a directory, not a socket"),
    ("11: XenStore socket nobody listens on", ["show", "--xenstore", "{tmp}/dead.sock"],
     EXIT_XENSTORE, "XenStore unavailable at {tmp}/dead.sock: Connection refused",
     Expect(setup=lambda lab: _dead_socket(lab.tmp / "dead.sock"))),
    ("11: xenstored cannot bind", ["xenstored", "--socket", "{tmp}/nodir/xs.sock"], 1,
     "xenoffload: xenstored: cannot serve {tmp}/nodir/xs.sock: No such file or directory"),
    ("11: xenstored in the background cannot bind",
     ["xenstored", "--background", "--socket", "{tmp}/nodir/xs.sock"], 1,
     "xenoffload: xenstored: cannot serve {tmp}/nodir/xs.sock: No such file or directory"),
    ("11: huge domain name", ["show", "a" * 5000, "--xenstore", "{sock}"], EXIT_USAGE,
     "(5000 characters)"),
    ("11: empty --xenstore", ["show", "--xenstore", ""], EXIT_USAGE,
     "argument --xenstore: empty"),
    ("11: empty XENSTORED_PATH", ["show"], EXIT_USAGE, "XENSTORED_PATH is set but empty",
     Expect(env={"XENSTORED_PATH": ""})),
    ("11: empty XENSTORED_PATH, xenstored", ["xenstored"], EXIT_USAGE,
     "XENSTORED_PATH is set but empty", Expect(env={"XENSTORED_PATH": ""})),
    ("11: empty --socket", ["xenstored", "--socket", ""], EXIT_USAGE,
     "argument --socket: empty"),
    ("11: empty units --command", ["units", "--command", ""], EXIT_USAGE,
     "argument --command: empty"),
    ("11: newline in units --command", ["units", "--command", "/bin/true\nExecStartPre=/x"],
     EXIT_USAGE, "a control character"),
    *[(f"11: {flag} without --once", [agent, flag, *value, "--xenstore", "{sock}"],
       EXIT_USAGE, f"{flag} only with --once")
      for agent in ("backend-agent", "guest-agent")
      for flag, value in (("--json", []), ("--settle", ["1"]), ("--timeout", ["5"]))],
    ("11: unknown scenario lists the valid ones", ["conformance", "--role", "frontend",
                                                   "--impl", "true", "--scenario", "nosuch"],
     EXIT_USAGE, "the frontend scenarios are: "),
    ("11: empty --impl", ["conformance", "--role", "backend", "--impl", ""], EXIT_USAGE,
     "argument --impl: empty"),
    # 14. conformance: a run whose decisions could not all be seen has its own verdict and exit
    ("14: conformance, decisions not seen",
     ["conformance", "--role", "frontend", "--scenario", "R5-negotiates-offload", "--impl",
      f"{sys.executable} {Path(__file__).parents[1] / 'conformance' / 'mutants.py'} "
      "frontend publishes-no-result"], EXIT_UNSEEN, "VERDICT: passed-what-could-be-seen",
     Expect(one_line=False)),
    ("14: conformance, decisions not seen, required",
     ["conformance", "--role", "frontend", "--scenario", "R5-negotiates-offload", "--impl",
      f"{sys.executable} {Path(__file__).parents[1] / 'conformance' / 'mutants.py'} "
      "frontend publishes-no-result", "--require-observable"], EXIT_OUTCOME,
     "VERDICT: failed", Expect(one_line=False)),
    # 13. lock files are removed by their holders when done (none pile up in /run/xenoffload)
    ("13: once leaves no lock file", ["backend-agent", "--once", "--toggles", "none",
                                      "--no-config", "--settle", "0.2", "--xenstore", "{sock}"],
     EXIT_OUTCOME, "", Expect(one_line=False, check=lambda lab: _no_lock_files(lab))),
    ("13: hotplug offline leaves no lock file", ["hotplug", "offline", "--no-config",
                                                 "--xenstore", "{sock}"], EXIT_OK, "",
     Expect(one_line=False, env={"XENBUS_PATH": "backend/vif/1/0", "vif": "vif1.0"},
            check=lambda lab: _no_lock_files(lab))),
    ("13: hotplug online leaves no lock file once done",
     ["hotplug", "online", "--toggles", "dry-run", "--no-config", "--wait", "5",
      "--xenstore", "{sock}"], EXIT_OK, "",
     Expect(one_line=False, env={"XENBUS_PATH": "backend/vif/1/0", "vif": "vif1.0"},
            check=lambda lab: wait_until(lambda: not _lock_files(lab), 15,
                                         "the hook's background part done"))),
    # 1. hotplug online: what can be checked is, before the hook returns; no status before
    # the device did it
    ("1: hotplug online, log not writable", ["hotplug", "online", "--toggles", "dry-run",
                                             "--no-config", "--log", "{tmp}/nodir/hook.log",
                                             "--xenstore", "{sock}"], EXIT_USAGE,
     "hotplug: --log {tmp}/nodir/hook.log: No such file or directory", HOOK10),
    ("1: hotplug online, no such device", ["hotplug", "online", "--toggles", "netlink",
                                           "--no-config", "--device-pattern",
                                           "xo{{domid}}x{{devid}}",
                                           "--xenstore", "{sock}"], EXIT_NOT_FOUND,
     "hotplug: online vif 1/0: no device xo1x0", HOOK10),
    ("1: hotplug online, no XenStore", ["hotplug", "online", "--no-config",
                                        "--xenstore", "{tmp}/none.sock"], EXIT_XENSTORE,
     "hotplug: XenStore unavailable at {tmp}/none.sock", HOOK10),
    # 4. a domain that does not exist is not an empty success; set writes nothing for it
    ("4: guest once, unknown domid", ["guest-agent", "--once", "--toggles", "none",
                                      "--no-config", "--domid", "99", "--xenstore", "{sock}"],
     EXIT_NOT_FOUND, "no domain 99 (--domid)"),
    ("4: guest once, another guest's domid", ["guest-agent", "--once", "--toggles", "none",
                                              "--no-config", "--domid", "99",
                                              "--xenstore", "{guest1}"],
     EXIT_NOT_FOUND, "no domain 99 (--domid) seen from this connection"),
    ("4: backend once, unknown domid", ["backend-agent", "--once", "--toggles", "none",
                                        "--no-config", "--domid", "5", "--xenstore", "{sock}"],
     EXIT_NOT_FOUND, "no domain 5 (--domid)"),
    ("4: show, unknown backend domid", ["show", "--backend-domid", "5", "--xenstore", "{sock}"],
     EXIT_NOT_FOUND, "no domain 5 (--backend-domid)"),
    ("4: set, unknown backend domid", ["set", "1/0", "--tx", "on", "--backend-domid", "7",
                                       "--xenstore", "{sock}"],
     EXIT_NOT_FOUND, "no domain 7 (--backend-domid)",
     Expect(check=lambda lab: _nothing_under(lab, "/local/domain/7"))),
    ("4: set bridge, unknown backend domid", ["set", "--bridge", "xenpriv0", "--tx", "on",
                                              "--backend-domid", "7", "--xenstore", "{sock}"],
     EXIT_NOT_FOUND, "no domain 7 (--backend-domid)",
     Expect(check=lambda lab: _nothing_under(lab, "/local/domain/7"))),
    # 5. show in a guest that cannot read its domid: the agents' message and code
    ("5: show, guest domid unreadable", ["show", "--xenstore", "{guest2}"], EXIT_USAGE,
     "cannot read this guest's domid"),
    # 6. a selector that can never match, or a rule that changes nothing, is refused
    *[(f"6: policy {name}", ["backend-agent", "--once", "--config", f"{{tmp}}/{name}.toml",
                             "--xenstore", "{sock}"], EXIT_CONFIG, fragment)
      for name, fragment in (("mac-dashes", "rule[0].mac: not a MAC address"),
                             ("mac-zz", "rule[0].mac: not a MAC address"),
                             ("domid-negative", "rule[0].domid: not a domid"),
                             ("domid-20-digits", "rule[0].domid: not a domid"),
                             ("no-direction", "rule[0]: sets neither to-guest nor from-guest"))],
    # 7. xenstored --domain: a guest's domid (1..32751), each domain and socket once
    ("7: xenstored domain 99999999", ["xenstored", "--socket", "{tmp}/xs.sock", "--domain",
                                      "99999999:{tmp}/d.sock"], EXIT_USAGE,
     "DOMID 1..32751"),
    ("7: xenstored domain DOMID_SELF", ["xenstored", "--socket", "{tmp}/xs.sock", "--domain",
                                        "32752:{tmp}/d.sock"], EXIT_USAGE, "reserved ids"),
    ("7: xenstored domain 0", ["xenstored", "--socket", "{tmp}/xs.sock", "--domain",
                               "0:{tmp}/d.sock"], EXIT_USAGE, "DOMID 1..32751"),
    ("7: xenstored domain twice", ["xenstored", "--socket", "{tmp}/xs.sock", "--domain",
                                   "1:{tmp}/y.sock", "--domain", "1:{tmp}/z.sock"],
     EXIT_USAGE, "domain 1 already given"),
    ("7: xenstored socket twice", ["xenstored", "--socket", "{tmp}/xs.sock", "--domain",
                                   "1:{tmp}/y.sock", "--domain", "2:{tmp}/y.sock"],
     EXIT_USAGE, "already given"),
    # 8. SIGINT: 130 from daemons too, no traceback even at start-up; a closed pipe: 141,
    # silently
    ("8: SIGINT to backend-agent", ["backend-agent", "--mode", "full", "--toggles", "none",
                                    "--no-config", "--xenstore", "{sock}"], EXIT_INTERRUPTED, "",
     Expect(one_line=False, interrupt=lambda lab, _tmp: lab.toolstack.try_read(
         "/local/domain/0/backend/vif/1/0/feature-csum-tx") is not None)),
    ("8: SIGINT to guest-agent waiting for XenStore",
     ["guest-agent", "--toggles", "none", "--no-config", "--xenstore", "{tmp}/none.sock"],
     EXIT_INTERRUPTED, "XenStore unavailable at",
     Expect(one_line=False, interrupt=lambda _lab, tmp: (tmp / "none.sock").parent.exists()
            and time.sleep(1) is None)),
    ("8: SIGINT to xenstored", ["xenstored", "--socket", "{tmp}/xs.sock"], EXIT_INTERRUPTED,
     "", Expect(one_line=False, interrupt=lambda _lab, tmp: (tmp / "xs.sock").exists(),
                check=lambda lab: None)),
    # (startup_probe/ holds the start-up inside the import of xenoffload.cli until the SIGINT)
    ("8: SIGINT at start-up", ["demo", "--dry-run"], EXIT_INTERRUPTED,
     "xenoffload: interrupted",
     Expect(env={"PYTHONPATH": str(STARTUP_PROBE), "XENOFFLOAD_TEST_STARTED": "{tmp}/started"},
            interrupt=lambda _lab, tmp: (tmp / "started").exists())),
    ("8: show --json | head -1", ["show", "--json", "--xenstore", "{sock}"], EXIT_PIPE, "",
     # (several times a pipe's 64 KiB and head's read of JSON: the write after head exits fails)
     Expect(one_line=None, pipe_to="head -1",
            setup=lambda lab: lab.add_guest(2, ["xenbr0"] * 250) and None)),
    # 2. --once: negotiated but not enforced is not a success (7); enforced is (0)
    ("2: once, enforced", [*ONCE4, "--toggles", "dry-run"], EXIT_OK, "", DRIVER4),
    ("2: once, toggles none: not enforced", [*ONCE4, "--toggles", "none", "--json"],
     EXIT_NOT_ENFORCED, "unenforced: nothing applied (--toggles none)", DRIVER4),
    # 3. --no-tc: a computed from-guest direction nothing enforces is unenforced, with why
    ("3: once, no-tc: from-guest unenforced", [*ONCE4, "--toggles", "dry-run", "--no-tc",
                                              "--json"], EXIT_NOT_ENFORCED,
     "unenforced: tc ingress ipv4: tc disabled by --no-tc", DRIVER4),
]


@pytest.fixture
def world(lab: Lab, tmp_path: Path) -> dict[str, str]:
    lab.add_guest(1, ["xenbr0", "xenpriv0"])
    lab.add_guest(3, ["xenbr0"])
    # Guest 3 may not write its own override directory (a dom0 administrator's choice).
    from xenoffload.paths import override_root
    from xenoffload.schema import Role
    from xenoffload.store.base import Access, Perm

    root = override_root(3, Role.FRONTEND).rsplit("/", 1)[0]
    lab.toolstack.write(root, b"")
    lab.toolstack.set_perms(root, [Perm(Access.NONE, 0), Perm(Access.READ, 3)])
    (tmp_path / ("d" * 100)).mkdir()
    (tmp_path / "latin1.toml").write_bytes(NOT_UTF8)
    (tmp_path / "nested.toml").write_bytes(NESTED)
    (tmp_path / "unknown.toml").write_text("[defaults]\nto-guest = true\n")
    for name, selector in BAD_SELECTORS.items():
        (tmp_path / f"{name}.toml").write_text(f"[[rule]]\n{selector}\n")
    return {"sock": lab.socket, "guest1": lab.guest_socket(1), "guest2": lab.guest_socket(2),
            "guest3": lab.guest_socket(3), "tmp": str(tmp_path)}


@pytest.mark.parametrize(("args", "code", "fragment", "expect"),
                         [(*row[1:4], row[4] if len(row) > 4 else Expect()) for row in ROWS],
                         ids=[str(row[0]) for row in ROWS])
def test_bad_input_gets_one_line_and_its_exit_code(lab: Lab, world: dict[str, str],
                                                   args: list[str], code: int, fragment: str,
                                                   expect: Expect) -> None:
    if expect.setup is not None:
        expect.setup(lab)
    argv = [arg.format(**world) for arg in args]
    env = {**os.environ, **{k: v.format(**world) for k, v in expect.env.items()}}
    command = [sys.executable, "-m", "xenoffload", *argv]
    if expect.interrupt is not None:
        done = _interrupted(command, env, expect.interrupt, lab, Path(world["tmp"]))
    elif expect.pipe_to is not None:
        done = subprocess.run(["bash", "-c", f'"$@" | {expect.pipe_to}; '
                               'exit "${PIPESTATUS[0]}"', "bash", *command],
                              capture_output=True, text=True, timeout=60, check=False,
                              env=env, stdin=subprocess.DEVNULL)
    else:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60,
                              check=False, env=env,
                              **({"input": expect.stdin} if expect.stdin is not None
                                 else {"stdin": subprocess.DEVNULL}))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    if expect.one_line is None:
        assert not lines, lines  # silently
    elif expect.one_line:
        assert len(lines) == 1, lines
        assert fragment.format(**world) in lines[0]
        assert len(lines[0]) < 800, lines[0]  # huge arguments are not echoed in full
    else:
        assert fragment in done.stdout + done.stderr, done.stdout + done.stderr
    if expect.stdout is not None:
        assert expect.stdout in done.stdout, done.stdout
    if expect.check is not None:
        expect.check(lab)


def _interrupted(command: list[str], env: Mapping[str, str],
                 when: Callable[[Lab, Path], bool], lab: Lab,
                 tmp: Path) -> subprocess.CompletedProcess[str]:
    """Run ``command``; SIGINT it once ``when`` holds."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True, env=env)
    try:
        wait_until(lambda: when(lab, tmp), 30, "the command under way")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_every_exit_code_is_documented() -> None:
    cli_md = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    for code in (0, EXIT_OUTCOME, EXIT_USAGE, EXIT_XENSTORE, EXIT_CONFIG, EXIT_BUSY,
                 EXIT_NOT_FOUND, EXIT_NOT_ENFORCED, EXIT_UNSEEN, 130, 141):
        assert f"\n| {code} |" in cli_md, code
