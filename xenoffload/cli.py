"""The ``xenoffload`` command: agents, the embedded XenStore server, show, set, demo, hotplug.

Exit codes (docs/cli.md): 0 success; 1 the job ran but its outcome is not the expected one
(demo expectations, ``--once`` with a vif not Connected, a refused vif); 2 usage error;
3 XenStore unreachable; 4 configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from xenoffload import __version__
from xenoffload.endpoint import Enforcer
from xenoffload.machine import Mode
from xenoffload.negotiation import LinkPolicy
from xenoffload.policy import Policy, PolicyError, VifIdentity, load_policy
from xenoffload.schema import FamilyFlags
from xenoffload.store.base import Store, StoreUnavailable, XenStoreError
from xenoffload.toggles.base import DeviceRef, Toggles

if TYPE_CHECKING:  # the agents are imported only by the commands that run them
    from xenoffload.agents.backend import BackendAgent
    from xenoffload.agents.guest import GuestAgent

__all__ = ["main", "resolve_xenstore", "EXIT_OK", "EXIT_OUTCOME", "EXIT_USAGE",
           "EXIT_XENSTORE", "EXIT_CONFIG"]

EXIT_OK, EXIT_OUTCOME, EXIT_USAGE, EXIT_XENSTORE, EXIT_CONFIG = 0, 1, 2, 3, 4

log = logging.getLogger("xenoffload")


def resolve_xenstore(explicit: str | None) -> str:
    """Return the XenStore endpoint: ``--xenstore``, else ``XENSTORED_PATH``, else
    /var/run/xenstored/socket if it exists, else /dev/xen/xenbus."""
    if explicit:
        return explicit
    env = os.environ.get("XENSTORED_PATH")
    if env:
        return env
    socket_path = "/var/run/xenstored/socket"
    if os.path.exists(socket_path):
        return socket_path
    return "/dev/xen/xenbus"


def _connect(path: str) -> Store:
    from xenoffload.store.pyxs_store import connect_store

    return connect_store(path)


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError("expected on or off")
    return text == "on"


def _make_toggles(kind: str) -> Toggles | None:
    if kind == "none":
        return None
    from xenoffload.toggles import make_toggles

    return make_toggles("netlink" if kind == "netlink" else "dry-run")


def _load_policy(path: str | None, builtin: Policy) -> Policy:
    """Return the policy in ``path`` (its [default] over ``builtin``'s), or ``builtin``."""
    return load_policy(path, builtin.default) if path else builtin


def _device_locator(pattern: str, netns: str | None) -> Callable[..., DeviceRef]:
    def locate(*ids: int) -> DeviceRef:
        names = dict(zip(("domid", "devid"), ids, strict=False)) if len(ids) == 2 \
            else {"devid": ids[0]}
        return DeviceRef(pattern.format(**names), netns)

    return locate


def _guest_ifname(devid: int) -> str:
    """The netfront device of vif ``devid`` (sysfs), falling back to eth<devid>."""
    base = Path(f"/sys/bus/xen/devices/vif-{devid}/net")
    try:
        names = sorted(p.name for p in base.iterdir())
    except OSError:
        names = []
    return names[0] if names else f"eth{devid}"


# ----------------------------------------------------------------------------- commands


def _run_agent(args: argparse.Namespace, logic: BackendAgent | GuestAgent,
               builtin: Policy) -> int:
    """Run an agent as the CLI options say; SIGHUP reloads ``--config`` (its [default] over
    ``builtin``), keeping the running policy when the file does not load."""
    from xenoffload.agents.runner import Runner

    path = resolve_xenstore(args.xenstore)
    runner = Runner(lambda: _connect(path), logic)
    if args.once:
        try:
            runner.backoff_max = 0.5
            runner.run_once(settle_seconds=args.settle, max_seconds=args.timeout)
        except StoreUnavailable as error:
            log.error("XenStore unavailable at %s: %s", path, error)
            return EXIT_XENSTORE
        return _once_outcome(logic, args.json)

    def reload() -> None:
        try:
            new = _load_policy(args.config, builtin)
        except (PolicyError, OSError) as error:
            log.error("policy reload refused, keeping the old one: %s", error)
            return
        logic.set_policy(new)
        log.info("policy reloaded from %s", args.config)

    def on_hup(_signum: int, _frame: object) -> None:
        runner.pending_reload = reload

    def on_term(_signum: int, _frame: object) -> None:
        runner.stop()

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log.info("xenoffload %s agent on %s (mode %s, toggles %s)", __version__, path,
             args.mode, args.toggles)
    runner.run()
    return EXIT_OK


def _once_outcome(logic: BackendAgent | GuestAgent, as_json: bool) -> int:
    from xenoffload.xenbus import XenbusState

    refused = [(str(key), why) for key, why in logic.refused.items()]
    rows = []
    ok = not refused
    for key, endpoint in sorted(logic.endpoints.items()):
        connected = endpoint.machine.own_state is XenbusState.CONNECTED and \
            endpoint.machine.peer_state is XenbusState.CONNECTED
        ok = ok and connected and not endpoint.needs_retry
        rows.append({"vif": str(key), "own_state": str(endpoint.machine.own_state),
                     "peer_state": str(endpoint.machine.peer_state),
                     "result": endpoint.result.describe() if endpoint.result else None,
                     "status": endpoint.enforcement.status if endpoint.enforcement else None})
    for vif, why in sorted(refused):
        rows.append({"vif": vif, "refused": why})
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(" ".join(f"{k}={v}" for k, v in row.items()))
    return EXIT_OK if ok else EXIT_OUTCOME


def cmd_backend_agent(args: argparse.Namespace) -> int:
    from xenoffload.agents.backend import BackendAgent
    from xenoffload.enforce import TogglesEnforcer

    policy = _load_policy(args.config, Policy())
    locate = _device_locator(args.device_pattern, args.netns)
    toggles = _make_toggles(args.toggles)

    def enforcer(vif: VifIdentity) -> Enforcer | None:
        if toggles is None:
            return None
        device = DeviceRef(vif.vifname, args.netns) if vif.vifname else \
            locate(vif.domid, vif.devid)
        return TogglesEnforcer(toggles, device)

    return _run_agent(args, BackendAgent(policy, args.domid, Mode(args.mode), enforcer),
                      Policy())


#: The guest agent's built-in policy: take whatever the backend offers (docs/agents.md).
GUEST_DEFAULT = Policy(LinkPolicy(FamilyFlags.both(True), FamilyFlags.both(True)))


def cmd_guest_agent(args: argparse.Namespace) -> int:
    from xenoffload.agents.guest import GuestAgent
    from xenoffload.enforce import TogglesEnforcer

    policy = _load_policy(args.config, GUEST_DEFAULT)
    domid = args.domid
    if domid is None:
        try:
            store = _connect(resolve_xenstore(args.xenstore))
            raw = store.try_read("domid")
            store.close()
        except StoreUnavailable as error:
            log.error("XenStore unavailable: %s", error)
            return EXIT_XENSTORE
        if raw is None or not raw.isdigit():
            log.error("cannot tell this guest's domid (no readable 'domid'); use --domid")
            return EXIT_USAGE
        domid = int(raw)

    toggles = _make_toggles(args.toggles)

    def enforcer(vif: VifIdentity) -> Enforcer | None:
        if toggles is None:
            return None
        name = args.device_pattern.format(devid=vif.devid) if args.device_pattern \
            else _guest_ifname(vif.devid)
        return TogglesEnforcer(toggles, DeviceRef(name, args.netns))

    return _run_agent(args, GuestAgent(policy, domid, Mode(args.mode), enforcer),
                      GUEST_DEFAULT)


def cmd_show(args: argparse.Namespace) -> int:
    from xenoffload.show import collect, list_vifs, render_json, render_table

    guest = devid = None
    if args.vif:
        guest, devid = _parse_vif(args.vif, allow_domid_only=True)
    store = _connect(resolve_xenstore(args.xenstore))
    try:
        vifs = [v for v in list_vifs(store, args.backend_domid, guest)
                if devid is None or v.devid == devid]
        reports = collect(store, vifs)
    finally:
        store.close()
    toggles = _make_toggles(args.kernel)
    if toggles is not None:
        locate = _device_locator(args.device_pattern, args.netns)
        from xenoffload.toggles.base import ToggleError

        enriched = []
        for report in reports:
            device = locate(report.guest_domid, report.devid)
            try:
                features = toggles.read(device)
                kernel = {str(device): {name: state.active for name, state in features.items()
                                        if "checksum" in name}}
            except ToggleError as error:
                kernel = {str(device): {f"unreadable: {error}": False}}
            enriched.append(attrs.evolve(report, kernel=kernel))
        reports = enriched
    print(render_json(reports) if args.json else render_table(reports))
    return EXIT_OK


def _parse_vif(text: str, allow_domid_only: bool = False) -> tuple[int, int | None]:
    domid_text, _, devid_text = text.partition("/")
    if not domid_text.isdigit() or (devid_text and not devid_text.isdigit()) or (
            not devid_text and not allow_domid_only):
        raise argparse.ArgumentTypeError(f"expected DOMID/DEVID, got {text!r}")
    return int(domid_text), int(devid_text) if devid_text else None


def cmd_set(args: argparse.Namespace) -> int:
    from xenoffload.overrides import OverrideSetting, clear_override, write_override
    from xenoffload.paths import domain_path
    from xenoffload.policy import DirectionSetting

    store = _connect(resolve_xenstore(args.xenstore))
    try:
        if args.local is not None:
            raw = store.try_read("domid")
            if raw is None or not raw.isdigit():
                print("xenoffload set --local: cannot read this guest's domid", file=sys.stderr)
                return EXIT_USAGE
            home, key = domain_path(int(raw)), f"vif/{args.local}"
            # In the guest, tx is the guest's transmit: from-guest; rx is to-guest.
            tx_dir, rx_dir = "from_guest", "to_guest"
        else:
            home = domain_path(args.backend_domid)
            if args.bridge:
                key = f"bridge/{args.bridge}"
            elif args.vif:
                guest, devid = _parse_vif(args.vif)
                key = f"vif/{guest}/{devid}"
            else:
                print("xenoffload set: name DOMID/DEVID, --bridge BR or --local DEVID",
                      file=sys.stderr)
                return EXIT_USAGE
            # From dom0, tx is the vif's transmit (ethtool -K vifD.N tx): to-guest.
            tx_dir, rx_dir = "to_guest", "from_guest"
        if args.clear:
            path = clear_override(store, home, key)
            print(f"cleared {path}")
            return EXIT_OK
        if args.tx is None and args.rx is None:
            print("xenoffload set: give --tx and/or --rx (or --clear)", file=sys.stderr)
            return EXIT_USAGE
        directions: dict[str, DirectionSetting] = {}
        for flag, direction in ((args.tx, tx_dir), (args.rx, rx_dir)):
            if flag is not None:
                ipv6 = flag if args.ipv6 is None else (flag and args.ipv6)
                directions[direction] = DirectionSetting(flag, ipv6)
        setting = OverrideSetting(**directions)
        path = write_override(store, home, key, setting)
        print(f"set {path}")
        return EXIT_OK
    finally:
        store.close()


def cmd_demo(args: argparse.Namespace) -> int:
    from xenoffload.demo import run_demo

    return run_demo(dry_run=True if args.dry_run else None, timeout=args.timeout)


def cmd_hotplug(args: argparse.Namespace) -> int:
    from xenoffload.hotplug import run_hotplug

    return run_hotplug(args.action, args.config, args.toggles, resolve_xenstore(args.xenstore),
                       args.wait, args.device_pattern, args.netns, args.log)


def cmd_conformance(args: argparse.Namespace) -> int:
    from xenoffload.conformance.command import run_command_suite
    from xenoffload.schema import Role

    try:
        return run_command_suite(Role(args.role), args.impl, args.junit, args.mode,
                                 tuple(args.scenario), args.timeout)
    except KeyError as error:
        print(f"xenoffload conformance: unknown scenario {error}", file=sys.stderr)
        return EXIT_USAGE


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xenoffload",
        description="Negotiated checksum offload for Xen paravirtual network devices.",
        epilog="Exit codes: 0 ok, 1 unexpected outcome, 2 usage, 3 XenStore unreachable, "
               "4 configuration error. See docs/cli.md.")
    parser.add_argument("--version", action="version", version=f"xenoffload {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--xenstore", metavar="PATH",
                       help="XenStore socket or /dev/xen/xenbus (default: $XENSTORED_PATH, "
                            "/var/run/xenstored/socket, /dev/xen/xenbus)")

    # Dispatched in main() before parsing; listed here for --help.
    sub.add_parser("xenstored", help="run the embedded XenStore server (see its --help)",
                   add_help=False)

    for name, func, helptext in (
            ("backend-agent", cmd_backend_agent, "negotiate every vif of this driver domain"),
            ("guest-agent", cmd_guest_agent, "negotiate every vif of this guest")):
        p = sub.add_parser(name, help=helptext, description=helptext)
        common(p)
        p.add_argument("--config", metavar="FILE", help="policy file (TOML, docs/configuration.md)")
        p.add_argument("--toggles", choices=("netlink", "dry-run", "none"), default="netlink",
                       help="how to apply results to kernel devices (default netlink)")
        p.add_argument("--mode", choices=("companion", "full"), default="companion",
                       help="companion: beside kernel drivers that own `state` (default); "
                            "full: this process is the device model and owns `state`")
        p.add_argument("--once", action="store_true",
                       help="process what is there, then exit (1 if a vif is not Connected)")
        p.add_argument("--settle", type=float, default=0.5, metavar="SECONDS",
                       help="with --once: stop after this long without events")
        p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                       help="with --once: stop after this long at most")
        p.add_argument("--json", action="store_true", help="with --once: JSON summary")
        p.add_argument("--netns", metavar="NAME", help="network namespace of the devices")
        if name == "backend-agent":
            p.add_argument("--domid", type=int, default=0, help="this driver domain (0)")
            p.add_argument("--device-pattern", default="vif{domid}.{devid}",
                           help="kernel device of a vif (default vif{domid}.{devid})")
        else:
            p.add_argument("--domid", type=int, help="this guest's domid (default: read it)")
            p.add_argument("--device-pattern", default=None,
                           help="kernel device of vif DEVID, e.g. eth{devid} "
                                "(default: from sysfs)")
        p.set_defaults(func=func)

    p = sub.add_parser("show", help="show negotiation state per vif",
                       description="Per vif: both ends' states and advertised keys, the "
                                   "negotiated result and what each end enforced.")
    common(p)
    p.add_argument("vif", nargs="?", metavar="DOMID[/DEVID]")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument("--backend-domid", type=int, default=0)
    p.add_argument("--kernel", choices=("none", "netlink"), default="none",
                   help="also read the backend devices' checksum features")
    p.add_argument("--device-pattern", default="vif{domid}.{devid}")
    p.add_argument("--netns", metavar="NAME")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("set", help="change policy at run time (renegotiates)",
                       description="Write a run-time policy override; running agents "
                                   "renegotiate the affected vifs at once.")
    common(p)
    p.add_argument("vif", nargs="?", metavar="DOMID/DEVID")
    p.add_argument("--bridge", metavar="BR", help="every vif on this bridge")
    p.add_argument("--local", type=int, metavar="DEVID",
                   help="inside a guest: this guest's own vif DEVID")
    p.add_argument("--tx", type=_on_off, metavar="on|off",
                   help="blank checksums on the vif's transmit (from dom0: to the guest)")
    p.add_argument("--rx", type=_on_off, metavar="on|off",
                   help="blank checksums on the vif's receive")
    p.add_argument("--ipv6", type=_on_off, metavar="on|off",
                   help="off: keep IPv6 checksums computed whatever --tx/--rx say")
    p.add_argument("--clear", action="store_true", help="remove the override")
    p.add_argument("--backend-domid", type=int, default=0)
    p.set_defaults(func=cmd_set)

    p = sub.add_parser("demo", help="the whole system on this machine (README quick start)")
    p.add_argument("--dry-run", action="store_true",
                   help="simulated devices even when root")
    p.add_argument("--timeout", type=float, default=20.0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("hotplug", help="called by a vif hotplug script (examples/)",
                       description="Negotiate the vif named by $XENBUS_PATH/$vif from a "
                                   "hotplug script; returns at once, applies in background.")
    common(p)
    p.add_argument("action", choices=("online", "add", "offline", "remove"))
    p.add_argument("--config", metavar="FILE")
    p.add_argument("--toggles", choices=("netlink", "dry-run", "none"), default="netlink")
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="how long the background part waits for Connected")
    p.add_argument("--device-pattern", default="vif{domid}.{devid}")
    p.add_argument("--netns", metavar="NAME")
    p.add_argument("--log", metavar="FILE",
                   help="where the background part logs (default: nowhere)")
    p.set_defaults(func=cmd_hotplug)

    p = sub.add_parser("conformance", help="run the protocol conformance suite against a "
                                           "frontend or backend implementation",
                       description="Start COMMAND once per scenario with XENSTORED_PATH set "
                                   "to an embedded xenstored, play the other end, judge it; "
                                   "print a pass/fail table (docs/conformance.md).")
    p.add_argument("--role", choices=("backend", "frontend"), required=True,
                   help="the end COMMAND plays")
    p.add_argument("--impl", required=True, metavar="COMMAND",
                   help="shell command; {config}, {mode} and {xenstore} are replaced")
    p.add_argument("--junit", type=Path, metavar="FILE", help="also write a JUnit XML report")
    p.add_argument("--mode", choices=("full", "companion", "all"),
                   help="which scenarios (default: all if COMMAND has {mode}, else full)")
    p.add_argument("--scenario", action="append", default=[], metavar="ID",
                   help="only this scenario (repeatable)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="how long to wait for the implementation at each step")
    p.set_defaults(func=cmd_conformance)

    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["xenstored"]:
        # Its own parser takes every option (argparse's REMAINDER would not take "--socket").
        from xenoffload.xenstored.server import serve_main

        return serve_main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level if args.command != "demo" else max(level, logging.WARNING),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except argparse.ArgumentTypeError as error:
        print(f"xenoffload: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (PolicyError, OSError) as error:
        if isinstance(error, OSError) and not isinstance(error, PolicyError) and \
                error.filename is None:
            raise
        print(f"xenoffload: configuration: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreUnavailable as error:
        print(f"xenoffload: XenStore unavailable: {error}", file=sys.stderr)
        return EXIT_XENSTORE
    except XenStoreError as error:
        print(f"xenoffload: {error}", file=sys.stderr)
        return EXIT_OUTCOME


if __name__ == "__main__":
    raise SystemExit(main())
