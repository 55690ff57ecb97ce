"""The ``xenoffload`` command: agents, the embedded XenStore server, show, set, demo, hotplug.

Every input is checked where it enters (argument types, then names looked up in XenStore);
every failure ends with one line on stderr and one of the exit codes below (docs/cli.md),
never a traceback:

0 success; 1 the job ran but its outcome is not the expected one (demo expectations, ``--once``
with a vif not Connected or refused, a XenStore error answer); 2 usage error; 3 XenStore
unreachable; 4 configuration error (policy file); 5 another xenoffload process already writes
for this end (one writer per end, docs/agents.md); 6 the domain, vif or override named does
not exist; 7 negotiated but not enforced (``--once``: a vif's status is not ``ok``); 8 the
conformance suite passed only what it could see; 130 interrupted (Ctrl-C); 141 stdout closed
early (SIGPIPE, as other Unix tools).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

from xenoffload import __version__, sdnotify
from xenoffload.agentlock import EndBusy, EndKey, acquire_agent, held
from xenoffload.devices import DevicePattern
from xenoffload.names import (
    NotFound,
    VifSpec,
    parse_bridge_pattern,
    parse_domid,
    parse_vif_spec,
)
from xenoffload.policy import Policy, PolicyError, builtin_policy, load_policy
from xenoffload.schema import Role
from xenoffload.store.base import Store, StoreUnavailable, XenStoreError, read_own_domid
from xenoffload.store.location import daemon_socket_path, default_xenstore_path

if TYPE_CHECKING:  # the agents are imported only by the commands that run them
    from xenoffload.agents.backend import BackendAgent
    from xenoffload.agents.fleet import EnforcerFactory
    from xenoffload.agents.guest import GuestAgent
    from xenoffload.endpoint import Enforcer
    from xenoffload.enforce import Enforcers
    from xenoffload.policy import VifIdentity
    from xenoffload.show import VifReport

__all__ = ["main", "build_parser", "resolve_xenstore", "CliError", "EXIT_OK", "EXIT_OUTCOME",
           "EXIT_USAGE", "EXIT_XENSTORE", "EXIT_CONFIG", "EXIT_BUSY", "EXIT_NOT_FOUND",
           "EXIT_NOT_ENFORCED", "EXIT_UNSEEN", "EXIT_INTERRUPTED", "EXIT_PIPE",
           "DEFAULT_CONFIG"]

EXIT_OK, EXIT_OUTCOME, EXIT_USAGE, EXIT_XENSTORE, EXIT_CONFIG = 0, 1, 2, 3, 4
EXIT_BUSY, EXIT_NOT_FOUND, EXIT_NOT_ENFORCED, EXIT_UNSEEN = 5, 6, 7, 8
EXIT_INTERRUPTED, EXIT_PIPE = 130, 128 + signal.SIGPIPE

#: The policy file an agent reads when ``--config`` is not given, if it exists.
DEFAULT_CONFIG = {Role.BACKEND: "/etc/xenoffload/policy.toml",
                  Role.FRONTEND: "/etc/xenoffload/guest.toml"}

log = logging.getLogger("xenoffload")

T = TypeVar("T")


class CliError(Exception):
    """A command cannot do what was asked: ``message`` is the one line printed, ``code`` the
    exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def resolve_xenstore(explicit: str | None) -> str:
    """Return the XenStore endpoint: ``--xenstore`` if given, else libxenstore's default
    (:func:`~xenoffload.store.location.default_xenstore_path`). A ``$XENSTORED_PATH`` that
    is set but empty is a usage error (CliError, exit 2), not a silent fallback."""
    if explicit is not None:
        return explicit
    _check_env_path()
    return default_xenstore_path()


def _check_env_path() -> None:
    if os.environ.get("XENSTORED_PATH") == "":
        raise CliError(EXIT_USAGE, "XENSTORED_PATH is set but empty: unset it, or set it to "
                                   "the XenStore socket (or pass --xenstore PATH)")


def _connect(path: str) -> Store:
    """Return a connection to ``path``; CliError (exit 3) naming it when there is none."""
    from xenoffload.store.pyxs_store import connect_store

    try:
        return connect_store(path)
    except StoreUnavailable as error:
        raise CliError(EXIT_XENSTORE, f"XenStore unavailable at {path}: "
                                      f"{_why_unavailable(path, error)}") from None


def _why_unavailable(path: str, error: StoreUnavailable) -> str:
    """The reason in a StoreUnavailable, without the path it repeats."""
    return str(error).removeprefix(f"cannot connect to XenStore at {path}: ")


def _require_domain(store: Store, domid: int, what: str) -> None:
    """Raise NotFound (exit 6) when domain ``domid`` does not exist (no
    ``/local/domain/<domid>``); ``what`` names the option that named it. Domain 0 always
    exists. A guest may read only its own home: another domid is refused there (a guest's
    agent acts for that guest alone)."""
    from xenoffload.paths import domain_path

    if domid == 0:
        return
    try:
        if store.try_read(domain_path(domid)) is not None:
            return
    except XenStoreError:
        own = read_own_domid(store)
        if own is None or own == domid:
            return
        raise NotFound(f"no domain {domid} ({what}) seen from this connection: it belongs "
                       f"to domain {own}") from None
    raise NotFound(f"no domain {domid} ({what}): {domain_path(domid)} does not exist")


def _domid_unreadable(store: Store, path: str, hint: str) -> CliError:
    """The error (exit 2) of a guest that cannot read its own domid, as both agents and
    ``show`` say it."""
    try:
        store.read("domid")
        why = "it is not a domid"
    except XenStoreError as error:
        why = error.errno_name
    return CliError(EXIT_USAGE, f"cannot read this guest's domid from XenStore at {path} "
                                f"('domid': {why}); run it in a Xen guest (as root, with "
                                f"/dev/xen/xenbus){hint}")


# ----------------------------------------------------------------------------- argument types


def _shown(text: str, limit: int = 80) -> str:
    """``text`` as an error line quotes it: repr, cut to about ``limit`` characters (a huge
    argument is not echoed in full)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text == "on"


def _checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """Return an argparse type that parses with ``parse``; its ValueError becomes the one-line
    usage error."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def _devid_value(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or int(text) > 0xFFFF:
        raise ValueError(f"not a devid (0..65535): {text!r}")
    return int(text)


def _seconds_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0 or value > 86400:
        raise ValueError(f"expected seconds in (0, 86400], got {text!r}")
    return value


def _path_value(text: str) -> str:
    if not text:
        raise ValueError("empty: name a path")
    if "\0" in text:
        raise ValueError(f"not a path (a NUL byte): {_shown(text)}")
    return text


def _command_value(text: str) -> str:
    if not text.strip():
        raise ValueError("empty: name the command to run")
    if any(ord(c) < 0x20 or c == "\x7f" for c in text):
        raise ValueError(f"a control character (a newline?) would break the unit's ExecStart "
                         f"line: {_shown(text)}")
    return text


def _impl_value(text: str) -> str:
    if not text.strip():
        raise ValueError("empty: name the implementation's command")
    return text


def _netns_value(text: str) -> str:
    if not text or "/" in text or text in (".", "..") or len(text) > 255:
        raise ValueError(f"not a network namespace name: {text!r}")
    return text


_domid = _checked(parse_domid)
_devid = _checked(_devid_value)
_seconds = _checked(_seconds_value)
_netns = _checked(_netns_value)
_path = _checked(_path_value)
_command = _checked(_command_value)
_impl = _checked(_impl_value)
_bridge = _checked(parse_bridge_pattern)


def _pattern(role: Role) -> Callable[[str], DevicePattern]:
    return _checked(lambda text: DevicePattern(role, text))


def _vif_spec(need_device: bool) -> Callable[[str], VifSpec]:
    return _checked(lambda text: parse_vif_spec(text, need_device))


def _writable_file(text: str) -> Path:
    """A file the command will write at the end: checked now (its directory exists and can be
    written), so a long run is not lost to a typo."""
    path = Path(text)
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory")
    if not directory.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK) or \
            (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{text}: not writable")
    return path


def _directory(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: not writable")
    return path


# ----------------------------------------------------------------------------- policy


def _policy_source(args: argparse.Namespace, role: Role) -> str | None:
    """Return the policy file to read: ``--config``, else the end's default file if it exists
    (none with ``--no-config``)."""
    if args.no_config:
        return None
    if args.config is not None:
        return str(args.config)
    default = DEFAULT_CONFIG[role]
    return default if os.path.exists(default) else None


def _load(path: str | None, role: Role) -> Policy:
    """Return the policy in ``path`` over the end's built-in default (or that default).
    Raises CliError (exit 4) naming the file."""
    builtin = builtin_policy(role)
    if path is None:
        return builtin
    try:
        return load_policy(path, builtin.default)
    except PolicyError as error:
        raise CliError(EXIT_CONFIG, f"policy refused: {error}") from None
    except OSError as error:
        raise CliError(EXIT_CONFIG, f"policy file {path}: {error.strerror or error}") from None


# ----------------------------------------------------------------------------- agents


def _once_reports(logic: BackendAgent | GuestAgent, path: str) -> list[VifReport]:
    """Return the ``--once`` summary: each vif the agent handled as the store shows it now,
    with the agent's own view attached."""
    import attrs

    from xenoffload.show import collect
    from xenoffload.vifends import agent_views

    store = _connect(path)
    try:
        views = agent_views(store, logic.ends, logic.endpoints, logic.refused)
        reports = collect(store, [paths for paths, _view in views])
        return [attrs.evolve(report, agent=view)
                for report, (_paths, view) in zip(reports, views, strict=True)]
    finally:
        store.close()


def _run_agent(args: argparse.Namespace, role: Role,
               own_domid: Callable[[str, threading.Event | None], int | None],
               device_enforcer: Callable[[Enforcers, VifIdentity], Enforcer | None],
               make_logic: Callable[[Policy, int, EnforcerFactory],
                                    BackendAgent | GuestAgent]) -> int:
    """Run the agent of ``role`` as the CLI options say: for ``--domid``, else for what
    ``own_domid`` answers (a daemon waits for XenStore to answer), with the kernel mechanisms
    of ``--toggles`` (closed when it ends): ``device_enforcer`` says which device of them
    enforces a vif, and every enforcer also writes ``--device-log``."""
    from xenoffload.devicelog import device_logged
    from xenoffload.enforce import NothingApplied

    _once_options(args)
    path = resolve_xenstore(args.xenstore)
    stop = None if args.once else _stop_on_signals()
    domid = args.domid if args.domid is not None else own_domid(path, stop)
    if domid is None:
        assert stop is not None
        return _stopped_code(stop)  # stopped while waiting for XenStore
    enforcers = _make_enforcers(args.toggles, args.tc)

    def enforcer(vif: VifIdentity) -> Enforcer | None:
        if enforcers is None:
            return NothingApplied()  # --toggles none: no status says ok
        return device_enforcer(enforcers, vif)

    factory = device_logged(enforcer, args.device_log)
    try:
        return _run_end(args, role, path, domid,
                        lambda policy: make_logic(policy, domid, factory),
                        stop or threading.Event())
    finally:
        if enforcers is not None:
            enforcers.close()


def _run_end(args: argparse.Namespace, role: Role, path: str, domid: int,
             make_logic: Callable[[Policy], BackendAgent | GuestAgent],
             stop: threading.Event) -> int:
    """Run an agent for its end as the one writer of it. SIGHUP reloads the policy file
    (keeping the running policy when it does not load)."""
    from xenoffload.agents.runner import Runner

    source = _policy_source(args, role)
    logic = make_logic(_load(source, role))
    what = f"{'backend' if role is Role.BACKEND else 'guest'}-agent" + \
        (" --once" if args.once else "")
    end = EndKey.of(role, domid, path)
    try:
        locks = acquire_agent(end, what)
    except EndBusy as error:
        raise CliError(EXIT_BUSY, f"{error}; this {what} writes nothing "
                                  "(one writer per end: docs/agents.md)") from None
    except OSError as error:
        raise CliError(EXIT_CONFIG, f"cannot take the agent lock: {error}") from None
    with held(locks):
        runner = Runner(lambda: _connect_raw(path), logic)
        runner.stop_event = stop
        if args.once:
            store = _connect(path)  # unreachable: one line and exit 3, no retries
            try:
                _require_domain(store, domid, "--domid")  # nothing to do: not a success
            finally:
                store.close()
            try:
                runner.run_once(settle_seconds=args.settle, max_seconds=args.timeout)
            except StoreUnavailable as error:
                raise CliError(EXIT_XENSTORE, f"XenStore unavailable at {path}: "
                                              f"{_why_unavailable(path, error)}") from None
            return _once_outcome(logic, path, args.json, _verbosity(args) > 0)

        def reload() -> None:
            nonlocal source
            source = _policy_source(args, role)
            try:
                new = _load(source, role)
            except CliError as error:
                log.error("policy reload refused, keeping the old one: %s", error)
                return
            logic.set_policy(new)
            log.info("policy reloaded from %s", source or "the built-in default")

        def on_hup(_signum: int, _frame: object) -> None:
            runner.request_reload(reload)

        attached = False

        def on_attached() -> None:
            nonlocal attached
            if not attached:
                attached = True
                sdnotify.ready(f"acting for {end.describe()}")

        runner.on_attached = on_attached
        signal.signal(signal.SIGHUP, on_hup)
        log.info("xenoffload %s %s on %s (mode %s, toggles %s, policy %s)", __version__,
                 what, path, args.mode, args.toggles, source or "built-in")
        runner.run()
        # Else `systemctl status` of the stopped unit still reads "acting for ..." (systemd
        # keeps a service's last STATUS= after it exits).
        sdnotify.stopping(f"stopped: no longer acting for {end.describe()}")
    return _stopped_code(stop)


def _connect_raw(path: str) -> Store:
    from xenoffload.store.pyxs_store import connect_store

    return connect_store(path)


def _verbosity(args: argparse.Namespace) -> int:
    """``-v`` count (before or after the command), minus one for ``-q``."""
    return int(args.verbose + getattr(args, "sub_verbose", 0)) - (
        1 if args.quiet or getattr(args, "sub_quiet", False) else 0)


def _once_outcome(logic: BackendAgent | GuestAgent, path: str, as_json: bool,
                  full_status: bool = False) -> int:
    from xenoffload.show import enforced_status, render_json, render_table
    from xenoffload.xenbus import XenbusState

    reports = _once_reports(logic, path)
    if as_json:
        print(render_json(reports))
    else:
        print(render_table(reports, full_status))
        for report in reports:
            agent = report.agent
            assert agent is not None
            if agent.refused is not None:
                print(f"{report.guest_domid}/{report.devid}: refused: {agent.refused}")
    ok = all(report.agent is not None and report.agent.refused is None and
             not report.agent.retry and
             report.agent.own_state is XenbusState.CONNECTED and
             report.agent.peer_state is XenbusState.CONNECTED for report in reports)
    if not ok:
        return EXIT_OUTCOME
    # Negotiated, but the device does not do it (yet): not a success either (docs/cli.md).
    enforced = all(report.agent is not None and report.agent.status is not None and
                   enforced_status(report.agent.status) for report in reports)
    return EXIT_OK if enforced else EXIT_NOT_ENFORCED


class _Stop(threading.Event):
    """Set by SIGTERM/SIGINT; remembers which (SIGINT: the command exits 130)."""

    signum: int | None = None


def _stopped_code(stop: threading.Event) -> int:
    """The exit code of a daemon stopped by ``stop``: 130 after SIGINT (docs/cli.md), else 0."""
    return EXIT_INTERRUPTED if getattr(stop, "signum", None) == signal.SIGINT else EXIT_OK


def _stop_on_signals() -> threading.Event:
    """Return an event set by SIGTERM/SIGINT (a daemon stops cleanly on either)."""
    stop = _Stop()

    def on_term(signum: int, _frame: object) -> None:
        if stop.signum is None:
            stop.signum = signum
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    return stop


def _once_options(args: argparse.Namespace) -> None:
    """``--json``, ``--settle`` and ``--timeout`` belong to ``--once``: without it they are a
    usage error (not silently ignored); with it, their defaults are filled in."""
    if not args.once:
        given = [flag for flag, value in (("--json", args.json), ("--settle", args.settle),
                                          ("--timeout", args.timeout)) if value]
        if given:
            raise CliError(EXIT_USAGE, f"{args.command}: {', '.join(given)} only with --once "
                                       "(the daemon runs until stopped)")
        return
    args.settle = 0.5 if args.settle is None else args.settle
    args.timeout = 30.0 if args.timeout is None else args.timeout


def cmd_backend_agent(args: argparse.Namespace) -> int:
    from xenoffload.agents.backend import BackendAgent
    from xenoffload.devices import backend_device
    from xenoffload.machine import Mode
    from xenoffload.policy import VifIdentity

    def device_enforcer(enforcers: Enforcers, vif: VifIdentity) -> Enforcer:
        try:
            device = backend_device(vif, args.device_pattern, args.netns)
        except ValueError:
            log.warning("domid=%d devid=%d: vifname %r is not a device name; using the "
                        "default name", vif.domid, vif.devid, vif.vifname)
            device = backend_device(VifIdentity(vif.domid, vif.devid), args.device_pattern,
                                    args.netns)
        return enforcers.for_device(device)

    # Without --domid: this domain's own, dom0's 0 or a driver domain's (the unit's command
    # line is the same in both).
    return _run_agent(args, Role.BACKEND, _backend_domid, device_enforcer,
                      lambda policy, domid, enforcer:
                      BackendAgent(policy, domid, Mode(args.mode), enforcer))


def _own_domid(path: str, stop: threading.Event | None, fallback: int | None = None
               ) -> int | None:
    """Return this domain's domid, read from XenStore (its relative ``domid`` node). A daemon
    (``stop`` given) waits for XenStore to come up; ``--once`` does not. Returns None when
    stopped first; raises CliError when XenStore is unreachable (``--once``), or when the domid
    cannot be read and there is no ``fallback`` (a guest must know its own; a backend agent
    falls back to dom0, whose ``domid`` node some setups do not write)."""

    delay = 0.05
    while True:
        try:
            store = _connect(path)
            break
        except CliError:
            if stop is None:
                raise
            log.warning("XenStore unavailable at %s; retrying in %.2fs", path, delay)
            if stop.wait(delay):
                return None
            delay = min(delay * 2, 5.0)
    try:
        domid = read_own_domid(store)
        if domid is None:
            if fallback is not None:
                return fallback
            raise _domid_unreadable(store, path, " or pass --domid N")
    except StoreUnavailable as error:
        raise CliError(EXIT_XENSTORE, f"XenStore unavailable at {path}: "
                                      f"{_why_unavailable(path, error)}") from None
    finally:
        store.close()
    return domid


#: Where Linux says which hypervisor it runs on, and (xenfs) whether this is the control domain.
HYPERVISOR_TYPE = "/sys/hypervisor/type"
XEN_CAPABILITIES = "/proc/xen/capabilities"


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _backend_domid(path: str, stop: threading.Event | None) -> int | None:
    """The domid a backend agent without ``--domid`` acts for. Not under Xen (an embedded
    xenstored) or in the control domain (``control_d``): 0, without connecting (a second agent
    then exits 5 before it connects). Another Xen domain is a driver domain: its own domid,
    read from XenStore (0 where none can be read)."""
    if _read_text(HYPERVISOR_TYPE) != "xen" or \
            "control_d" in (_read_text(XEN_CAPABILITIES) or "").split(","):
        return 0
    return _own_domid(path, stop, fallback=0)


def cmd_guest_agent(args: argparse.Namespace) -> int:
    from xenoffload.agents.guest import GuestAgent
    from xenoffload.devices import GuestDeviceEnforcer
    from xenoffload.machine import Mode
    from xenoffload.toggles.base import DeviceRef

    pattern: DevicePattern | None = args.device_pattern
    if pattern is None and args.toggles == "dry-run":
        # Simulated devices touch nothing: name them as netfront would.
        pattern = DevicePattern(Role.FRONTEND, "eth{devid}")

    def device_enforcer(enforcers: Enforcers, vif: VifIdentity) -> Enforcer:
        if pattern is not None:
            return enforcers.for_device(DeviceRef(pattern.name(vif), args.netns))
        return GuestDeviceEnforcer(enforcers, vif.devid, args.netns)

    return _run_agent(args, Role.FRONTEND, _own_domid, device_enforcer,
                      lambda policy, domid, enforcer:
                      GuestAgent(policy, domid, Mode(args.mode), enforcer,
                                 follows=args.domid is None))


def _make_enforcers(kind: str, tc: bool) -> Enforcers | None:
    """Return the kernel mechanisms of ``--toggles KIND`` (None for ``none``), with tc unless
    ``--no-tc`` is given (docs/toggles.md)."""
    if kind == "none":
        return None
    from xenoffload.enforce import make_enforcers

    return make_enforcers("netlink" if kind == "netlink" else "dry-run", tc=tc)


# ----------------------------------------------------------------------------- show, set


def store_path(args: argparse.Namespace) -> str:
    """The XenStore endpoint a command's ``--xenstore`` names (or the default)."""
    return resolve_xenstore(args.xenstore)


def cmd_show(args: argparse.Namespace) -> int:
    from xenoffload.show import render_json, render_table

    store = _connect(resolve_xenstore(args.xenstore))
    try:
        reports, own, backend = _selected_reports(store, args)
    finally:
        store.close()
    if args.kernel != "none":
        reports = _with_kernel(reports, args, own)
    print(render_json(reports) if args.json else
          render_table(reports, full_status=_verbosity(args) > 0))
    if not reports and not args.json:  # a bare header would not say where it looked
        ends = "a backend" if own is None else "a backend or frontend" if own == backend \
            else f"a frontend in domain {own} or a backend"
        print(f"(no vifs with {ends} in domain {backend})")
    return EXIT_OK


def _selected_reports(store: Store, args: argparse.Namespace
                      ) -> tuple[list[VifReport], int | None, int]:
    """Return the reports ``show`` prints, this connection's own domid and the backend domain
    looked in: the vifs whose backend is in ``--backend-domid`` (default: this domain, else 0)
    and, when this domain is a guest, its own vifs seen from its side."""
    from xenoffload.names import resolve_domain, resolve_vif
    from xenoffload.paths import VifPaths
    from xenoffload.show import collect, list_own_frontends, list_vifs

    own = read_own_domid(store)
    if own is None:
        try:
            store.try_read("/local/domain")
        except XenStoreError:  # unprivileged, so a guest: it must know its domid
            raise _domid_unreadable(store, store_path(args), "") from None
    if args.backend_domid is not None:
        _require_domain(store, args.backend_domid, "--backend-domid")
    backend_domid = args.backend_domid if args.backend_domid is not None else (own or 0)
    spec: VifSpec | None = args.vif
    guest = devid = None
    if spec is not None:
        guest = resolve_domain(store, spec)
        if spec.has_device:
            devid = resolve_vif(store, spec, guest, backend_domid)
    vifs = list_vifs(store, backend_domid, guest)
    if own is not None and guest in (None, own):
        known = set(vifs)
        vifs += [v for v in list_own_frontends(store, own) if v not in known]
    if devid is not None:
        vifs = [v for v in vifs if v.devid == devid]
    if spec is not None and not vifs:
        raise NotFound(f"no vif of domain {spec} (backend domain {backend_domid})")
    vifs.sort(key=lambda v: (v.guest_domid, v.devid, v.backend_domid))
    return collect(store, [VifPaths(v.backend_domid, v.guest_domid, v.devid)
                           for v in vifs]), own, backend_domid


def _with_kernel(reports: list[VifReport], args: argparse.Namespace,
                 own: int | None) -> list[VifReport]:
    """Return ``reports`` with the checksum features of this domain's device of each vif: the
    frontend's (sysfs or ``--device-pattern eth{devid}``) for this guest's own vifs, else the
    backend's."""
    import attrs

    from xenoffload.devices import backend_device, sysfs_netfront
    from xenoffload.policy import VifIdentity
    from xenoffload.show import KernelView
    from xenoffload.toggles import make_toggles
    from xenoffload.toggles.base import DeviceRef, ToggleError

    toggles = make_toggles("netlink")
    enriched = []
    for report in reports:
        vif = VifIdentity(report.guest_domid, report.devid, vifname=report.vifname)
        frontend = own is not None and report.guest_domid == own and \
            report.backend_domid != own
        role = Role.FRONTEND if frontend else Role.BACKEND
        try:
            if not frontend:
                device: DeviceRef | None = backend_device(vif, args.device_pattern,
                                                          args.netns)
            elif args.device_pattern is not None:
                device = DeviceRef(args.device_pattern.text.format(devid=report.devid),
                                   args.netns)
            else:
                name = sysfs_netfront(report.devid)
                device = DeviceRef(name, args.netns) if name else None
        except (ValueError, KeyError) as error:
            view = KernelView(role, "?", error=f"no device name: {error}")
        else:
            if device is None:
                view = KernelView(role, "?", error=f"no Xen vif {report.devid} in sysfs")
            else:
                try:
                    features = toggles.read(device)
                    view = KernelView(role, str(device), {
                        name: state for name, state in features.items()
                        if "checksum" in name})
                except ToggleError as error:
                    view = KernelView(role, str(device), error=str(error))
        enriched.append(attrs.evolve(report, kernel=view))
    return enriched


def _own_domid_or_fail(store: Store, path: str) -> int:

    domid = read_own_domid(store)
    if domid is None:
        raise CliError(EXIT_USAGE, f"cannot read this guest's domid from XenStore at {path}; "
                                   "--local works inside a Xen guest")
    return domid


def _vif_override_key(store: Store, spec: VifSpec, backend_domid: int) -> tuple[str, str]:
    """Return the override key of the vif ``spec`` names, and how to name the vif. A UUID
    with a devid names a VM's vif whether or not the VM runs."""
    from xenoffload.names import resolve_domain, resolve_vif
    from xenoffload.override_store import vif_override_key, vm_vif_override_key
    from xenoffload.overrides import vif_key
    from xenoffload.paths import vm_dir
    from xenoffload.policy import parse_uuid

    uuid = parse_uuid(spec.name)
    if uuid is not None and spec.devid is not None and store.try_read(vm_dir(uuid)) is None:
        if backend_domid != 0:
            raise CliError(EXIT_USAGE, f"no domain of VM {uuid} runs, and a driver domain's "
                                       "agent cannot read VM UUIDs: name a running domain")
        # No domain of that VM runs (its /vm/<uuid> is gone): name its vif by the UUID.
        return vm_vif_override_key(uuid, spec.devid), f"vif {spec.devid} of VM {uuid}"
    guest = resolve_domain(store, spec)
    devid = resolve_vif(store, spec, guest, backend_domid)
    if backend_domid != 0:
        # A driver domain's agent may not read the guest's vm (/vm/<uuid> is the toolstack's):
        # a key by UUID would never match there. By domid: it ends with the domain.
        return vif_key(None, guest, devid), f"vif {guest}/{devid}"
    return vif_override_key(store, guest, devid), f"vif {guest}/{devid}"


def cmd_set(args: argparse.Namespace) -> int:
    from xenoffload.override_store import clear_override, write_override
    from xenoffload.overrides import OverrideSetting, bridge_key
    from xenoffload.paths import frontend_vif_root, override_path
    from xenoffload.policy import DirectionSetting
    from xenoffload.schema import Role

    targets = [name for name, given in (("DOMAIN/DEVICE", args.vif is not None),
                                        ("--bridge", args.bridge is not None),
                                        ("--local", args.local is not None)) if given]
    if len(targets) != 1:
        raise CliError(EXIT_USAGE, "name exactly one of DOMAIN/DEVICE, --bridge BR, "
                                   f"--local DEVID (got {', '.join(targets) or 'none'})")
    given = [flag for flag, value in (("--tx", args.tx), ("--rx", args.rx),
                                      ("--ipv6", args.ipv6)) if value is not None]
    if args.clear and given:
        raise CliError(EXIT_USAGE, f"--clear removes the override; it takes no "
                                   f"{', '.join(given)}")
    if not args.clear and args.tx is None and args.rx is None:
        raise CliError(EXIT_USAGE, "give --tx and/or --rx (--ipv6 refines them), or --clear")
    path = resolve_xenstore(args.xenstore)
    store = _connect(path)
    try:
        if args.local is not None:
            guest = _own_domid_or_fail(store, path)
            if store.try_read(f"{frontend_vif_root(guest)}/{args.local}") is None:
                raise NotFound(f"this guest (domid {guest}) has no vif {args.local}")
            home, role, key = guest, Role.FRONTEND, f"vif/{args.local}"
            # In the guest, tx is the guest's transmit: from-guest; rx is to-guest.
            tx_dir, rx_dir = "from_guest", "to_guest"
            what = f"this guest's vif {args.local}"
        else:
            home, role = args.backend_domid, Role.BACKEND
            _require_domain(store, home, "--backend-domid")  # writes nothing then
            if args.bridge is not None:
                key, what = bridge_key(args.bridge), f"bridge {args.bridge}"
            else:
                key, what = _vif_override_key(store, args.vif, args.backend_domid)
            # From dom0, tx is the vif's transmit (ethtool -K vifD.N tx): to-guest.
            tx_dir, rx_dir = "to_guest", "from_guest"
        node = override_path(home, role, key)
        if args.clear:
            if store.try_read(node) is None:
                raise NotFound(f"no override for {what} ({node}): nothing to clear")
            print(f"cleared {clear_override(store, home, role, key)}")
            return EXIT_OK
        directions: dict[str, DirectionSetting] = {}
        for flag, direction in ((args.tx, tx_dir), (args.rx, rx_dir)):
            if flag is not None:
                ipv6 = flag if args.ipv6 is None else args.ipv6
                directions[direction] = DirectionSetting(flag, ipv6)
        print(f"set {write_override(store, home, role, key, OverrideSetting(**directions))}")
        return EXIT_OK
    finally:
        store.close()


# ----------------------------------------------------------------------------- the rest


def cmd_demo(args: argparse.Namespace) -> int:
    from xenoffload.demo import run_demo

    return run_demo(dry_run=True if args.dry_run else None, timeout=args.timeout)


def cmd_hotplug(args: argparse.Namespace) -> int:
    from xenoffload.hotplug import load_hook_policy, run_hotplug

    if args.no_config:
        source = None
    else:
        source = str(args.config) if args.config is not None else (
            DEFAULT_CONFIG[Role.BACKEND] if os.path.exists(DEFAULT_CONFIG[Role.BACKEND])
            else None)
    return run_hotplug(args.action, load_hook_policy(source), args.toggles, args.tc,
                       resolve_xenstore(args.xenstore), args.wait, args.device_pattern,
                       args.netns, args.log)


def cmd_units(args: argparse.Namespace) -> int:
    from xenoffload.units import TEMPLATES, render, write_files

    if args.output is None:
        for name in TEMPLATES:
            print(f"# ---- {name}\n{render(name, args.command)}")
        return EXIT_OK
    for path in write_files(args.output, args.command):
        print(f"wrote {path}")
    return EXIT_OK


def cmd_man(args: argparse.Namespace) -> int:
    from xenoffload.manpage import render_man

    sys.stdout.write(render_man(build_parser()))
    return EXIT_OK


def cmd_conformance(args: argparse.Namespace) -> int:
    from xenoffload.conformance.command import run_command_suite
    from xenoffload.conformance.runner import SelectionError

    try:
        return run_command_suite(Role(args.role), args.impl, args.junit, args.mode,
                                 tuple(args.scenario), args.timeout, grace=args.grace,
                                 require_observable=args.require_observable,
                                 keep_workdir=args.keep_workdir)
    except SelectionError as error:
        raise CliError(EXIT_USAGE, str(error)) from None


def cmd_xenstored(args: argparse.Namespace) -> int:
    """Run the embedded xenstored (docs/xenstored.md) until SIGTERM/SIGINT."""
    from xenoffload.xenstored.daemon import DaemonOptions, run
    from xenoffload.xenstored.server import ServerLimits
    from xenoffload.xs.model import Quotas

    quota_values = dict(args.quota)
    for flag, name in (("entry_nb", "nodes"), ("entry_size", "node-size"),
                       ("watch_nb", "watches"), ("transaction", "transactions"),
                       ("perm_nb", "permissions"), ("path_max", "path-max")):
        if getattr(args, flag) is not None:
            quota_values[name] = getattr(args, flag)
    fields = {_QUOTA_FIELDS[name]: value for name, value in quota_values.items()}
    if "path_length" in fields:  # as C's -M: never beyond XENSTORE_REL_PATH_MAX
        fields["path_length"] = min(fields["path_length"], Quotas().path_length)
    quotas = Quotas(**fields)
    limits = ServerLimits(
        watch_event_timeout=dict(args.timeout).get("watch-event",
                                                   ServerLimits().watch_event_timeout),
        max_guest_connections=args.max_guest_connections, reserved_fds=args.reserved_fds)
    seen: dict[object, str] = {}
    for domid, sock in args.domain:
        for key, what in ((domid, f"domain {domid}"), (sock, f"socket {_shown(sock)}")):
            if key in seen:
                raise CliError(EXIT_USAGE, f"xenstored: --domain {_shown(f'{domid}:{sock}')}: "
                                           f"{what} already given (--domain "
                                           f"{_shown(seen[key])})")
            seen[key] = f"{domid}:{sock}"
    if args.socket is None:
        _check_env_path()
    options = DaemonOptions(
        socket_path=args.socket or daemon_socket_path(), domains=tuple(args.domain),
        trace_path=args.trace, quotas=quotas, limits=limits, pidfile=args.pidfile,
        background=args.background, log_file=args.log_file)
    return run(options)


#: ``-Q NAME=N`` names (C xenstored's, with its aliases) and the Quotas field each sets.
_QUOTA_FIELDS = {
    "nodes": "nodes", "watches": "watches", "transactions": "transactions",
    "outstanding": "outstanding", "transaction-nodes": "transaction_nodes",
    "memory": "memory", "node-size": "node_size", "path-max": "path_length",
    "path-length": "path_length", "permissions": "perms", "node-permissions": "perms",
}


def _count_value(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise ValueError(f"expected a number >= 0, got {text!r}")
    return int(text)


def _named_count(text: str, names: Sequence[str], shown: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or name not in names:
        raise ValueError(f"expected {shown}, got {text!r}")
    return name, _count_value(value)


def _quota_value(text: str) -> tuple[str, int]:
    return _named_count(text, list(_QUOTA_FIELDS),
                        f"NAME=N with NAME one of {', '.join(_QUOTA_FIELDS)}")


def _timeout_value(text: str) -> tuple[str, int]:
    return _named_count(text, ["watch-event"], "watch-event=SECONDS")


def _domain_socket_value(text: str) -> tuple[int, str]:
    from xenoffload.names import DOMID_LIMIT

    domid, sep, path = text.partition(":")
    if not sep or not domid.isascii() or not domid.isdigit() or not path or len(domid) > 5 \
            or not 0 < int(domid) < DOMID_LIMIT:
        raise ValueError(f"expected DOMID:PATH with DOMID 1..{DOMID_LIMIT - 1} (a guest; "
                         f"{DOMID_LIMIT} and up are Xen's reserved ids), got {_shown(text)}")
    return int(domid), path


_count = _checked(_count_value)
_quota_arg = _checked(_quota_value)
_timeout_arg = _checked(_timeout_value)
_domain_arg = _checked(_domain_socket_value)


def _add_xenstored_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", metavar="PATH", type=_path,
                   help="privileged (dom0) socket; default $XENSTORED_PATH, else "
                        "${XENSTORED_RUNDIR:-/var/run/xenstored}/socket")
    p.add_argument("--domain", metavar="DOMID:PATH", type=_domain_arg, action="append",
                   default=[], help="add a guest socket: connections on PATH are "
                                    "unprivileged and act as domain DOMID (repeatable)")
    p.add_argument("-T", "--trace", "--trace-file", dest="trace", metavar="FILE",
                   help="append every request/reply to FILE (xenstored -T format)")
    limits = p.add_argument_group("quotas (per guest domain; C xenstored's flags)")
    limits.add_argument("-E", "--entry-nb", type=_count, metavar="N",
                        help="nodes a domain may own (1000)")
    limits.add_argument("-S", "--entry-size", type=_count, metavar="BYTES",
                        help="size of one node (2048)")
    limits.add_argument("-W", "--watch-nb", type=_count, metavar="N",
                        help="watches per domain (128)")
    limits.add_argument("-t", "--transaction", type=_count, metavar="N",
                        help="open transactions per domain (10)")
    limits.add_argument("-A", "--perm-nb", type=_count, metavar="N",
                        help="permission entries per node (5)")
    limits.add_argument("-M", "--path-max", type=_count, metavar="N",
                        help="path length below the domain's home, at most 2048 (2048)")
    limits.add_argument("-Q", "--quota", type=_quota_arg, action="append", default=[],
                        metavar="NAME=N",
                        help="set a quota by name: nodes, watches, transactions, outstanding "
                             "(20), transaction-nodes (1024), memory (2621440 bytes; 0: none), "
                             "node-size, path-max, permissions (repeatable)")
    limits.add_argument("-w", "--timeout", type=_timeout_arg, action="append", default=[],
                        metavar="watch-event=SECONDS",
                        help="drop a guest's watch events unread for that long (20; 0: never)")
    limits.add_argument("--max-guest-connections", type=_count, default=32, metavar="N",
                        help="connections per guest socket (32; 0: no cap)")
    limits.add_argument("--reserved-fds", type=_count, default=64, metavar="N",
                        help="file descriptors no guest connection may take (64)")
    daemon = p.add_argument_group("process")
    daemon.add_argument("-F", "--pidfile", "--pid-file", dest="pidfile", metavar="FILE",
                        help="write the serving process' pid to FILE once it serves")
    mode = daemon.add_mutually_exclusive_group()
    mode.add_argument("--background", action="store_true",
                      help="fork once every socket listens: the command returns then (0), or "
                           "1 if the daemon could not start")
    mode.add_argument("-N", "--no-fork", action="store_false", dest="background",
                      help="stay in the foreground (the default)")
    daemon.add_argument("--log-file", metavar="FILE",
                        help="append the log to FILE instead of stderr (in the background: "
                             "instead of nowhere)")
    p.set_defaults(func=cmd_xenstored)


# ----------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``xenoffload set: error: ... (see --help)``, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)} "
                              f"(see {self.prog} --help)\n")


def _one_line(message: str, limit: int = 1000) -> str:
    """``message`` as the one line printed: a huge quoted argument is cut (not echoed in
    full), line breaks become spaces, and the whole is at most about ``limit`` characters."""
    message = re.sub(r"'([^'\n]{80})[^'\n]{40,}'",
                     lambda m: f"'{m.group(1)}...' ({len(m.group(0)) - 2} characters)",
                     message)
    message = " ".join(message.splitlines())
    return message if len(message) <= limit else message[:limit] + "..."


_EPILOG = ("Exit codes: 0 ok, 1 unexpected outcome, 2 usage, 3 XenStore unreachable, "
           "4 configuration error, 5 another process writes for this end, 6 not found, "
           "7 negotiated but not enforced, 8 conformance passed only what it could see, "
           "130 interrupted, 141 output closed. See docs/cli.md.")


def build_parser() -> argparse.ArgumentParser:
    """Return the command line parser of every subcommand."""
    parser = _Parser(
        prog="xenoffload",
        description="Negotiated checksum offload for Xen paravirtual network devices.",
        epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"xenoffload {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug; show: full statuses); also "
                             "after the command")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="log errors only (no warnings); also after the command")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kwargs: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, epilog=_EPILOG, **kwargs)  # type: ignore[arg-type]
        p.add_argument("-v", "--verbose", action="count", default=0, dest="sub_verbose",
                       help="more logging (-v info, -vv debug)")
        p.add_argument("-q", "--quiet", action="store_true", dest="sub_quiet",
                       help="log errors only (no warnings)")
        return p

    def xenstore(p: argparse.ArgumentParser) -> None:
        p.add_argument("--xenstore", metavar="PATH", type=_path,
                       help="XenStore socket or /dev/xen/xenbus (default: $XENSTORED_PATH, "
                            "/var/run/xenstored/socket, /dev/xen/xenbus)")

    def config(p: argparse.ArgumentParser, role: Role) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--config", metavar="FILE", type=Path,
                           help=f"policy file (TOML, docs/configuration.md); default "
                                f"{DEFAULT_CONFIG[role]} if it exists")
        group.add_argument("--no-config", action="store_true",
                           help="ignore the default policy file: built-in policy")

    _add_xenstored_arguments(command(
        "xenstored", help="run the embedded XenStore server",
        description="Run the embedded XenStore daemon (docs/xenstored.md): a privileged dom0 "
                    "socket plus one socket per emulated guest, with C xenstored's quotas. "
                    "Foreground unless --background; READY=1 goes to $NOTIFY_SOCKET once "
                    "every socket listens. Exit status 0 after SIGTERM, 130 after SIGINT, 1 when a "
                    "socket cannot be bound."))

    for name, func, helptext, role in (
            ("backend-agent", cmd_backend_agent, "negotiate every vif of this driver domain",
             Role.BACKEND),
            ("guest-agent", cmd_guest_agent, "negotiate every vif of this guest",
             Role.FRONTEND)):
        p = command(name, help=helptext, description=helptext +
                    ". One agent per end: a second one (or --once beside a running one) "
                    "exits 5 and writes nothing.")
        xenstore(p)
        config(p, role)
        p.add_argument("--toggles", choices=("netlink", "dry-run", "none"), default="netlink",
                       help="how to apply results to kernel devices (default netlink)")
        p.add_argument("--tc", action=argparse.BooleanOptionalAction, default=True,
                       help="also enforce with tc where ethtool cannot (default on; "
                            "docs/toggles.md)")
        p.add_argument("--mode", choices=("companion", "full"), default="companion",
                       help="companion: beside kernel drivers that own `state` (default); "
                            "full: this process is the device model and owns `state`")
        p.add_argument("--once", action="store_true",
                       help="process what is there, print a summary, exit (1 if a vif is not "
                            "Connected); writes like the daemon, so never beside one")
        p.add_argument("--settle", type=_seconds, metavar="SECONDS",
                       help="with --once: stop after this long without events (0.5)")
        p.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                       help="with --once: stop after this long at most (30)")
        p.add_argument("--json", action="store_true",
                       help="with --once: JSON summary (schema: vif-report.schema.json)")
        p.add_argument("--netns", type=_netns, metavar="NAME",
                       help="network namespace of the devices")
        p.add_argument("--device-log", type=_writable_file, metavar="FILE",
                       help="append a line per result applied to a device (the conformance "
                            "suite's device channel, docs/conformance.md)")
        if role is Role.BACKEND:
            p.add_argument("--domid", type=_domid,
                           help="this driver domain (default: read it; 0 where it cannot be)")
            p.add_argument("--device-pattern", type=_pattern(Role.BACKEND), metavar="PATTERN",
                           help="kernel device of a vif (default: the toolstack's vifname, "
                                "else vif{domid}.{devid})")
        else:
            p.add_argument("--domid", type=_domid, help="this guest's domid (default: read it)")
            p.add_argument("--device-pattern", type=_pattern(Role.FRONTEND), metavar="PATTERN",
                           help="kernel device of vif DEVID, e.g. eth{devid} (default: the "
                                "netfront device sysfs lists; none is guessed)")
        p.set_defaults(func=func)

    p = command("show", help="show negotiation state per vif",
                description="Per vif: both ends' states and advertised keys, the negotiated "
                            "result and what each end enforced. In a guest: its own vifs.")
    xenstore(p)
    p.add_argument("vif", nargs="?", type=_vif_spec(need_device=False),
                   metavar="DOMAIN[/DEVICE]",
                   help="a domid or domain name, optionally /DEVID or /MAC (as xl takes them)")
    p.add_argument("--json", action="store_true",
                   help="JSON instead of a table (schema: vif-report.schema.json)")
    p.add_argument("--backend-domid", type=_domid, default=None, metavar="DOMID",
                   help="vifs whose backend is in this domain (default: this domain)")
    p.add_argument("--kernel", choices=("none", "netlink"), default="none",
                   help="also read this domain's device of each vif (its checksum "
                        "features by the kernel's names, with ethtool -k's values)")
    p.add_argument("--device-pattern", type=_pattern(Role.BACKEND), metavar="PATTERN",
                   help="with --kernel: device of a vif (default as the agents)")
    p.add_argument("--netns", type=_netns, metavar="NAME",
                   help="with --kernel: network namespace of the devices")
    p.set_defaults(func=cmd_show)

    p = command("set", help="change policy at run time (renegotiates)",
                description="Write a run-time policy override; running agents renegotiate "
                            "the affected vifs at once.")
    xenstore(p)
    p.add_argument("vif", nargs="?", type=_vif_spec(need_device=True),
                   metavar="DOMAIN/DEVICE",
                   help="one vif: domid or name, then devid or MAC (as xl takes them)")
    p.add_argument("--bridge", type=_bridge, metavar="BR",
                   help="every vif on this bridge (a name or a shell glob, e.g. 'xenpriv*')")
    p.add_argument("--local", type=_devid, metavar="DEVID",
                   help="inside a guest: this guest's own vif DEVID")
    p.add_argument("--tx", type=_on_off, metavar="on|off",
                   help="blank checksums on the vif's transmit (from dom0: to the guest)")
    p.add_argument("--rx", type=_on_off, metavar="on|off",
                   help="blank checksums on the vif's receive")
    p.add_argument("--ipv6", type=_on_off, metavar="on|off",
                   help="IPv6 set apart: --tx/--rx then set IPv4 only, this sets IPv6")
    p.add_argument("--clear", action="store_true", help="remove the override")
    p.add_argument("--backend-domid", type=_domid, default=0, metavar="DOMID",
                   help="the driver domain whose agent the override steers (0)")
    p.set_defaults(func=cmd_set)

    p = command("demo", help="the whole system on this machine (README quick start)")
    p.add_argument("--dry-run", action="store_true", help="simulated devices even when root")
    p.add_argument("--timeout", type=_seconds, default=20.0, metavar="SECONDS",
                   help="how long both vifs may take to connect (20)")
    p.set_defaults(func=cmd_demo)

    p = command("hotplug", help="called by a vif hotplug script (examples/hotplug)",
                description="Negotiate the vif named by $XENBUS_PATH from a hotplug script; "
                            "returns at once, applies in background. add/remove and "
                            "type_if=tap (an HVM guest's emulated NIC) do nothing.")
    xenstore(p)
    p.add_argument("action", choices=("online", "offline", "add", "remove"),
                   help="what the hotplug script was called for (xl's vif script argument)")
    config(p, Role.BACKEND)
    p.add_argument("--toggles", choices=("netlink", "dry-run", "none"), default="netlink",
                   help="how to apply the result to the vif's device (default netlink)")
    p.add_argument("--tc", action=argparse.BooleanOptionalAction, default=True,
                   help="also enforce with tc where ethtool cannot (default on; "
                        "docs/toggles.md)")
    p.add_argument("--wait", type=_seconds, default=60.0, metavar="SECONDS",
                   help="how long the background part waits for Connected")
    p.add_argument("--device-pattern", type=_pattern(Role.BACKEND), metavar="PATTERN",
                   help="device of the vif (default: vifname, $vif, vif{domid}.{devid})")
    p.add_argument("--netns", type=_netns, metavar="NAME",
                   help="network namespace of the device")
    p.add_argument("--log", metavar="FILE",
                   help="where the background part logs (default: nowhere)")
    p.set_defaults(func=cmd_hotplug)

    p = command("units", help="write the systemd units and the hotplug wrapper for this "
                              "installation",
                description="Render xenoffload-backend.service, xenoffload-guest.service and "
                            "vif-bridge-xenoffload with this installation's own command "
                            "(docs/getting-started.md).")
    p.add_argument("--output", type=_directory, metavar="DIR",
                   help="write the files here (e.g. /etc/systemd/system; copy the wrapper to "
                        "/etc/xen/scripts); default: print them")
    p.add_argument("--command", metavar="CMD", type=_command,
                   help="the command to run instead of this installation's entry point")
    p.set_defaults(func=cmd_units)

    p = command("man", help="print the manual page (roff: xenoffload man | man -l -)",
                description="Print xenoffload(1), generated from this command line parser.")
    p.set_defaults(func=cmd_man)

    p = command("conformance", help="run the protocol conformance suite against a frontend "
                                    "or backend implementation",
                description="Start COMMAND once per scenario with XENSTORED_PATH set to an "
                            "embedded xenstored, play the other end, judge it; print a "
                            "pass/fail table (docs/conformance.md).")
    p.add_argument("--role", choices=("backend", "frontend"), required=True,
                   help="the end COMMAND plays")
    p.add_argument("--impl", required=True, metavar="COMMAND", type=_impl,
                   help="shell command; {config}, {mode}, {xenstore} and {device-log} are "
                        "replaced")
    p.add_argument("--junit", type=_writable_file, metavar="FILE",
                   help="also write a JUnit XML report (checked before the run)")
    p.add_argument("--mode", choices=("full", "companion", "all"),
                   help="which scenarios (default: all if COMMAND has {mode}, else full)")
    p.add_argument("--scenario", action="append", default=[], metavar="ID",
                   help="only this scenario (repeatable)")
    p.add_argument("--timeout", type=_seconds, default=10.0, metavar="SECONDS",
                   help="how long to wait for the implementation at each step")
    p.add_argument("--grace", type=_seconds, default=2.0, metavar="SECONDS",
                   help="how long a change may go without any request from the "
                        "implementation before it counts as ignored (default 2)")
    p.add_argument("--require-observable", action="store_true",
                   help="fail a scenario whose decisions could not be checked (no "
                        "xenoffload-csum-result published, no {device-log})")
    p.add_argument("--keep-workdir", action="store_true",
                   help="keep each scenario's lab directory (request log, policy file, the "
                        "implementation's output and device log) and name it")
    p.set_defaults(func=cmd_conformance)

    return parser


def _endpoint_named(args: argparse.Namespace | None) -> str | None:
    """The XenStore endpoint the command used, for an error line (None if unknown)."""
    if args is None or not hasattr(args, "xenstore"):
        return None
    try:
        return resolve_xenstore(args.xenstore)
    except CliError:
        return None


def _output_closed() -> int:
    """stdout was closed by its reader (``show --json | head -1``): stop silently, as other
    Unix tools do, exit 128 + SIGPIPE. Python would complain again when it flushes stdout at
    exit: point it at /dev/null first."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args: argparse.Namespace | None = None
    try:
        if threading.current_thread() is threading.main_thread():
            # From here Ctrl-C is caught below (python -m xenoffload handled it before).
            signal.signal(signal.SIGINT, signal.default_int_handler)
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
        verbose = _verbosity(args)
        level = logging.WARNING - 10 * min(verbose, 2)
        logging.basicConfig(level=level if args.command != "demo"
                            else max(level, logging.WARNING),
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not as Python's complaint at exit
        return code
    except KeyboardInterrupt:
        print("xenoffload: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _output_closed()
    except CliError as error:
        print(f"xenoffload: {_one_line(str(error))}", file=sys.stderr)
        return error.code
    except NotFound as error:
        print(f"xenoffload: {_one_line(str(error))}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except StoreUnavailable as error:
        where = _endpoint_named(args)
        print(f"xenoffload: XenStore unavailable{f' at {where}' if where else ''}: "
              f"{_one_line(str(error))}", file=sys.stderr)
        return EXIT_XENSTORE
    except XenStoreError as error:
        print(f"xenoffload: {_one_line(str(error))}", file=sys.stderr)
        return EXIT_OUTCOME
    except OSError as error:
        what = f"{error.filename}: {error.strerror}" if error.filename and error.strerror \
            else str(error)
        print(f"xenoffload: {_one_line(what)}", file=sys.stderr)
        return EXIT_OUTCOME


if __name__ == "__main__":
    from xenoffload.__main__ import run

    run()
