"""Benchmark one backend agent bringing 1,000 vifs to Connected, against the bare protocol ops.

Setup, per phase: the embedded xenstored runs as its own process (``python -m
xenoffload.xenstored``, like C xenstored beside dom0's tools), the toolstack lays out 250 guests
x 4 vifs as libxl does (not timed), and a *minimal scripted frontend* runs in another process:
one dom0 connection, one watch on ``/local/domain/0/backend/vif``; when a backend reaches
InitWait it writes its six feature keys and ``state`` = Connected in one transaction, as
netfront does (full-mode guest agents would also work but would put 250 more processes or
threads on a 2-core machine and measure the guests instead of the backend).

Phases (each on a fresh server and layout):

* ``baseline``: a script doing only the XenStore operations the protocol needs for a backend
  (discovery, the ``frontend`` and ``bridge`` reads, keys + InitWait in one transaction, a
  snapshot of the frontend in one transaction, Connected + status in one transaction), driven
  by the same single watch, over the same kind of connection; then a policy flip = rewrite the
  keys of every vif in one transaction each.
* ``agent``: an in-process BackendAgent (full mode, RecordingToggles) driven by a Runner-style
  loop (one connection, one watch, batched events) until every vif is Connected and enforced;
  then ``set_policy`` (allow everything) re-advertises and re-applies on every vif.
* ``memory``: the agent phase again under tracemalloc (peak Python allocations per vif).
* ``profile``: the agent phase under cProfile (top entries).

XenStore operations are counted on the client (every request the connection sends, which is
exactly what the server's request log would list). RSS is the process's resident set before
the agent is created and after every vif is Connected. Prints a table, or JSON with ``--json``.
Figures, not pass/fail; the targets of issue #6 are printed beside them.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xenoffload.agents.backend import BackendAgent
from xenoffload.endpoint import Enforcer
from xenoffload.enforce import TogglesEnforcer
from xenoffload.machine import Mode
from xenoffload.negotiation import LinkPolicy
from xenoffload.policy import Policy, VifIdentity
from xenoffload.schema import FamilyFlags
from xenoffload.store.base import Store, Transaction, WatchEvent, run_transaction
from xenoffload.store.pyxs_store import PyxsStore
from xenoffload.toggles.base import DeviceRef
from xenoffload.toggles.recording import RecordingToggles, profile_for_name
from xenoffload.toolstack import VifSpec, create_domain, create_vif
from xenoffload.xenbus import XenbusState
from xenoffload.xs.wire import op_name

GUESTS, VIFS_PER_GUEST = 250, 4
ROOT = "/local/domain/0/backend/vif"
FRONTEND_KEYS = {"feature-csum-tx": b"1", "feature-csum-rx": b"1", "feature-csum-tx-ipv6": b"1",
                 "feature-csum-rx-ipv6": b"1", "feature-no-csum-offload": b"0",
                 "feature-ipv6-csum-offload": b"1"}
BACKEND_KEYS = ("feature-csum-tx", "feature-csum-rx", "feature-csum-tx-ipv6",
                "feature-csum-rx-ipv6", "feature-ipv6-csum-offload")
TARGETS = {"ops_ratio": 1.5, "connect_s": 3.0, "flip_s": 1.0, "kib_per_vif": 20.0}
TIMEOUT = 120.0


class CountingStore(PyxsStore):
    """PyxsStore counting every request it sends, by type."""

    def __init__(self, path: str) -> None:
        super().__init__(path, timeout=30.0)
        self.ops: collections.Counter[str] = collections.Counter()

    def _send(self, op: int, payload: bytes, tx_id: int, path: str | None = None) -> Any:
        self.ops[op_name(op)] += 1
        return super()._send(op, payload, tx_id, path)


def rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


# ------------------------------------------------------------------------------- the world


class World:
    """A xenstored process, the layout, and the scripted frontend process."""

    def __init__(self, tmp: Path, guests: int, per_guest: int) -> None:
        self.socket = str(tmp / "xenstored.sock")
        self.server = subprocess.Popen([sys.executable, "-m", "xenoffload.xenstored",
                                        "--socket", self.socket])
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket):
            if time.monotonic() > deadline or self.server.poll() is not None:
                raise RuntimeError("xenstored did not start")
            time.sleep(0.02)
        toolstack = PyxsStore(self.socket)
        create_domain(toolstack, 0, "Domain-0")
        for domid in range(1, guests + 1):
            create_domain(toolstack, domid, f"guest{domid}")
            for devid in range(per_guest):
                create_vif(toolstack, VifSpec(domid, devid,
                                              f"00:16:3e:{domid >> 8:02x}:{domid & 255:02x}:"
                                              f"{devid:02x}", "xenbr0"))
        toolstack.close()
        self.vifs = guests * per_guest
        self.frontend = subprocess.Popen([sys.executable, __file__, "--frontend", self.socket],
                                         stdout=subprocess.PIPE, text=True)
        assert self.frontend.stdout is not None
        if self.frontend.stdout.readline().strip() != "ready":
            raise RuntimeError("scripted frontend did not start")

    def close(self) -> None:
        for process in (self.frontend, self.server):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def scripted_frontend(socket: str) -> None:
    """Every frontend of the layout: Connected (keys + state in one transaction) as soon as
    its backend is in InitWait. Runs until terminated."""
    store = PyxsStore(socket, timeout=30.0)
    store.watch(ROOT, "frontend")
    print("ready", flush=True)
    connected: set[str] = set()
    while True:
        event = store.next_event(None)
        batch = [event] if event is not None else []
        while (more := store.next_event(0)) is not None:
            batch.append(more)
        for path in sorted({e.path for e in batch if e.path.endswith("/state")}):
            if path in connected or store.try_read(path) != b"2":
                continue
            frontend = store.read(path.rsplit("/", 1)[0] + "/frontend").decode()

            def body(txn: Transaction, frontend: str = frontend) -> None:
                for name, value in FRONTEND_KEYS.items():
                    txn.write(f"{frontend}/{name}", value)
                txn.write(f"{frontend}/state", b"4")

            run_transaction(store, body)
            connected.add(path)


# ------------------------------------------------------------------------------- baseline


def baseline(world: World) -> dict[str, Any]:
    """The bare operations the protocol needs, driven by one watch; then a bare policy flip."""
    store = CountingStore(world.socket)
    keys = {name: b"0" for name in BACKEND_KEYS}
    connected: set[tuple[int, int]] = set()
    waiting: set[tuple[int, int]] = set()
    start = time.perf_counter()
    store.watch("/local/domain", "baseline")

    def take_initwait(guest: int, devid: int) -> None:
        backend = f"{ROOT}/{guest}/{devid}"
        store.read(f"{backend}/frontend")  # the toolstack's link, checked
        store.read(f"{backend}/bridge")  # what the policy matches on

        def body(txn: Transaction) -> None:
            for name, value in keys.items():
                txn.write(f"{backend}/{name}", value)
            txn.write(f"{backend}/state", b"2")

        run_transaction(store, body)
        waiting.add((guest, devid))

    def try_connect(guest: int, devid: int) -> None:
        backend, frontend = f"{ROOT}/{guest}/{devid}", f"/local/domain/{guest}/device/vif/{devid}"

        def snapshot(txn: Transaction) -> bytes | None:
            state = txn.try_read(f"{frontend}/state")
            for name in FRONTEND_KEYS:
                txn.try_read(f"{frontend}/{name}")
            return state

        if run_transaction(store, snapshot) != b"4":
            return

        def connect(txn: Transaction) -> None:
            txn.write(f"{backend}/state", b"4")
            txn.write(f"{backend}/xenoffload-csum-status", b"ok")

        run_transaction(store, connect)
        waiting.discard((guest, devid))
        connected.add((guest, devid))

    def discover() -> None:
        for guest in store.directory(ROOT):
            for devid in store.directory(f"{ROOT}/{guest}"):
                key = (int(guest), int(devid))
                if key not in waiting and key not in connected:
                    take_initwait(*key)

    deadline = time.monotonic() + TIMEOUT
    discover()
    while len(connected) < world.vifs and time.monotonic() < deadline:
        event = store.next_event(1.0)
        batch = [event] if event is not None else []
        while (more := store.next_event(0)) is not None:
            batch.append(more)
        dirty = set()
        for e in batch:
            parts = e.path.split("/")
            if len(parts) == 8 and parts[4] == "device" and parts[7] == "state":
                dirty.add((int(parts[3]), int(parts[6])))
        for key in sorted(dirty & waiting):
            try_connect(*key)
    connect_s = time.perf_counter() - start
    connect_ops = sum(store.ops.values())
    ops_before_flip = collections.Counter(store.ops)

    flip_start = time.perf_counter()
    keys = {name: b"1" for name in BACKEND_KEYS}
    for guest, devid in sorted(connected):
        def rewrite(txn: Transaction, backend: str = f"{ROOT}/{guest}/{devid}") -> None:
            for name, value in keys.items():
                txn.write(f"{backend}/{name}", value)

        run_transaction(store, rewrite)
    flip_s = time.perf_counter() - flip_start
    flip_ops = sum((store.ops - ops_before_flip).values())
    store.close()
    return {"connected": len(connected), "connect_s": connect_s, "connect_ops": connect_ops,
            "flip_s": flip_s, "flip_ops": flip_ops, "ops_by_type": dict(ops_before_flip)}


# ------------------------------------------------------------------------------- agent


def all_connected(agent: BackendAgent, vifs: int) -> bool:
    if len(agent.endpoints) < vifs:
        return False
    return all(e.machine.own_state is XenbusState.CONNECTED and e.result is not None
               for e in agent.endpoints.values())


def run_agent(world: World, wrap: Callable[[Callable[[], None]], None] | None = None
              ) -> dict[str, Any]:
    """Bring every vif to Connected with one BackendAgent, then flip the policy."""
    toggles = RecordingToggles(auto_profile=profile_for_name)

    def enforcer(vif: VifIdentity) -> Enforcer:
        return TogglesEnforcer(toggles, DeviceRef(f"vif{vif.domid}.{vif.devid}", "dom0"))

    rss_before = rss_kib()
    store = CountingStore(world.socket)
    agent = BackendAgent(Policy(), 0, Mode.FULL, enforcer)
    figures: dict[str, Any] = {}

    def connect_all() -> None:
        start = time.perf_counter()
        agent.attach(store)
        deadline = time.monotonic() + TIMEOUT
        while not all_connected(agent, world.vifs) and time.monotonic() < deadline:
            batch = _take_batch(store, 1.0)
            if batch:
                agent.handle(batch)
        figures["connect_s"] = time.perf_counter() - start
        figures["connected"] = sum(e.machine.own_state is XenbusState.CONNECTED
                                   for e in agent.endpoints.values())

    if wrap is None:
        connect_all()
    else:
        wrap(connect_all)
    figures["connect_ops"] = sum(store.ops.values())
    figures["ops_by_type"] = dict(store.ops)
    figures["rss_kib_per_vif"] = (rss_kib() - rss_before) / world.vifs
    ops_before_flip = collections.Counter(store.ops)
    sets_before = toggles.sets_sent

    everything = LinkPolicy(FamilyFlags(True, True), FamilyFlags(True, True))
    start = time.perf_counter()
    agent.set_policy(Policy(everything))
    figures["flip_s"] = time.perf_counter() - start
    figures["flip_ops"] = sum((store.ops - ops_before_flip).values())
    figures["flip_sets"] = toggles.sets_sent - sets_before
    store.close()
    return figures


def _take_batch(store: Store, timeout: float) -> list[WatchEvent]:
    first = store.next_event(timeout)
    if first is None:
        return []
    batch = [first]
    while len(batch) < 4096 and (more := store.next_event(0)) is not None:
        batch.append(more)
    return batch


def with_tracemalloc(figures: dict[str, Any], vifs: int) -> Callable[[Callable[[], None]], None]:
    def wrap(body: Callable[[], None]) -> None:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        body()
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        figures["traced_kib_per_vif"] = (current - base) / 1024 / vifs
        figures["traced_peak_kib_per_vif"] = (peak - base) / 1024 / vifs

    return wrap


def with_profile(figures: dict[str, Any], top: int) -> Callable[[Callable[[], None]], None]:
    def wrap(body: Callable[[], None]) -> None:
        profile = cProfile.Profile()
        profile.runcall(body)
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        figures["profile_tottime"] = out.getvalue()
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(top)
        figures["profile_cumulative"] = out.getvalue()

    return wrap


# ------------------------------------------------------------------------------- main


def phase(name: str, guests: int, per_guest: int, action: Callable[[World], dict[str, Any]]
          ) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"xo-bench-{name}-") as tmp:
        world = World(Path(tmp), guests, per_guest)
        try:
            return action(world)
        finally:
            world.close()


#: xenstored's trace of real Linux netback/netfront negotiating two vifs (tests/fixtures).
LINUX_TRACE = Path(__file__).resolve().parents[1] / "tests/fixtures/stock-linux-two-vifs.trace"


def linux_netback_ops_per_vif(trace: Path = LINUX_TRACE) -> float:
    """Requests Linux netback (dom0's kernel connection) made per vif to bring the trace's
    vifs to Connected: every request naming a vif path, and the transactions around them,
    up to netback's last ``state`` = 4. The real-driver baseline of the op count."""
    from xenoffload.conformance.observe import parse_trace

    records = parse_trace(trace.read_text(encoding="latin-1").splitlines())
    kernel = records[0].conn_id  # the first client: dom0's kernel (xenbus core, netback)
    vifs: set[bytes] = set()
    counted = 0
    in_vif_txn: set[int] = set()
    for record in (r for r in records if r.conn_id == kernel):
        payload = record.payload
        names_vif = b"backend/vif/" in payload or b"/device/vif/" in payload
        if record.op == "TRANSACTION_START":
            continue  # counted with its end, once the transaction proves to be about a vif
        if record.op == "TRANSACTION_END":
            if record.tx_id in in_vif_txn:
                counted += 2  # its start and its end
            continue
        if not names_vif:
            continue
        counted += 1
        if record.tx_id:
            in_vif_txn.add(record.tx_id)
        path = payload.split(b"\0", 1)[0]
        if record.op == "WRITE" and path.startswith(b"backend/vif/") and \
                path.endswith(b"/state") and payload == path + b"\0" + b"4":
            vifs.add(path)
            if len(vifs) == 2:
                break
    return counted / max(len(vifs), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    parser.add_argument("--guests", type=int, default=GUESTS)
    parser.add_argument("--vifs-per-guest", type=int, default=VIFS_PER_GUEST)
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile phase")
    parser.add_argument("--top", type=int, default=15, help="profile entries shown")
    parser.add_argument("--frontend", metavar="SOCKET", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.frontend:
        scripted_frontend(args.frontend)
        return 0
    g, n = args.guests, args.vifs_per_guest
    vifs = g * n
    base = phase("baseline", g, n, baseline)
    agent = phase("agent", g, n, run_agent)
    memory: dict[str, Any] = {}
    phase("memory", g, n, lambda w: run_agent(w, with_tracemalloc(memory, vifs)))
    profile: dict[str, Any] = {}
    if not args.no_profile:
        phase("profile", g, n, lambda w: run_agent(w, with_profile(profile, args.top)))

    report = {
        "vifs": vifs,
        "baseline": base,
        "agent": agent,
        "memory": memory,
        "ratios": {"connect_ops": agent["connect_ops"] / base["connect_ops"],
                   "connect_time": agent["connect_s"] / base["connect_s"],
                   "flip_ops": agent["flip_ops"] / max(base["flip_ops"], 1),
                   "flip_time": agent["flip_s"] / max(base["flip_s"], 1e-9)},
        "targets": TARGETS,
        "linux_netback_ops_per_vif": linux_netback_ops_per_vif(),
    }
    if args.json:
        print(json.dumps({**report, "profile": profile}, indent=2, default=str))
        return 0
    rows = [
        ("vifs Connected (agent / baseline)", f"{agent['connected']} / {base['connected']}",
         f"{vifs}"),
        ("connect: agent time", f"{agent['connect_s']:.2f} s", f"< {TARGETS['connect_s']} s"),
        ("connect: baseline time", f"{base['connect_s']:.2f} s", ""),
        ("connect: time ratio agent/baseline", f"{report['ratios']['connect_time']:.2f}x",
         f"<= {TARGETS['ops_ratio']}x"),
        ("connect: XenStore ops per vif agent / baseline",
         f"{agent['connect_ops'] / vifs:.1f} / {base['connect_ops'] / vifs:.1f}", ""),
        ("connect: ops ratio agent/baseline", f"{report['ratios']['connect_ops']:.2f}x",
         f"<= {TARGETS['ops_ratio']}x"),
        ("Linux netback ops per vif to Connected (real trace)",
         f"{report['linux_netback_ops_per_vif']:.1f}", ""),
        ("policy flip: agent time", f"{agent['flip_s']:.2f} s", f"< {TARGETS['flip_s']} s"),
        ("policy flip: baseline time", f"{base['flip_s']:.2f} s", ""),
        ("policy flip: ops per vif agent / baseline",
         f"{agent['flip_ops'] / vifs:.1f} / {base['flip_ops'] / vifs:.1f}", ""),
        ("policy flip: kernel change requests", f"{agent['flip_sets']}", f"{vifs}"),
        ("RSS delta per vif (agent process)", f"{agent['rss_kib_per_vif']:.1f} KiB",
         f"<= {TARGETS['kib_per_vif']} KiB"),
        ("Python heap per vif after connect (tracemalloc)",
         f"{memory.get('traced_kib_per_vif', 0):.1f} KiB", ""),
        ("Python heap peak per vif (tracemalloc)",
         f"{memory.get('traced_peak_kib_per_vif', 0):.1f} KiB", ""),
    ]
    width = max(len(row[0]) for row in rows)
    print(f"bench_agents: one backend agent, {g} guests x {n} vifs, embedded xenstored "
          "process, scripted frontend process")
    print(f"{'measure'.ljust(width)}  {'value':>18}  target")
    for label, value, target in rows:
        print(f"{label.ljust(width)}  {value:>18}  {target}")
    print("\nops by type, agent:    " + ", ".join(
        f"{k}={v}" for k, v in sorted(agent["ops_by_type"].items())))
    print("ops by type, baseline: " + ", ".join(
        f"{k}={v}" for k, v in sorted(base["ops_by_type"].items())))
    if profile:
        print("\ncProfile of the agent phase, by own time:")
        print(_trim(profile["profile_tottime"]))
        print("cProfile of the agent phase, cumulative:")
        print(_trim(profile["profile_cumulative"]))
    return 0


def _trim(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    return "\n".join(lines[start:])


if __name__ == "__main__":
    raise SystemExit(main())
