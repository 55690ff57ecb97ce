"""Each pyxs 0.4.1 hazard PyxsStore guards against (its module docstring lists them),
reproduced against the embedded xenstored, and the guard that contains it."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest
from pyxs.client import Client
from pyxs.connection import XenBusConnection, _UnixSocketTransport
from pyxs.exceptions import PyXSError

from xenoffload.store.base import StoreUnavailable, WatchEvent, XenStoreError, parse_perm
from xenoffload.store.pyxs_store import (
    PyxsStore,
    _AnyOpReceiver,
    _Router,
    connect_store,
)
from xenoffload.xenstored.harness import EmbeddedXenstored
from xenoffload.xs import requests
from xenoffload.xs.wire import Op


@pytest.fixture
def xenstored() -> Iterator[EmbeddedXenstored]:
    tmp = tempfile.mkdtemp(prefix="xs", dir="/tmp")
    server = EmbeddedXenstored(f"{tmp}/socket", {1: f"{tmp}/dom1"})
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def store(xenstored: EmbeddedXenstored) -> Iterator[PyxsStore]:
    with PyxsStore(xenstored.socket_path, timeout=2.0) as opened:
        yield opened


# 1. connection loss / hung daemon: never block forever


def test_a_hung_xenstored_makes_calls_time_out(xenstored: EmbeddedXenstored) -> None:
    store = PyxsStore(xenstored.socket_path, timeout=0.5)
    xenstored.faults.stall_replies = True
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="did not answer"):
        store.read("/")
    assert time.monotonic() - started < 3
    xenstored.faults.stall_replies = False
    with pytest.raises(StoreUnavailable):  # the connection is not trusted any more
        store.read("/")


def test_a_killed_xenstored_raises_store_unavailable(xenstored: EmbeddedXenstored,
                                                     store: PyxsStore) -> None:
    store.write("/test/a", b"1")
    xenstored.kill()
    with pytest.raises(StoreUnavailable):
        store.read("/test/a")


def test_next_event_wakes_up_when_the_connection_dies(xenstored: EmbeddedXenstored,
                                                      store: PyxsStore) -> None:
    store.watch("/test", "tok")
    assert store.next_event(2) == WatchEvent("/test", "tok")
    threading.Timer(0.3, xenstored.kill).start()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.next_event(None)
    assert time.monotonic() - started < 3


def test_reconnecting_means_a_new_store(xenstored: EmbeddedXenstored, store: PyxsStore) -> None:
    xenstored.restart()
    with pytest.raises(StoreUnavailable):
        store.read("/")
    fresh = connect_store(xenstored.socket_path, timeout=2.0)
    fresh.write("/test/again", b"1")
    assert fresh.read("/test/again") == b"1"
    fresh.close()


def test_connecting_without_xenstored_raises_store_unavailable(tmp_path: object) -> None:
    with pytest.raises(StoreUnavailable):
        PyxsStore("/tmp/no-such-xenstored-socket", timeout=1.0)


# 2. a reply with an unexpected request id


def test_a_reply_with_an_unknown_request_id_raises_store_unavailable(
        xenstored: EmbeddedXenstored, store: PyxsStore) -> None:
    xenstored.faults.bogus_req_id_next = True
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.read("/")
    assert time.monotonic() - started < 2.5


# 3. foreign or late events must not spin nor leak through


def test_same_user_token_on_two_paths_is_told_apart(store: PyxsStore) -> None:
    store.watch("/test/a", "tok")
    store.watch("/test/b", "tok")
    assert {store.next_event(2), store.next_event(2)} == {WatchEvent("/test/a", "tok"),
                                                        WatchEvent("/test/b", "tok")}
    store.unwatch("/test/a", "tok")
    store.write("/test/a", b"1")
    store.write("/test/b", b"1")
    assert store.next_event(2) == WatchEvent("/test/b", "tok")
    assert store.next_event(0.2) is None


def test_waiting_for_events_does_not_spin(store: PyxsStore) -> None:
    # A raw watch with a token the store never registered: its events reach the connection.
    store.raw_request(Op.WATCH, b"/test\0foreign\0")
    store.watch("/elsewhere", "mine")
    assert store.next_event(2) == WatchEvent("/elsewhere", "mine")
    store.write("/test/x", b"1")
    cpu_before = time.process_time()
    assert store.next_event(0.5) is None
    assert time.process_time() - cpu_before < 0.25


# 4. EEXIST must not leave a local registration behind


def test_a_refused_duplicate_watch_does_not_double_events(store: PyxsStore) -> None:
    store.watch("/test", "tok")
    with pytest.raises(XenStoreError, match="EEXIST"):
        store.watch("/test", "tok")
    assert store.next_event(2) == WatchEvent("/test", "tok")
    store.write("/test/x", b"1")
    assert store.next_event(2) == WatchEvent("/test/x", "tok")
    assert store.next_event(0.2) is None


def test_a_watch_the_server_refuses_is_not_registered(store: PyxsStore) -> None:
    with pytest.raises(XenStoreError, match="EINVAL"):
        store.watch("/bad//path", "tok")
    store.watch("/bad/path", "tok")  # same token again is fine: nothing leaked
    assert store.next_event(2) == WatchEvent("/bad/path", "tok")


# 5. printable-ASCII restriction and empty values


def test_pyxs_itself_refuses_empty_and_binary_values(xenstored: EmbeddedXenstored) -> None:
    with Client(unix_socket_path=xenstored.socket_path) as client:
        for value in (b"", b"\xff", b"a\nb"):
            with pytest.raises(ValueError):
                client.write(b"/test/raw", value)


def test_empty_and_binary_values_round_trip(store: PyxsStore) -> None:
    for value in (b"", b"\x00\x01\xff", b"tab\tnewline\n"):
        store.write("/test/raw", value)
        assert store.read("/test/raw") == value


def test_bytes_a_hostile_guest_wrote_are_read_unchanged(xenstored: EmbeddedXenstored,
                                                        store: PyxsStore) -> None:
    store.mkdir("/local/domain/1/data")
    store.set_perms("/local/domain/1/data", [parse_perm("n1")])
    hostile = b"\x1b[31m\xc3\x28\x00evil"
    with PyxsStore(xenstored.domain_sockets[1], timeout=2.0) as guest:
        guest.raw_request(Op.WRITE, b"data/x\0" + hostile)
    assert store.read("/local/domain/1/data/x") == hostile


# 6. Monitor over XenBus


class _XenBusOverSocket(_AnyOpReceiver, XenBusConnection):  # type: ignore[misc]
    """A XenBusConnection (as pyxs' isinstance check sees it) that talks to a socket."""

    def create_transport(self) -> _UnixSocketTransport:
        return _UnixSocketTransport(self.path)


def test_pyxs_refuses_monitor_over_xenbus_but_the_store_watches(
        xenstored: EmbeddedXenstored) -> None:
    client = Client(router=_Router(_XenBusOverSocket(xenstored.socket_path)))
    client.connect()
    try:
        with pytest.raises(PyXSError, match="XenBus"):
            client.monitor()
    finally:
        client.close()
    router = _Router(_XenBusOverSocket(xenstored.socket_path))
    with PyxsStore(xenstored.socket_path, timeout=2.0, router=router) as store:
        store.watch("/test", "tok")
        assert store.next_event(2) == WatchEvent("/test", "tok")


# 9. Linux's /dev/xen/xenbus keeps a request's body in its one buffer until it goes out


class _LinuxXenBusDevice:
    """What Linux's xenbus device (drivers/xen/xenbus/xenbus_dev_frontend.c, xenbus_xs.c) does
    with the requests written to it, in front of a real server socket: the writes of one
    message fill the file's message buffer; a complete message is queued with a copy of its
    header and its body still in that buffer (``vec->iov_base = msg + 1``); the kernel's xenbus
    thread copies queued messages out later, here once the writer paused (no write for 20 ms).
    A message written before that overwrites the body the queued one will carry."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.partial = b""
        self.buffer = bytearray(4096 + 16)
        self.queued: list[bytes] = []
        self.last_write = time.monotonic()
        self.lock = threading.Lock()
        self.closed = threading.Event()
        threading.Thread(target=self._xenbus_thread, daemon=True).start()

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise OSError("connection closed")
            data += chunk
        return data

    def send(self, data: bytes) -> None:
        with self.lock:
            self.partial += bytes(data)
            self.last_write = time.monotonic()
            if len(self.partial) >= 16:
                length = int.from_bytes(self.partial[12:16], "little")
                if len(self.partial) >= 16 + length:
                    self.buffer[:16 + length] = self.partial[:16 + length]
                    self.queued.append(self.partial[:16])  # the header is copied, not the body
                    self.partial = b""

    def _xenbus_thread(self) -> None:
        while not self.closed.wait(0.005):
            with self.lock:
                if not self.queued or time.monotonic() - self.last_write < 0.02:
                    continue
                for header in self.queued:
                    length = int.from_bytes(header[12:16], "little")
                    self.sock.sendall(header + bytes(self.buffer[16:16 + length]))
                self.queued.clear()

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


class _LinuxXenBus(_AnyOpReceiver, XenBusConnection):  # type: ignore[misc]
    """A XenBus connection through :class:`_LinuxXenBusDevice`."""

    def create_transport(self) -> _LinuxXenBusDevice:
        return _LinuxXenBusDevice(self.path)


def test_over_xenbus_a_batch_goes_one_request_at_a_time(xenstored: EmbeddedXenstored,
                                                        store: PyxsStore) -> None:
    """Pipelined through the kernel's device, the READs of a batch reach xenstored with each
    other's paths, cut to their own lengths (what the Xen lab's trace showed: ENOENT for keys
    that exist); one at a time, every read gets its own node."""
    paths = [f"/test/vif/{n}/feature-csum-{'tx' if n % 2 else 'rx-ipv6'}" for n in range(12)]
    for n, path in enumerate(paths):
        store.write(path, str(n).encode())
    router = _Router(_LinuxXenBus(xenstored.socket_path))
    with PyxsStore(xenstored.socket_path, timeout=5.0, router=router) as xenbus:
        assert xenbus.read_batch([(None, path) for path in paths]) == \
            [str(n).encode() for n in range(len(paths))]
        txn = xenbus.start_transactions(1)[0]
        assert xenbus.read_batch([(txn, path) for path in paths[:4]]) == [b"0", b"1", b"2", b"3"]
        assert xenbus.end_transactions([(txn, True)]) == [True]


# 7. privileged calls refused locally by pyxs


def test_pyxs_refuses_release_without_control_d_but_the_store_sends_it(
        xenstored: EmbeddedXenstored, store: PyxsStore) -> None:
    assert not Client.SU
    with Client(unix_socket_path=xenstored.socket_path) as client, \
            pytest.raises(PyXSError, match="Operation not permitted"):
        client.release_domain(5)
    store.call(requests.introduce(5, 0, 1))
    assert store.is_domain_introduced(5)
    store.call(requests.release(5))
    assert not store.is_domain_introduced(5)


# 8. request ids wrap at 2**32


def test_request_ids_wrap_at_2_to_the_32(xenstored: EmbeddedXenstored, store: PyxsStore) -> None:
    with store._lock:  # the next request id, just below the wrap
        store._next_req_id = 2**32 - 2
    for _ in range(4):
        store.write("/test/wrap", b"1")
    ids = [record.req_id for record in xenstored.request_log[-4:]]
    assert ids == [2**32 - 2, 2**32 - 1, 0, 1]


def test_concurrent_requests_from_threads_get_their_own_replies(store: PyxsStore) -> None:
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for round_ in range(50):
                value = f"{index}-{round_}".encode()
                store.write(f"/test/thread{index}", value)
                assert store.read(f"/test/thread{index}") == value
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# DIRECTORY_PART, unknown to pyxs


def test_long_directories_are_read_with_directory_part(xenstored: EmbeddedXenstored,
                                                       store: PyxsStore) -> None:
    names = [f"n{index:03d}-{'x' * 40}" for index in range(120)]
    for name in names:
        store.write(f"/big/{name}", b"")
    assert store.directory("/big") == names
    ops = [record.op for record in xenstored.request_log]
    assert "DIRECTORY_PART" in ops


# default path lookup


def test_connect_store_uses_xenstored_path(monkeypatch: pytest.MonkeyPatch,
                                           xenstored: EmbeddedXenstored) -> None:
    monkeypatch.setenv("XENSTORED_PATH", xenstored.socket_path)
    with connect_store(timeout=2.0) as store:
        assert store.get_domain_path(3) == "/local/domain/3"


def test_guest_socket_store_is_unprivileged(xenstored: EmbeddedXenstored) -> None:
    with PyxsStore(xenstored.domain_sockets[1], timeout=2.0) as guest, \
            pytest.raises(XenStoreError, match="EACCES"):
        guest.call(requests.introduce(9, 0, 1))


def test_raw_socket_sanity_unknown_type_is_enosys(xenstored: EmbeddedXenstored) -> None:
    with socket.socket(socket.AF_UNIX) as sock, PyxsStore(xenstored.socket_path) as store:
        sock.connect(xenstored.socket_path)
        with pytest.raises(XenStoreError, match="ENOSYS"):
            store.raw_request(99, b"")
