"""The world the agent benchmarks run in, every part its own process as on a real dom0.

* :class:`Server`: the embedded xenstored (``python -m xenoffload.xenstored``), optionally with
  its request trace (which halves its throughput, so timed runs go without it) and guest
  sockets.
* :func:`lay_out`: guests and vifs written as libxl writes them (``xenoffload.toolstack``).
* ``frontend`` (:func:`run_frontend`, driven by :class:`Frontend`): every guest's netfront,
  scripted on one dom0 connection: Connected (six feature keys + ``state`` in one
  transaction) as soon as a backend waits in InitWait; a reboot (Closing, then Closed and
  Initialising once the backend closed, then Connected again); it tells the benchmark the
  moment every backend is Connected or advertises a key's value.
* ``minimal`` (:func:`run_minimal`): the floor a backend is measured against: only the
  requests the protocol needs, one blocking round trip at a time (see its docstring).
* ``flap`` (:func:`run_flap`): a hostile guest on its own guest socket flipping its own vif's
  ``state`` between Initialising and Connected as fast as the server lets it.
* :class:`Proc`: CPU time and RSS of a process from /proc.
* :func:`requests_by_client`: requests per client and type from the server's trace, split
  at markers the benchmark writes (:meth:`Server.mark`).

Run a part as a process: ``python benchmarks/agentlab.py frontend|minimal|flap ...``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import attrs

from xenoffload.store.base import Store, Transaction, WriteGroup, run_transaction
from xenoffload.store.pyxs_store import PyxsStore
from xenoffload.toolstack import VifSpec, create_domain, create_vif

HERE = Path(__file__).resolve()
ROOT = "/local/domain/0/backend/vif"
#: What every scripted frontend advertises (everything: the backend's policy decides).
FRONTEND_KEYS = {"feature-csum-tx": b"1", "feature-csum-rx": b"1",
                 "feature-csum-tx-ipv6": b"1", "feature-csum-rx-ipv6": b"1",
                 "feature-no-csum-offload": b"0", "feature-ipv6-csum-offload": b"1"}
#: What a backend advertises (its own keys and the legacy IPv6 one), all 0 or all 1 here.
BACKEND_KEYS = ("feature-csum-tx", "feature-csum-rx", "feature-csum-tx-ipv6",
                "feature-csum-rx-ipv6", "feature-ipv6-csum-offload")
BRIDGE = "xenbr0"
MARKER = "/bench-marker"

Vif = tuple[int, int]

INITIALISING, INIT_WAIT, CONNECTED, CLOSING, CLOSED = b"1", b"2", b"4", b"5", b"6"


def frontend_dir(vif: Vif) -> str:
    return f"/local/domain/{vif[0]}/device/vif/{vif[1]}"


def backend_dir(vif: Vif) -> str:
    return f"{ROOT}/{vif[0]}/{vif[1]}"


def _vif_of(path: str) -> tuple[Vif, str] | None:
    """(vif, key) of an event under the backend root (key '' for the directory itself)."""
    if not path.startswith(ROOT + "/"):
        return None
    parts = path[len(ROOT) + 1:].split("/")
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return (int(parts[0]), int(parts[1])), "/".join(parts[2:])


# ------------------------------------------------------------------------------- processes


@attrs.define
class Proc:
    """CPU and memory of a process, from /proc (every thread's CPU, in nanoseconds)."""

    pid: int

    def cpu_s(self) -> float:
        """CPU seconds the process used so far (user + system, every thread)."""
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for task in os.listdir(f"/proc/{self.pid}/task"):
                with contextlib.suppress(FileNotFoundError, ProcessLookupError), \
                        open(f"/proc/{self.pid}/task/{task}/schedstat") as stat:
                    total += int(stat.read().split()[0])
        return total / 1e9

    def rss_kib(self) -> int:
        """Resident set size in KiB."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for {self.pid}")

    def wait_idle(self, window: float = 0.1, busy_ms: float = 2.0, timeout: float = 60.0
                  ) -> float:
        """Wait until a ``window`` passes in which the process used less than ``busy_ms``
        CPU; return the monotonic time that window began (its last busy moment, to a window's
        precision). Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        before, since = self.cpu_s(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(window)
            now, used = time.monotonic(), self.cpu_s()
            if (used - before) * 1000 < busy_ms:
                return since
            before, since = used, now
        raise TimeoutError(f"process {self.pid} still busy after {timeout} s")


def python_command(*args: str) -> list[str]:
    return [sys.executable, *args]


def stop_process(process: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Server:
    """The embedded xenstored as its own process."""

    def __init__(self, tmp: Path, trace: bool = False, guests: Iterable[int] = ()) -> None:
        self.socket = str(tmp / "xs")
        self.guest_sockets = {domid: str(tmp / f"g{domid}") for domid in guests}
        self.trace = tmp / "trace" if trace else None
        args = python_command("-m", "xenoffload.xenstored", "--socket", self.socket)
        for domid, path in self.guest_sockets.items():
            args += ["--domain", f"{domid}:{path}"]
        if self.trace is not None:
            args += ["--trace", str(self.trace)]
        self.process = subprocess.Popen(args)
        self.proc = Proc(self.process.pid)
        deadline = time.monotonic() + 20
        while not all(os.path.exists(path) for path in (self.socket,
                                                        *self.guest_sockets.values())):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("xenstored did not start")
            time.sleep(0.01)
        self.store = PyxsStore(self.socket, timeout=60.0)

    def mark(self, label: str) -> None:
        """Leave ``label`` in the trace (a READ of a marker path, answered ENOENT)."""
        self.store.try_read(f"{MARKER}/{label}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.store.close()
        stop_process(self.process)


def lay_out(socket: str, guests: Sequence[int], per_guest: int, threads: int = 8) -> list[Vif]:
    """Create ``guests`` with ``per_guest`` vifs each as libxl does (several toolstack
    connections at once, to keep the untimed setup short); return the vifs."""
    vifs = [(guest, devid) for guest in guests for devid in range(per_guest)]

    def create(chunk: Sequence[int]) -> None:
        with PyxsStore(socket, timeout=60.0) as store:
            for guest in chunk:
                create_domain(store, guest, f"guest{guest}")
                for devid in range(per_guest):
                    create_vif(store, vif_spec((guest, devid)))

    with PyxsStore(socket) as store:
        create_domain(store, 0, "Domain-0")
    chunks = [list(guests[index::threads]) for index in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, chunks))
    return vifs


def recreate(socket: str, vifs: Sequence[Vif], threads: int = 8) -> None:
    """Re-create every vif as libxl does when it re-adds a device (both directories removed
    and written anew in one transaction, states back to 1), from several connections."""
    def create(chunk: Sequence[Vif]) -> None:
        with PyxsStore(socket, timeout=60.0) as store:
            for vif in chunk:
                create_vif(store, vif_spec(vif))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, [list(vifs[index::threads]) for index in range(threads)]))


def vif_spec(vif: Vif) -> VifSpec:
    guest, devid = vif
    return VifSpec(guest, devid, f"00:16:3e:{guest >> 8:02x}:{guest & 255:02x}:{devid:02x}",
                   BRIDGE)


# ------------------------------------------------------------------------------- trace


@attrs.frozen
class TraceCounts:
    """Requests of each client kind between two markers, by type."""

    by_client: dict[str, collections.Counter[str]]

    def total(self, client: str) -> int:
        return sum(self.by_client.get(client, collections.Counter()).values())


_CLIENT_TOKENS = (("agent", re.compile(r"WATCH \(/local/domain xenoffload-backend")),
                  ("minimal", re.compile(r"WATCH \(/local/domain minimal")),
                  ("frontend", re.compile(r"WATCH \(" + re.escape(ROOT) + " frontend")),
                  ("set", re.compile(r"(WRITE|RM) \(/local/domain/0/xenoffload/policy")))


def requests_by_client(trace: Path) -> dict[str, TraceCounts]:
    """Return, for every span between two markers (named by the later marker), the requests
    of the agent, the minimal backend, the scripted frontend and ``xenoffload set`` by type.
    Clients are recognised by their first WATCH (or, for ``set``, its override write)."""
    kind: dict[str, str] = {}
    spans: dict[str, TraceCounts] = {}
    current: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    marker = f"READ ({MARKER}/"
    with open(trace, encoding="latin-1") as lines:
        for line in lines:
            if not line.startswith("IN "):
                continue
            parts = line.split(" ", 5)
            conn, op = parts[1], parts[4]
            rest = line[line.index(op):]
            if rest.startswith(marker):
                label = rest[len(marker):].split(" ", 1)[0]
                spans[label] = TraceCounts(dict(current))
                current = collections.defaultdict(collections.Counter)
                continue
            if conn not in kind:
                for name, pattern in _CLIENT_TOKENS:
                    if pattern.match(rest):
                        kind[conn] = name
                        break
            client = kind.get(conn)
            if client is not None:
                current[client][op] += 1
    return spans


# ------------------------------------------------------------------------------- children


def stdin_commands() -> queue.Queue[str]:
    """In a child: the lines its parent sends, as they come (``quit`` at end of input)."""
    commands: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put("quit")

    threading.Thread(target=read, daemon=True).start()
    return commands


class Child:
    """A part of the world run as ``agentlab.py PART ARGS``: lines to its stdin, lines from
    its stdout (read by a thread, so a wait can time out)."""

    def __init__(self, *args: str) -> None:
        self.name = args[0]
        self.process = subprocess.Popen(python_command(str(HERE), *args),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        self.proc = Proc(self.process.pid)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self._lines.put(line.strip())
        self._lines.put("eof")

    def line(self, timeout: float) -> str:
        """The next line it printed. Raises TimeoutError."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name} said nothing for {timeout} s") from None

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send("quit")
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            stop_process(self.process)


# ------------------------------------------------------------------------------- frontend


@attrs.define
class _FrontVif:
    own: bytes = INITIALISING
    backend: bytes | None = None


def run_frontend(socket: str, paced: bool = False) -> None:
    """Every frontend of every guest, on one dom0 connection, driven by lines on stdin:

    ``ignore G D`` (leave vif G/D to someone else), ``connected`` (say when every backend is
    Connected), ``key NAME VALUE`` (say when every backend's NAME is VALUE), ``reboot``
    (every frontend Closing, then Closed + Initialising once its backend closed, then
    Connected again; says when every backend is Connected), ``recreate`` (the toolstack is
    re-creating every vif: each frontend starts afresh; says when every backend is Connected
    again), ``quit``. Each goal is answered
    ``done <monotonic time>`` when met. Backend ``state`` is read on its watch events, every
    read and transaction of one batch of events pipelined (a burst).

    ``paced``: like independent guests instead. Each event is answered as it comes, on its
    own, with one blocking round trip at a time, as a netfront does when it sees its
    backend's state change: read the backend's ``state``; when it waits in InitWait, start a
    transaction, write the six feature keys and ``state`` one by one, end it. No event waits
    for another vif's."""
    store = PyxsStore(socket, timeout=60.0)
    store.watch(ROOT, "frontend")
    vifs: dict[Vif, _FrontVif] = {}
    keys: dict[Vif, bytes | None] = {}
    ignored: set[Vif] = set()
    commands = stdin_commands()
    goal: list[str] = []
    guests = store.directory(ROOT) if store.try_read(ROOT) is not None else []
    listings = store.directory_batch([(None, f"{ROOT}/{guest}") for guest in guests])
    for guest, devids in zip(guests, listings, strict=True):
        for devid in devids or ():
            vifs[(int(guest), int(devid))] = _FrontVif()
    _read_states(store, vifs, set(vifs))
    print("ready", flush=True)
    while True:
        while not commands.empty():
            command = commands.get().split()
            if not command:
                continue
            if command[0] == "quit":
                store.close()
                return
            if command[0] == "ignore":
                ignored.add((int(command[1]), int(command[2])))
            elif command[0] == "reboot":
                live = [vif for vif in sorted(vifs) if vif not in ignored]
                store.write_batch([WriteGroup(None, [
                    (f"{frontend_dir(vif)}/state", CLOSING) for vif in live])])
                for vif in live:
                    vifs[vif].own = CLOSING
                goal[:] = ["connected"]
            elif command[0] == "recreate":
                for vif in vifs:  # the toolstack writes every frontend anew (state 1)
                    vifs[vif].own = INITIALISING
                goal[:] = ["connected"]
            elif command[0] == "key":
                keys = dict(zip(vifs, store.read_batch(
                    [(None, f"{backend_dir(vif)}/{command[1]}") for vif in vifs]),
                    strict=True))
                goal[:] = command
            else:
                goal[:] = command
        events = store.next_events(0.01, 1 << 20)
        dirty: set[Vif] = set()
        dirty_keys: set[Vif] = set()
        answered: list[Vif] = []  # paced: each event of a state, in order
        for event in events:
            found = _vif_of(event.path)
            if found is None:
                continue
            vif, key = found
            if vif not in vifs:
                vifs[vif] = _FrontVif()
                dirty.add(vif)
                answered.append(vif)
            if key == "state":
                dirty.add(vif)
                answered.append(vif)
            elif goal[:1] == ["key"] and key == goal[1]:
                dirty_keys.add(vif)
        if dirty_keys:
            order = sorted(dirty_keys)
            keys.update(zip(order, store.read_batch(
                [(None, f"{backend_dir(vif)}/{goal[1]}") for vif in order]), strict=True))
        if paced:
            for vif in answered:
                if vif not in ignored:
                    vifs[vif].backend = store.try_read(f"{backend_dir(vif)}/state")
                    _act_paced(store, vifs[vif], vif)
        else:
            _read_states(store, vifs, dirty - ignored)
            _act(store, vifs, dirty - ignored)
        if goal and _met(goal, vifs, keys, ignored):
            print(f"done {time.monotonic():.6f}", flush=True)
            goal.clear()


def _read_states(store: Store, vifs: dict[Vif, _FrontVif], which: set[Vif]) -> None:
    order = sorted(which)
    for vif, state in zip(order, store.read_batch(
            [(None, f"{backend_dir(vif)}/state") for vif in order]), strict=True):
        vifs[vif].backend = state


def _act(store: Store, vifs: dict[Vif, _FrontVif], which: set[Vif]) -> None:
    """What a netfront does on seeing its backend's state: connect when it waits, come back
    (Closed, then Initialising) once it closed after a reboot."""
    connect = [vif for vif in sorted(which)
               if vifs[vif].backend == INIT_WAIT and vifs[vif].own == INITIALISING]
    back = [vif for vif in sorted(which)
            if vifs[vif].backend == CLOSED and vifs[vif].own == CLOSING]
    if back:
        store.write_batch([WriteGroup(None, [
            value for vif in back for value in ((f"{frontend_dir(vif)}/state", CLOSED),
                                                (f"{frontend_dir(vif)}/state", INITIALISING))
        ])])
        for vif in back:
            vifs[vif].own = INITIALISING
    while connect:
        txns = store.start_transactions(len(connect))
        store.write_batch([WriteGroup(txn, [
            *((f"{frontend_dir(vif)}/{name}", value) for name, value in FRONTEND_KEYS.items()),
            (f"{frontend_dir(vif)}/state", CONNECTED)]) for vif, txn in zip(connect, txns,
                                                                              strict=True)])
        done = store.end_transactions([(txn, True) for txn in txns])
        for vif, ok in zip(connect, done, strict=True):
            if ok:
                vifs[vif].own = CONNECTED
        connect = [vif for vif, ok in zip(connect, done, strict=True) if not ok]


def _act_paced(store: Store, vif_state: _FrontVif, vif: Vif) -> None:
    """:func:`_act` for one vif, one blocking round trip at a time (a netfront's way)."""
    path = f"{frontend_dir(vif)}/state"
    if vif_state.backend == CLOSED and vif_state.own == CLOSING:
        store.write(path, CLOSED)
        store.write(path, INITIALISING)
        vif_state.own = INITIALISING
    elif vif_state.backend == INIT_WAIT and vif_state.own == INITIALISING:
        def connect(txn: Transaction) -> None:
            for name, value in FRONTEND_KEYS.items():
                txn.write(f"{frontend_dir(vif)}/{name}", value)
            txn.write(path, CONNECTED)

        run_transaction(store, connect)
        vif_state.own = CONNECTED


def _met(goal: list[str], vifs: dict[Vif, _FrontVif], keys: dict[Vif, bytes | None],
         ignored: set[Vif]) -> bool:
    live = [vif for vif in vifs if vif not in ignored]
    if goal[0] == "connected":
        return all(vifs[vif].backend == CONNECTED and vifs[vif].own == CONNECTED
                   for vif in live)
    if goal[0] == "key":
        wanted = goal[2].encode()
        return all(keys.get(vif) == wanted for vif in live)
    raise ValueError(f"unknown goal {goal}")


class Frontend(Child):
    """The scripted frontend process (:func:`run_frontend`)."""

    def __init__(self, socket: str, paced: bool = False) -> None:
        super().__init__("frontend", socket, *(["--paced"] if paced else []))
        if self.line(60) != "ready":
            raise RuntimeError("scripted frontend did not start")

    def wait_done(self, timeout: float) -> float:
        """Wait for the current goal; return when it was met (monotonic)."""
        line = self.line(timeout)
        if not line.startswith("done "):
            raise RuntimeError(f"scripted frontend: {line}")
        return float(line.split()[1])


# ------------------------------------------------------------------------------- minimal


@attrs.define
class _MinimalVif:
    own: bytes = INITIALISING


def run_minimal(socket: str, advertised: bytes, enforce: bool = False) -> None:
    """A minimal backend in full mode: only the requests the protocol needs, one blocking
    round trip at a time, on one connection with one watch (``/local/domain``, as the agent).

    Per vif: discovery (the backend root's listing and one per guest), the ``frontend`` key
    (the link the toolstack recorded, checked), the five feature keys + ``state`` = InitWait
    in one transaction, then on each frontend ``state`` event a snapshot of the frontend (its
    ``state`` and six feature keys) in one transaction, and Connected + status + result in one
    transaction. A reboot of the frontend is followed as the agent's table says (Closing and
    Closed, each a one-write transaction; InitWait again when the frontend is back). No guard
    reads of its own state: it assumes it is the only writer and that nobody removes the
    device. Lines on stdin: ``flip VALUE`` rewrites every vif's five keys and its result in
    one transaction each and prints ``flipped <monotonic>``; ``quit``.

    ``enforce``: the kernel work too, as the agent's ``--toggles dry-run`` does it (the same
    enforcers over simulated devices, tc on): each vif's result enforced once, before it
    writes Connected (and on a flip)."""
    enforcers = None
    if enforce:
        from xenoffload.enforce import make_enforcers

        enforcers = make_enforcers("dry-run", tc=True)
    store = PyxsStore(socket, timeout=60.0)
    store.watch("/local/domain", "minimal")
    keys = {name: advertised for name in BACKEND_KEYS}
    vifs: dict[Vif, _MinimalVif] = {}
    commands = stdin_commands()

    def result() -> bytes:
        return b"to-guest=ipv4+ipv6 from-guest=ipv4+ipv6" if keys[BACKEND_KEYS[0]] == b"1" \
            else b"to-guest=none from-guest=none"

    def kernel(vif: Vif) -> None:
        if enforcers is None:
            return
        from xenoffload.negotiation import LinkResult
        from xenoffload.schema import FamilyFlags, Role
        from xenoffload.toggles.base import DeviceRef

        on = keys[BACKEND_KEYS[0]] == b"1"
        enforcers.for_device(DeviceRef(f"vif{vif[0]}.{vif[1]}", None)).enforce(
            Role.BACKEND, LinkResult(FamilyFlags(on, on), FamilyFlags(on, on)))

    def init_wait(vif: Vif) -> None:
        link = store.try_read(f"{backend_dir(vif)}/frontend")
        if link is not None and link.decode() != frontend_dir(vif):
            return

        def body(txn: Transaction) -> None:
            for name, value in keys.items():
                txn.write(f"{backend_dir(vif)}/{name}", value)
            txn.write(f"{backend_dir(vif)}/state", INIT_WAIT)

        run_transaction(store, body)
        vifs[vif].own = INIT_WAIT

    def move(vif: Vif, state: bytes, extra: dict[str, bytes] | None = None) -> None:
        def body(txn: Transaction) -> None:
            txn.write(f"{backend_dir(vif)}/state", state)
            for name, value in (extra or {}).items():
                txn.write(f"{backend_dir(vif)}/{name}", value)

        run_transaction(store, body)
        vifs[vif].own = state

    def peer(vif: Vif) -> None:
        def snapshot(txn: Transaction) -> bytes | None:
            state = txn.try_read(f"{frontend_dir(vif)}/state")
            for name in FRONTEND_KEYS:
                txn.try_read(f"{frontend_dir(vif)}/{name}")
            return state

        state, own = run_transaction(store, snapshot), vifs[vif].own
        if own == INIT_WAIT and state == CONNECTED:
            kernel(vif)
            move(vif, CONNECTED, {"xenoffload-csum-status": b"ok",
                                  "xenoffload-csum-result": result()})
        elif own == CONNECTED and state in (CLOSING, CLOSED, INITIALISING):
            move(vif, CLOSING)
            move(vif, CLOSED)
        elif own == CLOSED and state == INITIALISING:
            init_wait(vif)

    for guest in store.directory(ROOT):
        for devid in store.directory(f"{ROOT}/{guest}"):
            vifs[(int(guest), int(devid))] = _MinimalVif()
    for vif in sorted(vifs):
        init_wait(vif)
    print("ready", flush=True)
    pattern = re.compile(r"/local/domain/(\d+)/device/vif/(\d+)/state\Z")
    while True:
        while not commands.empty():
            command = commands.get().split()
            if command and command[0] == "quit":
                store.close()
                return
            if command and command[0] == "flip":
                keys = {name: command[1].encode() for name in BACKEND_KEYS}
                for vif in sorted(vifs):
                    kernel(vif)

                    def rewrite(txn: Transaction, vif: Vif = vif,
                                keys: dict[str, bytes] = keys) -> None:
                        for name, value in keys.items():
                            txn.write(f"{backend_dir(vif)}/{name}", value)
                        txn.write(f"{backend_dir(vif)}/xenoffload-csum-result", result())

                    run_transaction(store, rewrite)
                print(f"flipped {time.monotonic():.6f}", flush=True)
        events = store.next_events(0.01, 1 << 20)
        dirty = []
        for event in events:
            match = pattern.match(event.path)
            if match is not None:
                vif = (int(match.group(1)), int(match.group(2)))
                if vif in vifs and vif not in dirty:
                    dirty.append(vif)
        for vif in dirty:
            peer(vif)


class Minimal(Child):
    """The minimal backend process (:func:`run_minimal`)."""

    def __init__(self, socket: str, enforce: bool = False) -> None:
        super().__init__("minimal", socket, *(["--enforce"] if enforce else []))


# ------------------------------------------------------------------------------- attack


def run_flap(socket: str, guest: int, devid: int, flaps: int, chunk: int) -> None:
    """A guest flipping its own vif's ``state`` between Initialising and Connected ``flaps``
    times, ``chunk`` writes pipelined at a time, ending on Initialising; prints ``start`` and
    ``done`` with monotonic times."""
    store = PyxsStore(socket, timeout=60.0)
    path = f"{frontend_dir((guest, devid))}/state"
    print(f"start {time.monotonic():.6f}", flush=True)
    written = 0
    while written < flaps:
        count = min(chunk, flaps - written)
        values = [(path, CONNECTED if (written + i) % 2 == 0 else INITIALISING)
                  for i in range(count)]
        written += count
        if written >= flaps:
            values.append((path, INITIALISING))
        store.write_batch([WriteGroup(None, values)])
    print(f"done {time.monotonic():.6f}", flush=True)
    store.close()


# ------------------------------------------------------------------------------- agent


class Agent:
    """``xenoffload backend-agent --mode full --toggles dry-run`` as its own process, its log
    in a file."""

    def __init__(self, socket: str, config: Path, log: Path, extra: Sequence[str] = (),
                 profile: Path | None = None, wrap: Sequence[str] = ()) -> None:
        self.log = log
        self.started = time.monotonic()
        prefix = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [*wrap, *python_command(*prefix, "-m", "xenoffload", "backend-agent",
                                        "--mode", "full", "--toggles", "dry-run",
                                        "--xenstore", socket, "--config", str(config),
                                        *extra)],
                stdout=out, stderr=out)
        self.proc = Proc(self.process.pid)

    def hup(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def close(self) -> None:
        stop_process(self.process)


def count_lines(lines: Iterable[str], *needles: str) -> int:
    return sum(1 for line in lines if any(needle in line for needle in needles))


@contextlib.contextmanager
def running(*closers: object) -> Iterator[None]:
    try:
        yield
    finally:
        for closer in closers:
            with contextlib.suppress(Exception):
                closer.close()  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("frontend")
    p.add_argument("socket")
    p.add_argument("--paced", action="store_true",
                   help="answer each event alone, one blocking round trip at a time")
    p = sub.add_parser("minimal")
    p.add_argument("socket")
    p.add_argument("--advertise", default="0")
    p.add_argument("--enforce", action="store_true",
                   help="do the kernel work too (dry-run enforcers, tc on)")
    p = sub.add_parser("flap")
    p.add_argument("socket")
    p.add_argument("guest", type=int)
    p.add_argument("devid", type=int)
    p.add_argument("flaps", type=int)
    p.add_argument("--chunk", type=int, default=64)
    args = parser.parse_args(argv)
    if args.part == "frontend":
        run_frontend(args.socket, args.paced)
    elif args.part == "minimal":
        run_minimal(args.socket, args.advertise.encode(), args.enforce)
    else:
        run_flap(args.socket, args.guest, args.devid, args.flaps, args.chunk)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
