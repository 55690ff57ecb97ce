"""Benchmark xenoffload's netlink Toggles against shelling out to ethtool and against pyroute2,
and what the tc enforcement costs.

Runs once, as root, in a throwaway network namespace (``xo-bench-<random>``, deleted at the end)
on a veth: one read, one apply with no change, one apply with a change; the same change through
``ethtool -K`` (exec'd inside the namespace, and through ``ip netns exec``) and, when pyroute2 is
installed, through its ioctl-based ``Ethtool``. Also the import time of each module, and two
correctness checks (lost update, fixed-vs-wish) for pyroute2 and for xenoffload.

tc (NetlinkTc): the plan alone (pure), an apply over the simulated kernel (a netfront carrying
its egress rule: reads only), an apply over a real kernel's recorded answers
(tests/toggles/fixtures/kernel-replies.json: the codec decoding real dumps), and on this kernel
an apply with no rule (reads only) and an apply of one egress rule this kernel refuses (no
act_csum: clsact created, filter refused, clsact deleted, read back). Prints a table, or JSON
with ``--json``. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/, xenoffload/

from tests.toggles.replay import Replay, load  # the recorded kernel answers
from xenoffload.schema import Family
from xenoffload.toggles.base import DeviceRef
from xenoffload.toggles.netlink import NetlinkToggles
from xenoffload.toggles.simulated import NETFRONT_ETH, SimulatedKernel
from xenoffload.toggles.tc_base import CsumRule, Hook
from xenoffload.toggles.tc_netlink import NetlinkTc
from xenoffload.toggles.tc_plan import plan

FEATURE = "tx-checksum-ip-generic"
_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def median_us(action: Callable[[int], object], rounds: int) -> float:
    """Return the median wall time of ``action(i)`` over ``rounds`` calls, in microseconds."""
    samples = []
    for index in range(rounds):
        start = time.perf_counter()
        action(index)
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


@contextmanager
def throwaway_namespace() -> Iterator[str]:
    name = f"xo-bench-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "add", "name", "xo0", "type", "veth", "peer", "name", "xo1"],
            check=True,
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def import_time_ms(module: str, rounds: int = 5) -> float:
    """Return the median time a fresh interpreter takes to import ``module``, in ms."""
    code = f"import time; s = time.perf_counter(); import {module}; print(time.perf_counter() - s)"
    samples = [
        float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                             text=True).stdout) * 1e3
        for _ in range(rounds)
    ]  # fmt: skip
    return statistics.median(samples)


def ethtool_in(netns_fd: int) -> Callable[[int], object]:
    """Return an action that execs ``ethtool -K`` directly inside the namespace."""

    def enter() -> None:
        if _libc.setns(netns_fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")

    def action(index: int) -> object:
        value = "off" if index % 2 == 0 else "on"
        return subprocess.run(
            ["ethtool", "-K", "xo0", FEATURE, value], check=True, capture_output=True,
            preexec_fn=enter,
        )  # fmt: skip

    return action


def measure(netns: str, rounds: int, shell_rounds: int) -> dict[str, Any]:
    device = DeviceRef("xo0", netns)
    figures: dict[str, Any] = {}
    with NetlinkToggles() as toggles:
        toggles.read(device)  # opens the socket, resolves the family and the names once
        figures["xenoffload read"] = median_us(lambda _i: toggles.read(device), rounds)
        toggles.apply(device, {FEATURE: True})
        figures["xenoffload apply, no change"] = median_us(
            lambda _i: toggles.apply(device, {FEATURE: True}), rounds
        )
        figures["xenoffload apply, change"] = median_us(
            lambda i: toggles.apply(device, {FEATURE: i % 2 == 1}), rounds
        )
        toggles.apply(device, {FEATURE: True})
    netns_fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        figures["ethtool -K (exec in netns)"] = median_us(ethtool_in(netns_fd), shell_rounds)
    finally:
        os.close(netns_fd)
    figures["ip netns exec ethtool -K"] = median_us(
        lambda i: subprocess.run(
            ["ip", "netns", "exec", netns, "ethtool", "-K", "xo0", FEATURE,
             "off" if i % 2 == 0 else "on"],
            check=True, capture_output=True,
        ),
        shell_rounds,
    )  # fmt: skip
    try:
        from pyroute2 import Ethtool
        from pyroute2 import netns as pyroute2_netns
    except ImportError:
        return figures
    pyroute2_netns.pushns(netns)
    try:
        ethtool = Ethtool()
    finally:
        pyroute2_netns.popns()

    def pyroute2_change(index: int) -> None:
        features = ethtool.get_features("xo0")
        features.features[FEATURE].enable = index % 2 == 1
        ethtool.set_features("xo0", features)

    figures["pyroute2 get_features"] = median_us(lambda _i: ethtool.get_features("xo0"), rounds)
    figures["pyroute2 get+set_features"] = median_us(pyroute2_change, rounds)
    figures["correctness"] = correctness(netns, ethtool)
    ethtool.close()
    return figures


def measure_tc(netns: str, rounds: int) -> dict[str, float]:
    """Return the tc enforcement's figures (µs per call)."""
    egress = [CsumRule(Hook.EGRESS, Family.IPV4)]
    figures: dict[str, float] = {}
    world = SimulatedKernel()
    eth = DeviceRef("eth0", "guest")
    world.add_device(eth, NETFRONT_ETH)
    simulated = NetlinkTc(transport_for=world.rtnetlink)
    simulated.apply(eth, egress)
    state = simulated.read(eth)
    figures["tc plan only (rule in place)"] = median_us(
        lambda _i: plan(state, egress, simulated.config), rounds)
    figures["tc apply, simulated kernel, no change"] = median_us(
        lambda _i: simulated.apply(eth, egress), rounds)
    _kernel, conversations = load()
    recorded = conversations["tc-foreign-filter-at-priority"].exchanges

    def replayed(_index: int) -> object:
        replay = Replay(recorded)
        return NetlinkTc(transport_for=lambda _device: replay).apply(DeviceRef("xo0"), egress)

    figures["tc apply, recorded replies (4 requests)"] = median_us(replayed, rounds)
    device = DeviceRef("xo0", netns)
    with NetlinkTc() as real:
        real.apply(device, [])
        figures["tc apply, this kernel, no rule (2 reads)"] = median_us(
            lambda _i: real.apply(device, []), rounds)
        figures["tc apply, this kernel, refused (no act_csum)"] = median_us(
            lambda _i: real.apply(device, egress), max(rounds // 10, 20))
    return figures


class Timed:
    """A netlink transport that adds the time spent in each exchange to ``spent``."""

    def __init__(self, inner: Any, spent: list[float]) -> None:
        self.inner = inner
        self.spent = spent

    def exchange(self, request: Any, label: str) -> Any:
        start = time.perf_counter()
        try:
            return self.inner.exchange(request, label)
        finally:
            self.spent[0] += time.perf_counter() - start


def measure_enforcement(netns: str, rounds: int, others: int = 1000) -> dict[str, float]:
    """A backend vif's whole enforcement (ethtool + tc), on this kernel's veth and on the dry
    run's simulated one (the VETH profile: this kernel's tc, no act_csum, so both refuse and
    roll back the same ingress rules), with ``others`` more simulated devices in the world
    (its ifindex index): µs per enforcement, and µs of it in the tc transport (the real
    socket's send and receive, or the simulated kernel answering)."""
    from xenoffload.enforce import TogglesEnforcer
    from xenoffload.negotiation import LinkResult
    from xenoffload.schema import FamilyFlags, Role
    from xenoffload.toggles.nl_socket import NETLINK_ROUTE, NamespaceSockets
    from xenoffload.toggles.simulated import VETH

    compute, blank = LinkResult(), LinkResult(FamilyFlags.both(True), FamilyFlags.both(True))
    device = DeviceRef("xo0", netns)
    figures: dict[str, float] = {}
    real_spent, sim_spent = [0.0], [0.0]
    sockets: NamespaceSockets[Any] = NamespaceSockets(NETLINK_ROUTE, lambda t: t)
    toggles = NetlinkToggles()
    world = SimulatedKernel()
    world.add_device(device, VETH)
    for index in range(others):
        world.add_device(DeviceRef(f"vif{index // 4 + 1}.{index % 4}", netns), VETH)
    kinds = {
        "this kernel": (TogglesEnforcer(toggles, device, NetlinkTc(
            transport_for=lambda dev: Timed(sockets.get(dev), real_spent))), real_spent),
        "simulated kernel (dry-run)": (TogglesEnforcer(world, device, NetlinkTc(
            transport_for=lambda dev: Timed(world.rtnetlink(dev), sim_spent))), sim_spent),
    }
    try:
        for kind, (enforcer, spent) in kinds.items():
            enforcer.enforce(Role.BACKEND, blank)
            for name, action in (
                    ("no change", lambda _i, e=enforcer: e.enforce(Role.BACKEND, blank)),
                    ("change", lambda i, e=enforcer: e.enforce(
                        Role.BACKEND, compute if i % 2 == 0 else blank))):
                spent[0] = 0.0
                count = rounds if name == "no change" else max(rounds // 10, 20)
                figures[f"enforce, {name}, {kind}"] = median_us(action, count)
                figures[f"enforce, {name}, {kind}: of it tc transport (mean)"] = \
                    spent[0] / count * 1e6
            enforcer.enforce(Role.BACKEND, blank)
    finally:
        toggles.close()
        sockets.close()
    return figures


def correctness(netns: str, ethtool: Any) -> dict[str, str]:
    """Reproduce a lost update and a fixed-feature request with pyroute2 and with xenoffload."""
    device = DeviceRef("xo0", netns)
    other_writer = ["ip", "netns", "exec", netns, "ethtool", "-K", "xo0", "tx-checksum-sctp"]
    checks = {}
    with NetlinkToggles() as toggles:
        toggles.apply(device, {"tx-checksum-sctp": True, FEATURE: True})
        snapshot = ethtool.get_features("xo0")
        subprocess.run([*other_writer, "off"], check=True, capture_output=True)
        snapshot.features[FEATURE].enable = False
        ethtool.set_features("xo0", snapshot)
        sctp = toggles.read(device)["tx-checksum-sctp"].active
        checks["pyroute2 lost update"] = (
            "other writer's sctp off reverted" if sctp else "other writer's change kept"
        )
        toggles.apply(device, {"tx-checksum-sctp": True, FEATURE: True})
        subprocess.run([*other_writer, "off"], check=True, capture_output=True)
        toggles.apply(device, {FEATURE: False})
        sctp = toggles.read(device)["tx-checksum-sctp"].active
        checks["xenoffload lost update"] = (
            "other writer's sctp off reverted" if sctp else "other writer's change kept"
        )
        snapshot = ethtool.get_features("xo0")
        snapshot.features["tx-checksum-ipv4"].enable = True
        try:
            ethtool.set_features("xo0", snapshot)
            checks["pyroute2 fixed feature on"] = "no error, nothing reported"
        except Exception as error:
            checks["pyroute2 fixed feature on"] = f"{type(error).__name__}: {error}"
        outcome = toggles.apply(device, {"tx-checksum-ipv4": True}).outcome("tx-checksum-ipv4")
        checks["xenoffload fixed feature on"] = f"refused: {outcome.refused_reason}"
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--rounds", type=int, default=2000, help="rounds per in-process figure")
    parser.add_argument("--shell-rounds", type=int, default=40, help="rounds per ethtool exec")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_toggles: needs root (network namespaces)", file=sys.stderr)
        return 2
    with throwaway_namespace() as netns:
        figures = measure(netns, args.rounds, args.shell_rounds)
        tc_figures = measure_tc(netns, args.rounds)
        tc_figures.update(measure_enforcement(netns, args.rounds))
    checks = figures.pop("correctness", {})
    imports = {"xenoffload.toggles.netlink": import_time_ms("xenoffload.toggles.netlink"),
               "xenoffload.toggles.tc_netlink": import_time_ms("xenoffload.toggles.tc_netlink")}
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        pass
    else:
        imports["pyroute2"] = import_time_ms("pyroute2")
    base = figures["xenoffload apply, change"]
    report = {
        "per_call_us": {name: round(value, 1) for name, value in figures.items()},
        "ratio_to_xenoffload_apply_change": {
            name: round(value / base, 2) for name, value in figures.items()
        },
        "tc_per_call_us": {name: round(value, 1) for name, value in tc_figures.items()},
        "import_ms": {name: round(value, 1) for name, value in imports.items()},
        "correctness": checks,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'operation':<34}{'µs/call':>12}{'x xenoffload apply (change)':>30}")
    for name, value in figures.items():
        print(f"{name:<34}{value:>12.1f}{value / base:>30.2f}")
    print()
    for name, value in tc_figures.items():
        print(f"{name:<72}{value:>12.1f} µs")
    print()
    for name, value in imports.items():
        print(f"import {name:<33}{value:>8.1f} ms")
    print()
    for name, value in checks.items():
        print(f"{name:<30} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
