"""PyxsStore's batches are really pipelined: every request of a batch reaches xenstored before
the client has seen a single reply (one round trip per batch, whatever its size).

Between the store and the embedded xenstored sits a proxy that forwards requests at once but
holds every reply back until the test lets them through. A store that waited for a reply before
sending its next request would leave the proxy with one request and wait forever (the test's
bounded wait fails); a pipelining one delivers the whole batch first.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from xenoffload.store.base import WriteGroup
from xenoffload.store.pyxs_store import PyxsStore
from xenoffload.xenstored.harness import EmbeddedXenstored
from xenoffload.xs.wire import FrameParser, Op


class ReplyGate:
    """A Unix-socket proxy for one client: requests pass, replies wait for :meth:`open`."""

    def __init__(self, server_path: str, path: str) -> None:
        self.server_path = server_path
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(1)
        self.path = path
        self.requests: list[int] = []  # types of the requests forwarded, in order
        self.replies = 0  # replies let through
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._open.set()
        for sock in [self.listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def hold(self) -> None:
        """Hold the replies from now on."""
        self._open.clear()

    def open(self) -> None:
        """Let the replies through."""
        self._open.set()

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            assert time.monotonic() < deadline, (
                f"only {len(self.requests)} of {count} requests arrived before any reply")
            time.sleep(0.005)

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            client, _ = self.listener.accept()
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.server_path)
            self._sockets += [client, upstream]
            for target in (lambda: self._pump(client, upstream, requests=True),
                           lambda: self._pump(upstream, client, requests=False)):
                thread = threading.Thread(target=target, daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        parser = FrameParser()
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                frames = parser.feed(data)
                if requests:
                    with self._lock:
                        self.requests += [frame.op for frame in frames]
                else:
                    self._open.wait()
                    self.replies += sum(frame.op != Op.WATCH_EVENT for frame in frames)
                sink.sendall(data)


@pytest.fixture
def gated() -> Iterator[tuple[PyxsStore, ReplyGate]]:
    tmp = tempfile.mkdtemp(prefix="xs", dir="/tmp")
    server = EmbeddedXenstored(f"{tmp}/socket")
    server.start()
    gate = ReplyGate(server.socket_path, f"{tmp}/gate")
    store = PyxsStore(gate.path, timeout=10.0)
    try:
        yield store, gate
    finally:
        store.close()
        gate.close()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _one_round_trip(gate: ReplyGate, expected: list[int], call: Callable[[], Any]) -> Any:
    """Run ``call`` with replies held; check every request arrived before any reply; return
    what it returned."""
    result: list[Any] = []
    errors: list[BaseException] = []
    before = len(gate.requests)
    gate.hold()

    def run() -> None:
        try:
            result.append(call())
        except BaseException as err:
            errors.append(err)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        gate.wait_for_requests(before + len(expected))
        assert gate.requests[before:] == expected
    finally:
        gate.open()
        worker.join(10)
    assert not errors, errors
    return result[0]


def test_read_batch_is_one_round_trip(gated: tuple[PyxsStore, ReplyGate]) -> None:
    store, gate = gated
    store.write_batch([WriteGroup(None, [(f"/p/{index}", str(index).encode())
                                         for index in range(50)])])
    txn = store.transaction()
    batch = [(txn if index % 2 else None, f"/p/{index}") for index in range(50)]
    values = _one_round_trip(gate, [Op.READ] * 50, lambda: store.read_batch(batch))
    assert values == [str(index).encode() for index in range(50)]
    txn.abort()


def test_directory_batch_is_one_round_trip(gated: tuple[PyxsStore, ReplyGate]) -> None:
    store, gate = gated
    store.write_batch([WriteGroup(None, [(f"/d/{index}/x", b"") for index in range(10)])])
    listings = _one_round_trip(gate, [Op.DIRECTORY] * 10, lambda: store.directory_batch(
        [(None, f"/d/{index}") for index in range(10)]))
    assert listings == [["x"]] * 10


def test_a_whole_batch_of_transactions_takes_three_round_trips(
        gated: tuple[PyxsStore, ReplyGate]) -> None:
    store, gate = gated
    store.write_batch([WriteGroup(None, [(f"/vif/{index}/state", b"4") for index in range(20)])])
    txns = _one_round_trip(gate, [Op.TRANSACTION_START] * 20,
                           lambda: store.start_transactions(20))
    groups = [WriteGroup(txn, [(f"/vif/{index}/feature-csum-tx", b"1"),
                               (f"/vif/{index}/feature-csum-rx", b"1")])
              for index, txn in enumerate(txns)]
    _one_round_trip(gate, [Op.WRITE, Op.WRITE] * 20, lambda: store.write_batch(groups))
    committed = _one_round_trip(gate, [Op.TRANSACTION_END] * 20,
                                lambda: store.end_transactions([(txn, True) for txn in txns]))
    assert committed == [True] * 20
    assert store.read_batch([(None, f"/vif/{index}/feature-csum-rx")
                             for index in range(20)]) == [b"1"] * 20


def test_the_gate_catches_a_store_that_waits_between_requests(
        gated: tuple[PyxsStore, ReplyGate]) -> None:
    """The check itself: one request at a time never delivers the second while held."""
    store, gate = gated
    store.write_batch([WriteGroup(None, [("/q/a", b"1"), ("/q/b", b"2")])])
    before = len(gate.requests)
    gate.hold()
    worker = threading.Thread(target=lambda: [store.read(path) for path in ("/q/a", "/q/b")])
    worker.start()
    try:
        with pytest.raises(AssertionError, match=f"only {before + 1} of {before + 2} requests"):
            gate.wait_for_requests(before + 2, timeout=0.5)
    finally:
        gate.open()
        worker.join(10)


def test_a_batch_is_one_write_and_a_request_is_one_write(
        gated: tuple[PyxsStore, ReplyGate], monkeypatch: pytest.MonkeyPatch) -> None:
    """pyxs writes a request's header and body apart; PyxsStore writes each request whole and
    a pipelined batch in one ``sendall``."""
    store, _gate = gated
    from xenoffload.store import pyxs_internals as internals

    transport = internals.connection_transport(
        internals.router_connection(store._router))
    writes: list[int] = []
    original = transport.send

    def counting(data: bytes) -> None:
        writes.append(len(data))
        original(data)

    monkeypatch.setattr(transport, "send", counting)
    store.write_batch([WriteGroup(None, [(f"/w/{index}", b"x") for index in range(200)])])
    assert len(writes) == 1
    store.read("/w/1")
    assert len(writes) == 2
    txns = store.start_transactions(3)
    store.write_batch([WriteGroup(txn, [("/w/2", b"y")]) for txn in txns])
    store.end_transactions([(txn, True) for txn in txns])
    assert len(writes) == 5
