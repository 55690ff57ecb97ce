"""Issue 13's attacks, each through the wire against the server as its own process: whatever one
guest does, the server's memory stays bounded and dom0 and another guest keep being answered.

Bounds (correctness, with generous margins; the figures themselves are the soak's business,
tests/soak/xenstored_soak.py): the server's RSS grows by less than 64 MiB over its idle size;
90% of the bystanders' READ round trips take less than 50 ms and none more than 1 s (on a
shared two-core machine a single answer can be late for reasons that are not the server's),
and none fails.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import pytest

from xenoffload.xs.wire import FrameParser, Op

from .attacks import (
    ATTACKER,
    Figures,
    Held,
    ServerProcess,
    connection_flood,
    domain_usage,
    measure,
    owned_nodes,
    raised_fd_limit,
    reply_flood,
    transaction_flood,
    watch_flood,
)

pytestmark = pytest.mark.slow

RSS_GROWTH_MIB = 64
LATENCY = 0.050
WORST_LATENCY = 1.0


def assert_bounded(figures: Figures) -> None:
    assert figures.rss_growth_mib < RSS_GROWTH_MIB, figures.describe()
    assert not figures.errors, figures.describe()
    assert len(figures.latencies) >= 40, figures.describe()
    assert figures.percentile(0.9) < LATENCY, figures.describe()
    assert max(figures.latencies) < WORST_LATENCY, figures.describe()


@pytest.fixture
def held() -> Iterator[Held]:
    sockets = Held()
    try:
        yield sockets
    finally:
        sockets.close()


def _server(sockdir: str, args: tuple[str, ...] = (), nofile: int | None = None
            ) -> Iterator[ServerProcess]:
    server = ServerProcess(sockdir, args, nofile=nofile)
    try:
        server.lay_out_domains()
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(sockdir: str) -> Iterator[ServerProcess]:
    yield from _server(sockdir)


def _memory(server: ServerProcess, domid: int) -> int:
    return domain_usage(server, domid)["memory"]


def _drain(sock: socket.socket, timeout: float = 5.0) -> list[int]:
    """Read what the server sent until it stays quiet; return the frames' types."""
    sock.settimeout(0.3)
    parser = FrameParser()
    ops: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            break
        if not data:
            break
        ops += [frame.op for frame in parser.feed(data)]
    return ops


def test_watch_events_for_a_guest_that_never_reads_are_bounded(server: ServerProcess,
                                                               held: Held) -> None:
    """Issue 13 #1: 129 watches with 3.9 KB tokens, 400 writes, the watcher never reads."""
    figures = measure(server, watch_flood(server, held, writes=400))
    assert_bounded(figures)
    assert _memory(server, ATTACKER) < server_quota_memory()
    events = _drain(held.sockets[0]).count(Op.WATCH_EVENT)
    assert 0 < events < 400 * 129 // 4  # most were dropped at the quota, as C does
    held.close()
    deadline = time.monotonic() + 5
    # Its watches and queued output go with the connection; its 400 small nodes stay.
    while _memory(server, ATTACKER) > 400 * 100:
        assert time.monotonic() < deadline, _memory(server, ATTACKER)
        time.sleep(0.02)


def server_quota_memory() -> int:
    return 2 * 1024 * 1024 + 512 * 1024


def test_replies_a_guest_never_reads_are_bounded(server: ServerProcess, held: Held) -> None:
    """Issue 13 #2: 20 connections pipeline 3,000 READs each of a 1.9 KB node, reading none."""
    figures = measure(server, reply_flood(server, held, connections=20, reads=3000))
    assert_bounded(figures)
    reader, others = held.sockets[0], held.sockets[1:]
    for sock in others:
        sock.close()
    held.sockets[:] = [reader]
    replies = _drain(reader, timeout=30)  # once it reads, every request gets its answer
    assert replies == [Op.READ] * 3000


def test_a_connection_flood_locks_neither_dom0_nor_another_guest_out(sockdir: str,
                                                                    held: Held) -> None:
    """Issue 13 #3: with 1,024 descriptors, a guest opens 1,100 connections and holds them."""
    for server in _server(sockdir, nofile=1024):
        with raised_fd_limit(4096):
            figures = measure(server, connection_flood(server, held, connections=1100),
                              fresh=True)
        assert_bounded(figures)
        assert len(held.sockets) == 1100  # it got them all: the excess was closed at once
        assert server.log_bytes() < 2000, server.log()  # once a minute, not per attempt
        assert _closed_by_server(held.sockets) == 1100 - 32


def _closed_by_server(sockets: list[socket.socket]) -> int:
    """How many of ``sockets`` the server has closed (they read as end of file)."""
    poller = select.poll()
    by_fd = {sock.fileno(): sock for sock in sockets}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    ready = [fd for fd, _ in poller.poll(2000)]
    return sum(1 for fd in ready if by_fd[fd].recv(1, socket.MSG_DONTWAIT) == b"")


def test_reserved_descriptors_keep_dom0_in_without_a_per_socket_cap(sockdir: str,
                                                                     held: Held) -> None:
    """With the per-socket cap off and 256 descriptors, guests share what dom0 does not keep."""
    for server in _server(sockdir, ("--max-guest-connections", "0"), nofile=256):
        with raised_fd_limit(4096):
            figures = measure(server, connection_flood(server, held, connections=400),
                              fresh=True)
        assert_bounded(figures)
        assert server.log_bytes() < 2000, server.log()


def test_concurrent_transactions_cannot_exceed_the_node_quota(server: ServerProcess) -> None:
    """Issue 13 #4: 11 transactions each create 900 nodes under their own parent."""
    attack, outcomes = transaction_flood(server, transactions=11, nodes=900)
    figures = measure(server, attack)
    assert_bounded(figures)
    assert outcomes == ["OK"] + ["ENOSPC"] * 10
    assert owned_nodes(server, ATTACKER) <= 1000


def test_broken_framing_repeated_by_a_guest_is_logged_once(server: ServerProcess) -> None:
    for _ in range(200):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(server.guest_sockets[ATTACKER])
            sock.sendall(b"\xff" * 16)  # announces a payload far over 4096 bytes
            sock.settimeout(5)
            assert sock.recv(1) == b""  # dropped
    log = server.log()
    assert log.count("dropping connection") == 1, log
    assert server.log_bytes() < 2000
