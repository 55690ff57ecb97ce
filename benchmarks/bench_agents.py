"""Benchmark the backend agent on the path users run, against a minimal backend in the same run.

Every part is its own process (benchmarks/agentlab.py): the embedded xenstored, the agent as
users start it (``xenoffload backend-agent --mode full --toggles dry-run --config FILE``), a
scripted frontend for every guest (one dom0 connection), and the benchmark itself acting as
the toolstack and the operator. 250 guests x 4 vifs by default, laid out as libxl does before
anything is timed.

One *run* is two worlds on fresh servers, in alternating order from run to run:

* **minimal**: a backend doing only the requests the protocol needs, one blocking round trip
  at a time (agentlab.run_minimal): connect every vif; a flip (every vif's keys and result
  rewritten, one transaction each); a reboot of every guest.
* **agent**: the empty agent's RSS and start-up CPU (no vifs yet); then connect every vif; a
  flip through ``xenoffload set --bridge xenbr0 --tx on --rx on`` (a real subprocess) until
  every backend advertises it, and back with ``set --bridge xenbr0 --clear``; the same
  through SIGHUP with a changed policy file, and back; a reboot of every guest (frontends
  Closing, Closed and Initialising once their backend closed, Connected again); a restart of
  the agent on the connected fleet (rescan, nothing to change); a well-behaved guest's new
  vifs during a 60,000-flap attack by another guest on its own guest socket (its vif's
  ``state`` Initialising <-> Connected, pipelined, bounded), and the reconnects the agent's
  log shows; the server's own pipelined throughput (the bound on anything that talks to it).

Times run from the moment the command is given (process started, signal sent) until the
scripted frontend sees the last backend reach the goal; *quiescent* is when the agent's CPU
went flat after it (issue 10: within 1 s per 1,000 vifs). Agent CPU comes from
/proc/PID/task/*/schedstat, RSS from /proc/PID/status. Requests are counted per client and
type from xenstored's trace in one extra *traced* run of the same phases (the trace halves
the server's throughput, so no time is taken from it). Figures are medians over the runs
with their spread (min-max); ratios are taken within one run, then summarised. Prints a table
(targets of issue 11 beside each figure), or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import agentlab as lab

from xenoffload.devicelog import read_device_log
from xenoffload.negotiation import LinkResult
from xenoffload.schema import FamilyFlags, Role
from xenoffload.store.pyxs_store import PyxsStore
from xenoffload.toggles.base import DeviceRef
from xenoffload.toolstack import create_vif
from xenoffload.xs.wire import HEADER, Op

GUESTS, PER_GUEST = 250, 4
ATTACKER, WELL_BEHAVED = 1, 2
FLAPS = 60_000
TIMEOUT = 120.0
ALLOW_ALL = "[default]\nto-guest = true\nfrom-guest = true\n"
SET = ("--bridge", lab.BRIDGE)

#: Issue 11's targets (and issue 10's quiescence), by figure.
TARGETS = {
    "connect_requests_per_vif": ("<=", 17.0),
    "connect_s": ("<", 3.0),
    "connect_ratio": ("<=", 1.2),
    "set_flip_s": ("<", 1.0),
    "set_flip_requests_per_vif": ("<=", 8.0),
    "hup_flip_s": ("<", 1.0),
    "hup_flip_requests_per_vif": ("<=", 8.0),
    "attack_new_vif_max_s": ("<", 0.5),
    "attack_reconnects": ("<=", 0),
    "cpu_ms_per_vif": ("<=", 1.0),
    "rss_kib_per_vif": ("<=", 20.0),
    # Issue 10: quiescence within one second per 1,000 vifs after a change of override,
    # policy file, daemon or device layout.
    "set_flip_quiescent_s": ("<", 1.0 * GUESTS * PER_GUEST / 1000),
    "hup_flip_quiescent_s": ("<", 1.0 * GUESTS * PER_GUEST / 1000),
    "restart_quiescent_s": ("<", 1.0 * GUESTS * PER_GUEST / 1000),
    "recreate_quiescent_after_s": ("<", 1.0 * GUESTS * PER_GUEST / 1000),
}


#: What any backend must send per vif, whatever its design (benchmarks/README.md): connect =
#: discovery (0.25: the root's and each guest's listing) + the ``frontend`` link check (1) +
#: keys and InitWait in one transaction (start, 5 keys, state, end: 8) + the frontend's
#: state and 6 keys read and Connected, status and result written in one transaction (12);
#: a flip of every key = start, 5 keys, result, status (it changes with tc), end. Without the
#: guard read of the own ``state`` a write can re-create a removed device, so the agent sends
#: one more read per step.
FLOORS = {"connect_requests_per_vif": 21.25, "set_flip_requests_per_vif": 9.0,
          "hup_flip_requests_per_vif": 9.0}


# ------------------------------------------------------------------------------- helpers


def xenoffload(socket: str, *args: str) -> float:
    """Run ``xenoffload ARGS --xenstore SOCKET``; return its wall time."""
    start = time.monotonic()
    subprocess.run(lab.python_command("-m", "xenoffload", *args, "--xenstore", socket),
                   check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


class Timer:
    """One phase: when it began, the CPU the backend under test, the server and the scripted
    frontend used during it, and when the backend went quiet."""

    def __init__(self, world: World, proc: lab.Proc) -> None:
        self.procs = {"": proc, "server_": world.server.proc, "frontend_": world.frontend.proc}
        self.cpu = {name: each.cpu_s() for name, each in self.procs.items()}
        self.start = time.monotonic()

    def quiet(self) -> tuple[float, float]:
        """Wait until the backend is idle; return (seconds to quiescence, its CPU seconds)."""
        idle = self.procs[""].wait_idle(timeout=TIMEOUT)
        return idle - self.start, self.procs[""].cpu_s() - self.cpu[""]

    def cpu_used(self) -> dict[str, float]:
        return {name: each.cpu_s() - self.cpu[name] for name, each in self.procs.items()}


def phase_end(world: World, name: str, figures: dict[str, Any], timer: Timer,
              done: float) -> None:
    """Record a phase: its time (to ``done``), quiescence, the CPU each process used (the
    backend's up to quiescence), then its trace marker."""
    figures[f"{name}_s"] = done - timer.start
    figures[f"{name}_quiescent_s"], figures[f"{name}_cpu_s"] = timer.quiet()
    for who, used in timer.cpu_used().items():
        if who:
            figures[f"{name}_{who}cpu_s"] = used
    world.server.mark(name)


class World:
    """A server, the layout and the scripted frontend, in a temporary directory."""

    def __init__(self, tmp: Path, guests: int, per_guest: int, trace: bool,
                 paced: bool = False) -> None:
        self.tmp = tmp
        self.server = lab.Server(tmp, trace, guests=[ATTACKER])
        self.vifs = lab.lay_out(self.server.socket, list(range(1, guests + 1)), per_guest)
        self.frontend = lab.Frontend(self.server.socket, paced)
        self.server.mark("layout")

    def goal(self, command: str) -> None:
        self.frontend.send(command)

    def done(self) -> float:
        return self.frontend.wait_done(TIMEOUT)

    def close(self) -> None:
        self.frontend.close()
        self.server.close()


# ------------------------------------------------------------------------------- minimal


def minimal_world(world: World) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    minimal = lab.Minimal(world.server.socket)
    try:
        timer = Timer(world, minimal.proc)
        world.goal("connected")
        phase_end(world, "connect", figures, timer, world.done())
        if minimal.line(TIMEOUT) != "ready":
            raise RuntimeError("minimal backend did not report")

        timer = Timer(world, minimal.proc)
        minimal.send("flip 1")
        line = minimal.line(TIMEOUT)
        if not line.startswith("flipped "):
            raise RuntimeError(f"minimal backend: {line}")
        phase_end(world, "flip", figures, timer, float(line.split()[1]))

        timer = Timer(world, minimal.proc)
        world.goal("reboot")
        phase_end(world, "reboot", figures, timer, world.done())
        figures["cpu_connect_s"] = figures["connect_cpu_s"]
    finally:
        minimal.close()
    return figures


# ------------------------------------------------------------------------------- agent


def agent_world(world: World, attack: bool, flaps: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    socket = world.server.socket
    config = world.tmp / "policy.toml"
    config.write_text("")
    log = world.tmp / "agent.log"

    agent = lab.Agent(socket, config, log)
    try:
        timer = Timer(world, agent.proc)
        world.goal("connected")
        phase_end(world, "connect", figures, timer, world.done())
        figures["rss_kib"] = agent.proc.rss_kib()

        world.goal("key feature-csum-tx 1")
        timer = Timer(world, agent.proc)
        figures["set_process_s"] = xenoffload(socket, "set", *SET, "--tx", "on", "--rx", "on")
        phase_end(world, "set_flip", figures, timer, world.done())

        world.goal("key feature-csum-tx 0")
        timer = Timer(world, agent.proc)
        figures["clear_process_s"] = xenoffload(socket, "set", *SET, "--clear")
        phase_end(world, "set_clear", figures, timer, world.done())

        config.write_text(ALLOW_ALL)
        world.goal("key feature-csum-tx 1")
        timer = Timer(world, agent.proc)
        agent.hup()
        phase_end(world, "hup_flip", figures, timer, world.done())

        config.write_text("")
        world.goal("key feature-csum-tx 0")
        timer = Timer(world, agent.proc)
        agent.hup()
        phase_end(world, "hup_back", figures, timer, world.done())

        timer = Timer(world, agent.proc)
        world.goal("reboot")
        phase_end(world, "reboot", figures, timer, world.done())

        timer = Timer(world, agent.proc)
        world.goal("recreate")
        lab.recreate(socket, world.vifs)
        figures["recreate_toolstack_s"] = time.monotonic() - timer.start
        phase_end(world, "recreate", figures, timer, world.done())
        figures["recreate_quiescent_after_s"] = \
            figures["recreate_quiescent_s"] - figures["recreate_toolstack_s"]
        figures["cpu_total_s"] = agent.proc.cpu_s()
    finally:
        agent.close()

    agent = lab.Agent(socket, config, log)
    try:
        timer = Timer(world, agent.proc)
        figures["restart_quiescent_s"], figures["restart_cpu_s"] = timer.quiet()
        world.server.mark("restart")
        if attack:
            figures.update(fairness(world, agent, flaps))
        figures["reconnects"] = lab.count_lines(agent.log_lines(), "lost XenStore",
                                                "rescan kept conflicting")
        figures["eagain_give_ups"] = lab.count_lines(agent.log_lines(), "conflicted (EAGAIN)")
        figures["throttled"] = lab.count_lines(agent.log_lines(), "throttled")
    finally:
        agent.close()
    return figures


def wait_backend_state(store: PyxsStore, vif: lab.Vif, wanted: bytes, timeout: float
                       ) -> float:
    """Wait until vif's backend ``state`` is ``wanted`` (a watch on it); return when."""
    path = f"{lab.backend_dir(vif)}/state"
    store.watch(path, "latency")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if store.try_read(path) == wanted:
                return time.monotonic()
            store.next_events(max(0.0, deadline - time.monotonic()), 1 << 16)
        raise TimeoutError(f"{path} never became {wanted!r}")
    finally:
        store.unwatch(path, "latency")


def new_vif_latency(world: World, watcher: PyxsStore, devid: int) -> float:
    """Create a vif of the well-behaved guest as libxl does; return the seconds until its
    backend is Connected."""
    vif = (WELL_BEHAVED, devid)
    start = time.monotonic()
    create_vif(world.server.store, lab.vif_spec(vif))
    return wait_backend_state(watcher, vif, lab.CONNECTED, 30.0) - start


def fairness(world: World, agent: lab.Agent, flaps: int) -> dict[str, Any]:
    """New vifs of a well-behaved guest during a flapping attack by another guest."""
    figures: dict[str, Any] = {}
    watcher = PyxsStore(world.server.socket, timeout=60.0)
    devid = PER_GUEST
    try:
        quiet = []
        for _ in range(3):
            quiet.append(new_vif_latency(world, watcher, devid))
            devid += 1
        figures["new_vif_quiet_s"] = quiet
        world.frontend.send(f"ignore {ATTACKER} 0")
        cpu = agent.proc.cpu_s()
        flapper = subprocess.Popen(
            lab.python_command(str(lab.HERE), "flap", world.server.guest_sockets[ATTACKER],
                               str(ATTACKER), "0", str(flaps)),
            stdout=subprocess.PIPE, text=True)
        assert flapper.stdout is not None
        started = float(flapper.stdout.readline().split()[1])
        during = []
        while flapper.poll() is None:
            during.append(new_vif_latency(world, watcher, devid))
            devid += 1
            time.sleep(0.05)
        line = flapper.stdout.readline().split()
        ended = float(line[1]) if line else time.monotonic()
        converged = wait_backend_state(watcher, (ATTACKER, 0), lab.INIT_WAIT, TIMEOUT)
        idle = agent.proc.wait_idle(timeout=TIMEOUT)
        figures.update({
            "attack_flaps": flaps,
            "attack_s": ended - started,
            "attack_flaps_per_s": flaps / max(ended - started, 1e-9),
            "new_vif_during_attack_s": during,
            "attacked_vif_converged_after_s": max(0.0, converged - ended),
            "attack_quiescent_after_s": max(0.0, idle - ended),
            "attack_agent_cpu_s": agent.proc.cpu_s() - cpu,
        })
    finally:
        watcher.close()
    return figures


# ------------------------------------------------------------------------------- bounds


def server_throughput(socket: str, count: int = 20_000) -> dict[str, float]:
    """Requests per second the server answers on one connection with every request in flight
    at once (raw socket: no client library cost): READs, and transactions of one guard READ,
    seven WRITEs and the end (the shape of a flip)."""
    import socket as sockets
    import threading

    def pipelined(frames: list[bytes]) -> float:
        sock = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
        sock.connect(socket)
        data = b"".join(frames)
        start = time.perf_counter()
        sender = threading.Thread(target=sock.sendall, args=(data,))
        sender.start()
        got, buf = 0, b""
        while got < len(frames):
            buf += sock.recv(1 << 16)
            while len(buf) >= HEADER.size:
                size = HEADER.unpack_from(buf)[3]
                if len(buf) < HEADER.size + size:
                    break
                kind = HEADER.unpack_from(buf)[0]
                buf = buf[HEADER.size + size:]
                if kind != Op.WATCH_EVENT:
                    got += 1
        elapsed = time.perf_counter() - start
        sender.join()
        sock.close()
        return len(frames) / elapsed

    def frame(op: int, req: int, tx: int, payload: bytes) -> bytes:
        return HEADER.pack(op, req, tx, len(payload)) + payload

    path = b"/bench/3/1"
    pipelined([frame(Op.WRITE, 0, 0, path + b"/state\0" + b"4")])
    rates = {"read_per_s": pipelined([frame(Op.READ, i, 0, path + b"/state\0")
                                      for i in range(count)])}
    # Transaction ids count from 1 on a new connection: each TRANSACTION_START gets the next.
    body: list[bytes] = []
    for tx in range(1, count // 10 + 1):
        body.append(frame(Op.TRANSACTION_START, 0, 0, b"\0"))
        body.append(frame(Op.READ, 1, tx, path + b"/state\0"))
        for key in range(7):
            body.append(frame(Op.WRITE, 2, tx, path + f"/key{key}\0".encode() + b"1"))
        body.append(frame(Op.TRANSACTION_END, 3, tx, b"T\0"))
    rates["flip_txn_requests_per_s"] = pipelined(body)
    return rates


def startup_costs() -> dict[str, float]:
    """Wall time of a bare interpreter, of ``xenoffload --version`` and of ``xenoffload set
    --help`` (import cost of the CLI path), medians of 5."""
    def wall(*args: str) -> float:
        times = []
        for _ in range(5):
            start = time.monotonic()
            subprocess.run(lab.python_command(*args), check=True, stdout=subprocess.DEVNULL)
            times.append(time.monotonic() - start)
        return statistics.median(times)

    return {"python_s": wall("-c", "pass"),
            "cli_version_s": wall("-m", "xenoffload", "--version"),
            "cli_set_help_s": wall("-m", "xenoffload", "set", "--help")}


def client_cost(socket: str, count: int = 10_000) -> dict[str, float]:
    """CPU microseconds the client library (PyxsStore) spends per request: pipelined (a
    batch, as the agent sends them) and one blocking round trip at a time (the minimal
    backend), measured in this process on the server given."""
    with PyxsStore(socket) as store:
        store.write("/bench/client", b"1")
        start = time.process_time()
        store.read_batch([(None, "/bench/client")] * count)
        pipelined = (time.process_time() - start) / count * 1e6
        start = time.process_time()
        for _ in range(count // 5):
            store.read("/bench/client")
        blocking = (time.process_time() - start) / (count // 5) * 1e6
    return {"pipelined_us": pipelined, "blocking_us": blocking}


def enforcement_cost(vifs: int) -> dict[str, float]:
    """CPU milliseconds per vif of the agent's enforcement under ``--toggles dry-run`` (tc on),
    in this process: the same enforcers over simulated devices (the simulated kernel
    answers the ethtool and tc requests), the connect's result on every vif, then the
    flip's."""
    from xenoffload.enforce import make_enforcers

    enforcers = make_enforcers("dry-run", tc=True)
    try:
        devices = [enforcers.for_device(DeviceRef(f"vif{guest}.{devid}", None))
                   for guest in range(1, vifs // PER_GUEST + 2) for devid in range(PER_GUEST)]
        devices = devices[:vifs]
        figures = {}
        for name, flag in (("connect", False), ("flip", True)):
            result = LinkResult(FamilyFlags(flag, flag), FamilyFlags(flag, flag))
            start = time.process_time()
            for enforcer in devices:
                enforcer.enforce(Role.BACKEND, result)
            figures[f"{name}_ms_per_vif"] = (time.process_time() - start) * 1000 / vifs
        return figures
    finally:
        enforcers.close()


# ------------------------------------------------------------------------------- runs


def in_world(guests: int, per_guest: int, trace: bool,
             body: Callable[[World], dict[str, Any]], paced: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="xob-", dir="/tmp") as tmp:
        world = World(Path(tmp), guests, per_guest, trace, paced)
        try:
            figures = body(world)
            if not trace:
                figures["server"] = server_throughput(world.server.socket)
                figures["client"] = client_cost(world.server.socket)
        finally:
            world.close()
        if trace:
            assert world.server.trace is not None
            spans = lab.requests_by_client(world.server.trace)
            figures["requests"] = {span: {client: dict(counts) for client, counts
                                          in found.by_client.items()}
                                   for span, found in spans.items()}
        return figures


def empty_agent() -> dict[str, float]:
    """The agent's RSS and CPU once started and idle with no vif (nothing laid out), its
    CPU while idle, and how long after a SIGHUP it reloads its file (``-v``: its log says
    "policy reloaded"; the longest of 5)."""
    with tempfile.TemporaryDirectory(prefix="xob-", dir="/tmp") as tmp:
        server = lab.Server(Path(tmp))
        config = Path(tmp) / "policy.toml"
        config.write_text("")
        agent = lab.Agent(server.socket, config, Path(tmp) / "agent.log", extra=["-v"])
        try:
            agent.proc.wait_idle(timeout=TIMEOUT)
            cpu, rss = agent.proc.cpu_s(), agent.proc.rss_kib()
            time.sleep(1.0)
            figures = {"rss_kib": rss, "cpu_s": cpu,
                       "idle_cpu_ms_per_s": (agent.proc.cpu_s() - cpu) * 1000}
            latencies = []
            for count in range(1, 6):
                start = time.monotonic()
                agent.hup()
                while lab.count_lines(agent.log_lines(), "policy reloaded") < count:
                    if time.monotonic() - start > 10:
                        raise TimeoutError("the agent did not reload its policy")
                    time.sleep(0.001)
                latencies.append(time.monotonic() - start)
                time.sleep(0.1 + 0.1 * count)  # signals at different points of the idle wait
            figures["hup_reload_max_s"] = max(latencies)
            return figures
        finally:
            agent.close()
            server.close()


def one_run(index: int, args: argparse.Namespace) -> dict[str, Any]:
    g, n = args.guests, args.vifs_per_guest
    order = ["minimal", "agent"] if index % 2 == 0 else ["agent", "minimal"]
    run: dict[str, Any] = {}
    for which in order:
        if which == "minimal":
            run["minimal"] = in_world(g, n, False, minimal_world)
        else:
            run["agent"] = in_world(g, n, False,
                                    lambda w: agent_world(w, not args.no_attack, args.flaps))
    return run


# ------------------------------------------------------------------------------- paced

#: The paced comparison's backends: the minimal backend with and without the kernel work,
#: the agent with ``--toggles dry-run`` and ``--toggles none``.
PACED = ("minimal_enforce", "agent_dry_run", "minimal", "agent_none")
PACED_TARGETS = {"paced_dry_run_ratio": ("<=", 1.2), "paced_none_ratio": ("<=", 1.2),
                 "paced_requests_per_vif": ("<=", 20.0),
                 "paced_dry_run_cpu_ms_per_vif": ("<=", 1.0),
                 "paced_none_cpu_ms_per_vif": ("<=", 0.5)}


def paced_backend(which: str) -> Callable[[World], dict[str, Any]]:
    """Connect every vif with the paced frontend (each guest answering alone, one blocking
    round trip at a time) and ``which`` backend; the phase's time, CPU and quiescence."""
    def body(world: World) -> dict[str, Any]:
        figures: dict[str, Any] = {}
        config = world.tmp / "policy.toml"
        config.write_text("")
        backend: lab.Minimal | lab.Agent
        if which.startswith("minimal"):
            backend = lab.Minimal(world.server.socket, enforce=which == "minimal_enforce")
            proc = backend.proc
        else:
            toggles = "dry-run" if which == "agent_dry_run" else "none"
            # The device channel: one line per result applied to a device (docs/conformance.md)
            device_log = world.tmp / "device.log"
            backend = lab.Agent(world.server.socket, config, world.tmp / "agent.log",
                                extra=["--toggles", toggles, "--device-log", str(device_log)])
            proc = backend.proc
        try:
            timer = Timer(world, proc)
            world.goal("connected")
            phase_end(world, "connect", figures, timer, world.done())
            figures["rss_kib"] = proc.rss_kib()
        finally:
            backend.close()
        if not which.startswith("minimal"):
            lines, problems = read_device_log(device_log)
            assert not problems, problems
            figures["enforcements"] = len(lines)
        return figures
    return body


def paced_run(index: int, args: argparse.Namespace) -> dict[str, Any]:
    """One paced run: every backend of :data:`PACED` on a fresh server, the order turned
    by one from run to run; the server's own throughput and the client library's cost in
    the same run."""
    order = PACED[index % len(PACED):] + PACED[:index % len(PACED)]
    run: dict[str, Any] = {}
    for which in order:
        run[which] = in_world(args.guests, args.vifs_per_guest, False, paced_backend(which),
                              paced=True)
    return run


def summarise_paced(runs: list[dict[str, Any]], empty: list[dict[str, float]],
                    traced: dict[str, Any], vifs: int) -> dict[str, Any]:
    rows = []
    for run, idle in zip(runs, empty, strict=True):
        row: dict[str, float] = {}
        for which in PACED:
            row[f"paced_{which}_s"] = run[which]["connect_s"]
            row[f"paced_{which}_quiescent_s"] = run[which]["connect_quiescent_s"]
            row[f"paced_{which}_server_cpu_s"] = run[which]["connect_server_cpu_s"]
            row[f"paced_{which}_frontend_cpu_s"] = run[which]["connect_frontend_cpu_s"]
            row[f"paced_{which}_cpu_s"] = run[which]["connect_cpu_s"]
        row["paced_dry_run_ratio"] = run["agent_dry_run"]["connect_s"] / \
            run["minimal_enforce"]["connect_s"]
        row["paced_none_ratio"] = run["agent_none"]["connect_s"] / run["minimal"]["connect_s"]
        for which, key in (("agent_dry_run", "dry_run"), ("agent_none", "none")):
            row[f"paced_{key}_cpu_ms_per_vif"] = \
                (run[which]["connect_cpu_s"] - idle["cpu_s"]) * 1000 / vifs
            row[f"paced_{key}_rss_kib_per_vif"] = \
                (run[which]["rss_kib"] - idle["rss_kib"]) / vifs
            row[f"paced_{key}_enforcements_per_vif"] = run[which]["enforcements"] / vifs
        row["paced_minimal_enforce_cpu_ms_per_vif"] = \
            run["minimal_enforce"]["connect_cpu_s"] * 1000 / vifs
        row["paced_minimal_cpu_ms_per_vif"] = run["minimal"]["connect_cpu_s"] * 1000 / vifs
        server = run["agent_dry_run"]["server"]
        row["paced_server_read_per_s"] = server["read_per_s"]
        row["paced_server_flip_txn_requests_per_s"] = server["flip_txn_requests_per_s"]
        row["paced_client_blocking_us"] = run["agent_dry_run"]["client"]["blocking_us"]
        row["paced_client_pipelined_us"] = run["agent_dry_run"]["client"]["pipelined_us"]
        counts = traced.get("agent_dry_run", {}).get("requests", {}).get("connect", {})
        row["paced_server_bound_s"] = sum(counts.get("agent", {}).values()) / \
            server["flip_txn_requests_per_s"]
        rows.append(row)
    summary = {key: _spread([row[key] for row in rows]) for key in rows[0]}
    for which, client in (("agent_dry_run", "agent"), ("agent_none", "agent"),
                          ("minimal_enforce", "minimal")):
        counts = traced.get(which, {}).get("requests", {}).get("connect", {})
        if counts:
            total = sum(counts.get(client, {}).values())
            key = {"agent_dry_run": "paced_requests_per_vif",
                   "agent_none": "paced_none_requests_per_vif",
                   "minimal_enforce": "paced_minimal_requests_per_vif"}[which]
            summary[key] = _spread([total / vifs])
    return {"per_run": rows, "summary": summary}


PACED_ROWS: list[tuple[str, str, str]] = [
    ("paced: agent --toggles dry-run to Connected", "paced_agent_dry_run_s", "s"),
    ("paced: minimal backend --enforce (same kernel work)", "paced_minimal_enforce_s", "s"),
    ("paced: ratio agent dry-run / minimal --enforce (per run)", "paced_dry_run_ratio", "x"),
    ("paced: agent --toggles none to Connected", "paced_agent_none_s", "s"),
    ("paced: minimal backend (no kernel work)", "paced_minimal_s", "s"),
    ("paced: ratio agent none / minimal (per run)", "paced_none_ratio", "x"),
    ("paced: agent dry-run quiescent", "paced_agent_dry_run_quiescent_s", "s"),
    ("paced: requests per vif, agent dry-run", "paced_requests_per_vif", ""),
    ("paced: requests per vif, agent none", "paced_none_requests_per_vif", ""),
    ("paced: requests per vif, minimal --enforce", "paced_minimal_requests_per_vif", ""),
    ("paced: agent CPU per vif, dry-run (start-up excluded)", "paced_dry_run_cpu_ms_per_vif",
     "ms"),
    ("paced: agent CPU per vif, none (start-up excluded)", "paced_none_cpu_ms_per_vif", "ms"),
    ("paced: results applied to a device per vif, agent dry-run (device log)",
     "paced_dry_run_enforcements_per_vif", ""),
    ("paced: minimal --enforce CPU per vif", "paced_minimal_enforce_cpu_ms_per_vif", "ms"),
    ("paced: minimal CPU per vif", "paced_minimal_cpu_ms_per_vif", "ms"),
    ("paced: agent RSS per vif above the empty agent's, dry-run",
     "paced_dry_run_rss_kib_per_vif", "KiB"),
    ("paced: server CPU during the agent dry-run's connect", "paced_agent_dry_run_server_cpu_s",
     "s"),
    ("paced: server CPU during minimal --enforce's connect",
     "paced_minimal_enforce_server_cpu_s", "s"),
    ("paced: frontend CPU during the agent dry-run's connect",
     "paced_agent_dry_run_frontend_cpu_s", "s"),
    ("paced: frontend CPU during minimal --enforce's connect",
     "paced_minimal_enforce_frontend_cpu_s", "s"),
    ("paced: server alone on the agent's connect requests (bound)", "paced_server_bound_s",
     "s"),
    ("paced: server pipelined READs per second (same run)", "paced_server_read_per_s", "/s"),
    ("paced: server pipelined flip-shaped requests per second (same run)",
     "paced_server_flip_txn_requests_per_s", "/s"),
    ("paced: client library CPU per request, blocking", "paced_client_blocking_us", "us"),
    ("paced: client library CPU per request, pipelined", "paced_client_pipelined_us", "us"),
]


def render_paced(report: dict[str, Any]) -> str:
    summary = report["summary"]
    lines = [f"bench_agents --paced: {report['vifs']} vifs, {report['runs']} run(s) + traced; "
             f"load average at start {report['load']}"]
    for label, key, unit in PACED_ROWS:
        if key not in summary:
            continue
        spread = summary[key]
        value = _format(spread["median"], unit) + (f" {unit}" if unit not in ("", "/s")
                                                   else unit)
        if spread["n"] > 1 and spread["min"] != spread["max"]:
            value += f" ({_format(spread['min'], unit)}-{_format(spread['max'], unit)})"
        target = ""
        if key in PACED_TARGETS:
            sign, bound = PACED_TARGETS[key]
            met = spread["median"] <= bound
            target = f"  target {sign} {bound:g}  {'met' if met else 'MISSED'}"
        lines.append(f"{label.ljust(66)} {value}{target}")
    for which in ("agent_dry_run", "minimal_enforce"):
        counts = report["traced"].get(which, {}).get("requests", {}).get("connect", {})
        client = "minimal" if which.startswith("minimal") else "agent"
        if counts.get(client):
            lines.append(f"requests by type, paced {which}: " + ", ".join(
                f"{op}={count}" for op, count in sorted(counts[client].items())))
    return "\n".join(lines)


def summarise(runs: list[dict[str, Any]], empty: list[dict[str, float]],
              traced: dict[str, Any], vifs: int) -> dict[str, Any]:
    """Per-run derived figures, then medians and spreads."""
    derived: list[dict[str, float]] = []
    for run, idle in zip(runs, empty, strict=True):
        a, m = run["agent"], run["minimal"]
        row = {
            "connect_s": a["connect_s"], "minimal_connect_s": m["connect_s"],
            "connect_ratio": a["connect_s"] / m["connect_s"],
            "connect_quiescent_s": a["connect_quiescent_s"],
            "set_flip_s": a["set_flip_s"], "set_process_s": a["set_process_s"],
            "set_flip_quiescent_s": a["set_flip_quiescent_s"],
            "set_clear_s": a["set_clear_s"],
            "hup_flip_s": a["hup_flip_s"], "hup_flip_quiescent_s": a["hup_flip_quiescent_s"],
            "hup_back_s": a["hup_back_s"],
            "minimal_flip_s": m["flip_s"],
            "reboot_s": a["reboot_s"], "minimal_reboot_s": m["reboot_s"],
            "reboot_ratio": a["reboot_s"] / m["reboot_s"],
            "reboot_quiescent_s": a["reboot_quiescent_s"],
            "restart_quiescent_s": a["restart_quiescent_s"],
            "recreate_toolstack_s": a["recreate_toolstack_s"],
            "recreate_s": a["recreate_s"],
            "recreate_quiescent_after_s": a["recreate_quiescent_after_s"],
            "recreate_cpu_ms_per_vif": a["recreate_cpu_s"] * 1000 / vifs,
            "connect_agent_cpu_s": a["connect_cpu_s"],
            "connect_server_cpu_s": a["connect_server_cpu_s"],
            "connect_frontend_cpu_s": a["connect_frontend_cpu_s"],
            "minimal_connect_cpu_s": m["connect_cpu_s"],
            "minimal_connect_server_cpu_s": m["connect_server_cpu_s"],
            "set_flip_agent_cpu_s": a["set_flip_cpu_s"],
            "set_flip_server_cpu_s": a["set_flip_server_cpu_s"],
            "cpu_ms_per_vif": (a["connect_cpu_s"] - idle["cpu_s"]) * 1000 / vifs,
            "minimal_cpu_ms_per_vif": m["connect_cpu_s"] * 1000 / vifs,
            "flip_cpu_ms_per_vif": a["set_flip_cpu_s"] * 1000 / vifs,
            "reboot_cpu_ms_per_vif": a["reboot_cpu_s"] * 1000 / vifs,
            "restart_cpu_ms_per_vif": a["restart_cpu_s"] * 1000 / vifs,
            "rss_kib_per_vif": (a["rss_kib"] - idle["rss_kib"]) / vifs,
            "empty_agent_rss_kib": idle["rss_kib"], "empty_agent_cpu_s": idle["cpu_s"],
            "idle_cpu_ms_per_s": idle["idle_cpu_ms_per_s"],
            "hup_reload_max_s": idle["hup_reload_max_s"],
            "client_pipelined_us": a["client"]["pipelined_us"],
            "client_blocking_us": a["client"]["blocking_us"],
            "server_read_per_s": a["server"]["read_per_s"],
            "server_flip_txn_requests_per_s": a["server"]["flip_txn_requests_per_s"],
        }
        if "new_vif_during_attack_s" in a:
            row.update({
                "new_vif_quiet_max_s": max(a["new_vif_quiet_s"]),
                "attack_new_vif_max_s": max(a["new_vif_during_attack_s"]),
                "attack_new_vif_median_s": statistics.median(a["new_vif_during_attack_s"]),
                "attack_new_vifs": len(a["new_vif_during_attack_s"]),
                "attack_s": a["attack_s"], "attack_flaps_per_s": a["attack_flaps_per_s"],
                "attacked_vif_converged_after_s": a["attacked_vif_converged_after_s"],
                "attack_agent_cpu_s": a["attack_agent_cpu_s"],
                "attack_reconnects": a["reconnects"],
                "attack_eagain_give_ups": a["eagain_give_ups"],
            })
        # The server alone, answering the agent's requests of a phase as fast as it answers a
        # pipelined stream: a bound no client of it can beat.
        rate = a["server"]["flip_txn_requests_per_s"]
        for phase in ("connect", "set_flip"):
            counts = traced.get("agent", {}).get("requests", {}).get(phase, {})
            row[f"{phase}_server_bound_s"] = sum(counts.get("agent", {}).values()) / rate
        derived.append(row)
    summary = {key: _spread([row[key] for row in derived if key in row])
               for key in derived[0]}
    summary.update(_request_figures(traced, vifs))
    return {"per_run": derived, "summary": summary}


def add_enforcement(report: dict[str, Any], costs: list[dict[str, float]]) -> None:
    summary = report["summary"]
    for name in ("connect", "flip"):
        summary[f"enforce_{name}_ms_per_vif"] = _spread([c[f"{name}_ms_per_vif"]
                                                         for c in costs])


def _request_figures(traced: dict[str, Any], vifs: int) -> dict[str, dict[str, float]]:
    """Requests per vif of each phase, from the traced run (one figure each, no spread)."""
    figures: dict[str, dict[str, float]] = {}
    spans = {("agent", "connect"): "connect", ("agent", "set_flip"): "set_flip",
             ("agent", "set_clear"): "set_clear", ("agent", "hup_flip"): "hup_flip",
             ("agent", "hup_back"): "hup_back", ("agent", "reboot"): "reboot",
             ("agent", "restart"): "restart", ("agent", "recreate"): "recreate",
             ("minimal", "connect"): "minimal_connect",
             ("minimal", "flip"): "minimal_flip", ("minimal", "reboot"): "minimal_reboot"}
    for (world, span), name in spans.items():
        counts = traced.get(world, {}).get("requests", {}).get(span, {})
        client = "minimal" if world == "minimal" else "agent"
        total = sum(counts.get(client, {}).values())
        figures[f"{name}_requests_per_vif"] = _spread([total / vifs])
    agent = figures["connect_requests_per_vif"]["median"]
    minimal = figures["minimal_connect_requests_per_vif"]["median"]
    figures["connect_requests_ratio"] = _spread([agent / minimal if minimal else 0.0])
    return figures


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


# ------------------------------------------------------------------------------- output


ROWS: list[tuple[str, str, str]] = [
    ("connect: 1,000 vifs to Connected, agent", "connect_s", "s"),
    ("connect: minimal backend", "minimal_connect_s", "s"),
    ("connect: time ratio agent / minimal (per run)", "connect_ratio", "x"),
    ("connect: agent quiescent", "connect_quiescent_s", "s"),
    ("connect: requests per vif, agent", "connect_requests_per_vif", ""),
    ("connect: requests per vif, minimal backend", "minimal_connect_requests_per_vif", ""),
    ("connect: requests ratio agent / minimal", "connect_requests_ratio", "x"),
    ("connect: CPU of the agent (start-up included)", "connect_agent_cpu_s", "s"),
    ("connect: CPU of the server meanwhile", "connect_server_cpu_s", "s"),
    ("connect: CPU of the scripted frontend meanwhile", "connect_frontend_cpu_s", "s"),
    ("connect: CPU of the minimal backend", "minimal_connect_cpu_s", "s"),
    ("connect: CPU of the server while the minimal backend ran", "minimal_connect_server_cpu_s",
     "s"),
    ("agent CPU per vif (connect, start-up excluded)", "cpu_ms_per_vif", "ms"),
    ("minimal backend CPU per vif (connect)", "minimal_cpu_ms_per_vif", "ms"),
    ("agent RSS per vif above the empty agent's", "rss_kib_per_vif", "KiB"),
    ("flip: `set --bridge xenbr0 --tx on --rx on` until all advertise", "set_flip_s", "s"),
    ("flip: of which the `set` process", "set_process_s", "s"),
    ("flip: agent quiescent", "set_flip_quiescent_s", "s"),
    ("flip: requests per vif, agent", "set_flip_requests_per_vif", ""),
    ("flip: agent CPU per vif", "flip_cpu_ms_per_vif", "ms"),
    ("flip: CPU of the agent", "set_flip_agent_cpu_s", "s"),
    ("flip: CPU of the server meanwhile", "set_flip_server_cpu_s", "s"),
    ("flip back: `set --bridge xenbr0 --clear`", "set_clear_s", "s"),
    ("flip back: requests per vif", "set_clear_requests_per_vif", ""),
    ("flip: SIGHUP with a file allowing everything", "hup_flip_s", "s"),
    ("flip: SIGHUP, agent quiescent", "hup_flip_quiescent_s", "s"),
    ("flip: SIGHUP, requests per vif", "hup_flip_requests_per_vif", ""),
    ("flip back: SIGHUP with the empty file", "hup_back_s", "s"),
    ("SIGHUP to \"policy reloaded\" in the log, idle agent (max of 5)", "hup_reload_max_s",
     "s"),
    ("flip: minimal backend (its own loop, no command)", "minimal_flip_s", "s"),
    ("flip: minimal backend, requests per vif", "minimal_flip_requests_per_vif", ""),
    ("reboot of every guest, agent", "reboot_s", "s"),
    ("reboot: minimal backend", "minimal_reboot_s", "s"),
    ("reboot: ratio agent / minimal (per run)", "reboot_ratio", "x"),
    ("reboot: agent quiescent", "reboot_quiescent_s", "s"),
    ("reboot: requests per vif, agent", "reboot_requests_per_vif", ""),
    ("reboot: requests per vif, minimal", "minimal_reboot_requests_per_vif", ""),
    ("reboot: agent CPU per vif", "reboot_cpu_ms_per_vif", "ms"),
    ("agent restart on the connected fleet: quiescent", "restart_quiescent_s", "s"),
    ("agent restart: requests per vif", "restart_requests_per_vif", ""),
    ("agent restart: CPU per vif (start-up included)", "restart_cpu_ms_per_vif", "ms"),
    ("every vif re-created by the toolstack: its own time", "recreate_toolstack_s", "s"),
    ("re-created: all Connected again", "recreate_s", "s"),
    ("re-created: agent quiescent after the toolstack's last", "recreate_quiescent_after_s",
     "s"),
    ("re-created: requests per vif", "recreate_requests_per_vif", ""),
    ("re-created: agent CPU per vif", "recreate_cpu_ms_per_vif", "ms"),
    ("new vif of a quiet guest, no attack (max of 3)", "new_vif_quiet_max_s", "s"),
    ("attack: flaps per second the attacker reached", "attack_flaps_per_s", "/s"),
    ("attack: new vif of the well-behaved guest, max", "attack_new_vif_max_s", "s"),
    ("attack: new vif of the well-behaved guest, median", "attack_new_vif_median_s", "s"),
    ("attack: new vifs measured during the attack", "attack_new_vifs", ""),
    ("attack: attacked vif settled after the attack", "attacked_vif_converged_after_s", "s"),
    ("attack: agent CPU during the attack", "attack_agent_cpu_s", "s"),
    ("attack: agent reconnects (log)", "attack_reconnects", ""),
    ("attack: steps left after 8 conflicts (log)", "attack_eagain_give_ups", ""),
    ("agent: empty agent's RSS", "empty_agent_rss_kib", "KiB"),
    ("agent: empty agent's CPU to start (imports, attach)", "empty_agent_cpu_s", "s"),
    ("agent: idle CPU", "idle_cpu_ms_per_s", "ms/s"),
    ("enforcement per vif, dry-run (in-process): connect", "enforce_connect_ms_per_vif", "ms"),
    ("enforcement per vif, dry-run (in-process): flip", "enforce_flip_ms_per_vif", "ms"),
    ("client library CPU per request, pipelined", "client_pipelined_us", "us"),
    ("client library CPU per request, blocking", "client_blocking_us", "us"),
    ("server: pipelined READs per second", "server_read_per_s", "/s"),
    ("server alone on the agent's connect requests (bound)", "connect_server_bound_s", "s"),
    ("server alone on the agent's flip requests (bound)", "set_flip_server_bound_s", "s"),
    ("server: pipelined flip-shaped requests per second", "server_flip_txn_requests_per_s",
     "/s"),
]


def _format(value: float, unit: str) -> str:
    if unit == "/s":
        return f"{value:,.0f}"
    if unit in ("s", "x"):
        return f"{value:.2f}"
    if unit in ("ms", "KiB", "ms/s", "us"):
        return f"{value:.2f}" if value < 100 else f"{value:,.0f}"
    return f"{value:.1f}" if value != int(value) else f"{value:.0f}"


def render(report: dict[str, Any]) -> str:
    summary = report["summary"]
    lines = [f"bench_agents: {report['vifs']} vifs ({report['guests']} guests x "
             f"{report['per_guest']}), {report['runs']} run(s) + 1 traced run; "
             f"{os.cpu_count()} CPUs, load average at start {report['load']}",
             "median (min-max over runs); requests from the traced run"]
    rows = []
    for label, key, unit in ROWS:
        if key not in summary:
            continue
        spread = summary[key]
        value = _format(spread["median"], unit) + (f" {unit}" if unit not in ("", "/s")
                                                   else unit)
        if spread["n"] > 1 and spread["min"] != spread["max"]:
            value += f" ({_format(spread['min'], unit)}-{_format(spread['max'], unit)})"
        target = ""
        if key in TARGETS:
            sign, bound = TARGETS[key]
            met = spread["median"] < bound if sign == "<" else spread["median"] <= bound
            target = f"{sign} {bound:g}  {'met' if met else 'MISSED'}"
            if key in FLOORS:
                target += f" (protocol floor {FLOORS[key]:g})"
        rows.append((label, value, target))
    width = max(len(row[0]) for row in rows)
    value_width = max(len(row[1]) for row in rows)
    lines.append(f"{'measure'.ljust(width)}  {'value'.ljust(value_width)}  target")
    lines += [f"{label.ljust(width)}  {value.ljust(value_width)}  {target}"
              for label, value, target in rows]
    startup = report["startup"]
    lines.append(f"process start: bare python {startup['python_s']:.3f} s, "
                 f"`xenoffload --version` {startup['cli_version_s']:.3f} s, "
                 f"`xenoffload set --help` {startup['cli_set_help_s']:.3f} s")
    for world in ("agent", "minimal"):
        spans = report["traced"].get(world, {}).get("requests", {})
        for span, clients in spans.items():
            counts = clients.get(world if world == "minimal" else "agent")
            if counts:
                lines.append(f"requests by type, {world} {span}: " + ", ".join(
                    f"{op}={count}" for op, count in sorted(counts.items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    parser.add_argument("--runs", type=int, default=3, help="timed runs (default 3)")
    parser.add_argument("--guests", type=int, default=GUESTS)
    parser.add_argument("--vifs-per-guest", type=int, default=PER_GUEST)
    parser.add_argument("--flaps", type=int, default=FLAPS)
    parser.add_argument("--no-attack", action="store_true", help="skip the flapping guest")
    parser.add_argument("--paced-only", action="store_true",
                        help="only the paced comparison (frontends answering like "
                             "independent guests)")
    parser.add_argument("--no-paced", action="store_true", help="skip the paced comparison")
    args = parser.parse_args(argv)
    vifs = args.guests * args.vifs_per_guest
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    paced_report: dict[str, Any] | None = None
    if not args.no_paced:
        paced_empty = [empty_agent() for _ in range(args.runs)]
        paced_runs = [paced_run(index, args) for index in range(args.runs)]
        paced_traced = {which: in_world(args.guests, args.vifs_per_guest, True,
                                        paced_backend(which), paced=True)
                        for which in ("agent_dry_run", "agent_none", "minimal_enforce")}
        paced_report = {"vifs": vifs, "runs": args.runs, "load": load,
                        "raw": paced_runs, "traced": paced_traced,
                        **summarise_paced(paced_runs, paced_empty, paced_traced, vifs)}
        if args.paced_only:
            print(json.dumps(paced_report, indent=2, default=str) if args.json
                  else render_paced(paced_report))
            return 0
    startup = startup_costs()
    runs, empty, enforcement = [], [], []
    for index in range(args.runs):
        empty.append(empty_agent())
        enforcement.append(enforcement_cost(vifs))
        runs.append(one_run(index, args))
    traced = {
        "minimal": in_world(args.guests, args.vifs_per_guest, True, minimal_world),
        "agent": in_world(args.guests, args.vifs_per_guest, True,
                          lambda w: agent_world(w, False, 0)),
    }
    report = {"vifs": vifs, "guests": args.guests, "per_guest": args.vifs_per_guest,
              "runs": args.runs, "load": load, "startup": startup, "targets": TARGETS,
              "floors": FLOORS,
              "empty_agent": empty, "raw": runs, "traced": traced,
              **summarise(runs, empty, traced, vifs)}
    add_enforcement(report, enforcement)
    if paced_report is not None:
        report["paced"] = paced_report
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    if paced_report is not None and not args.json:
        print(render_paced(paced_report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
