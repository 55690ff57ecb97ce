"""Hostile guests against the embedded xenstored, through the wire, as a guest would attack it.

Shared by tests/xenstored/test_limits.py (each attack alone, with bounds asserted) and
tests/soak/xenstored_soak.py (all of them together for a minute, figures reported).

:class:`ServerProcess` runs ``python -m xenoffload.xenstored`` as its own process (its RSS and
file descriptors are its own) with guest sockets for domains 1 (the attacker) and 2 (a
bystander guest), laid out by the toolstack API as libxl would. Each attack is a function
doing a bounded amount of hostile work; :class:`Bystanders` times READ round trips of dom0 and
of guest 2 meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from xenoffload.store.base import WriteGroup
from xenoffload.store.pyxs_store import PyxsStore
from xenoffload.toolstack import create_domain
from xenoffload.xs.errors import XenStoreError
from xenoffload.xs.wire import HEADER, Frame, FrameParser, Op

ATTACKER, BYSTANDER = 1, 2
#: A node of the attacker's, nearly as large as a node may be (the reply-amplification read).
BIG_NODE = "data/big"
BIG_VALUE = b"b" * 1900
#: Where this checkout's package lives (the server process imports it from there).
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def frame(op: int, req_id: int, payload: bytes, tx_id: int = 0) -> bytes:
    return HEADER.pack(op, req_id, tx_id, len(payload)) + payload


class RawConnection:
    """A blocking raw-socket client: one request, one reply (events are skipped)."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.parser = FrameParser()
        self.next_req = 1

    def request(self, op: int, payload: bytes) -> Frame:
        req_id = self.next_req
        self.next_req += 1
        self.sock.sendall(frame(op, req_id, payload))
        while True:
            reply = self.parser.next_frame()
            if reply is None:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed by xenstored")
                self.parser.receive(data)
                continue
            if reply.op != Op.WATCH_EVENT and reply.req_id == req_id:
                return reply

    def close(self) -> None:
        self.sock.close()


class ServerProcess:
    """``python -m xenoffload.xenstored`` with a dom0 socket and guest sockets for the
    ``attackers`` (domain 1 unless told otherwise) and the bystander domain 2; ``nofile``
    lowers its file-descriptor limit; ``args`` are more command-line flags."""

    def __init__(self, sockdir: str, args: Sequence[str] = (), nofile: int | None = None,
                 python_path: str = PACKAGE_ROOT, attackers: Sequence[int] = (ATTACKER,)
                 ) -> None:
        self.sockdir = sockdir
        self.socket_path = f"{sockdir}/socket"
        self.attackers = tuple(attackers)
        self.guest_sockets = {domid: f"{sockdir}/dom{domid}"
                              for domid in (*self.attackers, BYSTANDER)}
        self.log_path = f"{sockdir}/log"
        command = [sys.executable, "-m", "xenoffload.xenstored", "--socket", self.socket_path]
        for domid, path in self.guest_sockets.items():
            command += ["--domain", f"{domid}:{path}"]
        command += list(args)

        def limit_fds() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stderr=log, stdin=subprocess.DEVNULL, cwd=sockdir,
                env={**os.environ, "PYTHONPATH": python_path}, preexec_fn=limit_fds)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        for path in [self.socket_path, *self.guest_sockets.values()]:
            while True:
                assert self.process.poll() is None, self.log()
                assert time.monotonic() < deadline, f"{path} never answered"
                try:
                    RawConnection(path).close()
                    break
                except OSError:
                    time.sleep(0.02)

    def lay_out_domains(self) -> None:
        """dom0 and the guests as libxl lays them out, and each attacker's big node."""
        with PyxsStore(self.socket_path, timeout=10) as dom0:
            create_domain(dom0, 0, "Domain-0")
            for domid in self.guest_sockets:
                create_domain(dom0, domid, f"guest{domid}")
        for domid in self.attackers:
            with PyxsStore(self.guest_sockets[domid], timeout=10) as guest:
                guest.write(BIG_NODE, BIG_VALUE)

    def rss_kib(self) -> int:
        """The server's resident set size, KiB."""
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        return Path(self.log_path).read_text(encoding="utf-8", errors="replace")

    def log_bytes(self) -> int:
        return os.path.getsize(self.log_path)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@attrs.frozen
class Figures:
    """What one run of an attack did to the server and to the bystanders."""

    idle_rss_kib: int
    peak_rss_kib: int
    latencies: tuple[float, ...]  # seconds, every bystander probe
    errors: tuple[str, ...]  # bystander failures (refused, closed, timed out)

    @property
    def rss_growth_mib(self) -> float:
        return (self.peak_rss_kib - self.idle_rss_kib) / 1024

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0

    def describe(self) -> str:
        if not self.latencies:
            return f"RSS +{self.rss_growth_mib:.1f} MiB, no answer, errors {list(self.errors)}"
        return (f"RSS {self.idle_rss_kib / 1024:.1f} -> {self.peak_rss_kib / 1024:.1f} MiB "
                f"(+{self.rss_growth_mib:.1f}), bystander latency ms: "
                f"p50 {1000 * statistics.median(self.latencies):.1f} "
                f"p99 {1000 * self.percentile(0.99):.1f} "
                f"max {1000 * max(self.latencies):.1f} over {len(self.latencies)} probes, "
                f"errors {len(self.errors)}")


class Bystanders:
    """dom0 and guest 2, reading their own nodes; each probe also opens a fresh connection
    when ``fresh`` (an attack on connections must not keep newcomers out)."""

    def __init__(self, server: ServerProcess, fresh: bool = False) -> None:
        self.server = server
        self.fresh = fresh
        self.paths = {0: server.socket_path, BYSTANDER: server.guest_sockets[BYSTANDER]}
        self.requests = {0: b"/local/domain/0/name\0", BYSTANDER: b"name\0"}
        self.kept = {domid: RawConnection(path) for domid, path in self.paths.items()}

    def probe(self) -> tuple[list[float], list[str]]:
        """One READ round trip each; return the latencies and the failures."""
        latencies, errors = [], []
        for domid, path in self.paths.items():
            started = time.monotonic()
            try:
                conn = RawConnection(path, timeout=2.0) if self.fresh else self.kept[domid]
                reply = conn.request(Op.READ, self.requests[domid])
                if self.fresh:
                    conn.close()
                if reply.op != Op.READ:
                    errors.append(f"dom{domid}: {reply.payload!r}")
                    continue
            except OSError as err:
                errors.append(f"dom{domid}: {err!r}")
                continue
            latencies.append(time.monotonic() - started)
        return latencies, errors

    def close(self) -> None:
        for conn in self.kept.values():
            conn.close()


def measure(server: ServerProcess, attack: Callable[[threading.Event], None], *,
            probes: int = 30, interval: float = 0.02, fresh: bool = False,
            settle: float = 0.0) -> Figures:
    """Run ``attack`` in a thread (it returns once its hostile state is in place, or when the
    event is set); probe the bystanders meanwhile and after; return the figures."""
    bystanders = Bystanders(server, fresh)
    idle = server.rss_kib()
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            attack(stop)
        except BaseException as err:
            failure.append(err)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    peak = idle
    latencies: list[float] = []
    errors: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while worker.is_alive() and time.monotonic() < deadline:
            got, failed = bystanders.probe()
            latencies += got
            errors += failed
            peak = max(peak, server.rss_kib())
            time.sleep(interval)
        if settle:
            time.sleep(settle)
        for _ in range(probes):  # the attack's state is in place: the server must still serve
            got, failed = bystanders.probe()
            latencies += got
            errors += failed
            peak = max(peak, server.rss_kib())
            time.sleep(interval)
    finally:
        stop.set()
        worker.join(30)
        bystanders.close()
    if failure:
        raise failure[0]
    return Figures(idle, peak, tuple(latencies), tuple(errors))


# --------------------------------------------------------------------------------- attacks


def _nonblocking_send(sock: socket.socket, data: bytes) -> int:
    """Send what the socket takes now; return how much."""
    try:
        return sock.send(data, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return 0


class Held:
    """Sockets an attack keeps open (never read) until :meth:`close`."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


def watch_flood(server: ServerProcess, held: Held, writes: int = 400,
                watches: int = 129, token_size: int = 3900, guest: int = ATTACKER
                ) -> Callable[[threading.Event], None]:
    """Issue 13 #1: one connection holds ``watches`` watches with long tokens on its ``data``
    and never reads; another connection of the same guest writes ``writes`` distinct nodes
    under it. Each write fires ``watches`` events of ~4 KB at the reader that does not read."""

    def attack(stop: threading.Event) -> None:
        reader = RawConnection(server.guest_sockets[guest], timeout=10)
        held.sockets.append(reader.sock)
        for index in range(watches):
            token = f"{index:04d}".encode() + b"t" * (token_size - 4)
            reply = reader.request(Op.WATCH, b"data\0" + token + b"\0")
            assert reply.op == Op.WATCH, reply
        writer = RawConnection(server.guest_sockets[guest], timeout=10)
        try:
            for index in range(writes):
                if stop.is_set():
                    return
                writer.request(Op.WRITE, f"data/n{index}\0".encode() + b"v")
        finally:
            writer.close()

    return attack


def reply_flood(server: ServerProcess, held: Held, connections: int = 20,
                reads: int = 3000, guest: int = ATTACKER) -> Callable[[threading.Event], None]:
    """Issue 13 #2: ``connections`` guest connections pipeline ``reads`` READs each of a 1.9 KB
    node and never read a reply."""
    request = b"".join(frame(Op.READ, index, BIG_NODE.encode() + b"\0")
                       for index in range(reads))

    def attack(stop: threading.Event) -> None:
        pending = []
        for _ in range(connections):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(server.guest_sockets[guest])
            held.sockets.append(sock)
            pending.append([sock, 0])
        idle_rounds = 0
        deadline = time.monotonic() + 10
        while pending and idle_rounds < 3 and not stop.is_set() and \
                time.monotonic() < deadline:
            progress = False
            for entry in list(pending):
                sock, sent = entry
                count = _nonblocking_send(sock, request[sent:sent + 65536])
                entry[1] += count
                progress = progress or count > 0
                if entry[1] >= len(request):
                    pending.remove(entry)
            idle_rounds = 0 if progress else idle_rounds + 1
            if not progress:
                time.sleep(0.05)  # the server stopped reading them: that is the point

    return attack


def _connect_patiently(path: str, patience: float = 0.5) -> socket.socket | None:
    """Connect, retrying while the listen backlog is full (EAGAIN), for at most ``patience``
    seconds; None if it stayed full."""
    deadline = time.monotonic() + patience
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
            return sock
        except OSError as err:
            sock.close()
            if err.errno not in (errno.EAGAIN, errno.ECONNREFUSED):
                raise
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.001)


def connection_flood(server: ServerProcess, held: Held, connections: int = 1100,
                     guest: int = ATTACKER) -> Callable[[threading.Event], None]:
    """Issue 13 #3: the guest opens ``connections`` connections to its socket and holds
    them (sending nothing)."""

    def attack(stop: threading.Event) -> None:
        for _ in range(connections):
            if stop.is_set():
                return
            sock = _connect_patiently(server.guest_sockets[guest])
            if sock is not None:
                held.sockets.append(sock)

    return attack


def transaction_flood(server: ServerProcess, transactions: int = 11, nodes: int = 900,
                      guest: int = ATTACKER
                      ) -> tuple[Callable[[threading.Event], None], list[str]]:
    """Issue 13 #4: ``transactions`` concurrent transactions of the guest, each creating
    ``nodes`` nodes under its own parent, then all committed. Returns the attack and the list
    it fills with each commit's outcome ("OK" or the errno)."""
    outcomes: list[str] = []

    def attack(stop: threading.Event) -> None:
        with PyxsStore(server.guest_sockets[guest], timeout=30) as store:
            # Each parent exists before: the transactions do not conflict with each other.
            store.write_batch([WriteGroup(None, [(f"data/p{number}", b"")
                                                for number in range(transactions)])])
            txns = store.start_transactions(transactions)
            for number, txn in enumerate(txns):
                values = [(f"data/p{number}/{index // 100}/{index % 100}", b"")
                          for index in range(nodes)]
                store.write_batch([WriteGroup(txn, values)])
                if stop.is_set():
                    return
            for txn in txns:
                try:
                    outcomes.append("OK" if txn.commit() else "EAGAIN")
                except XenStoreError as err:
                    outcomes.append(err.errno_name)

    return attack, outcomes


def domain_usage(server: ServerProcess, domid: int) -> dict[str, int]:
    """What ``domid`` uses (nodes, watches, transactions, memory), as the server's CONTROL
    ``quota <domid>`` reports it."""
    dom0 = RawConnection(server.socket_path)
    try:
        reply = dom0.request(Op.CONTROL, f"quota\0{domid}\0".encode())
    finally:
        dom0.close()
    assert reply.op == Op.CONTROL, reply
    lines = reply.payload.rstrip(b"\0").decode().splitlines()[1:]
    return {name.strip(): int(value) for name, _, value in
            (line.partition(":") for line in lines)}


def owned_nodes(server: ServerProcess, domid: int) -> int:
    """How many nodes ``domid`` owns."""
    return domain_usage(server, domid)["nodes"]


@contextlib.contextmanager
def raised_fd_limit(wanted: int) -> object:
    """Let this (attacking) process open ``wanted`` descriptors for the time of the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, min(hard, wanted))
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
