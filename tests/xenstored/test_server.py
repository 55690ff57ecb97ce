"""The embedded xenstored over real Unix sockets: framing errors, isolation, logs and trace,
guest sockets, crash/restart, stale sockets, and the foreground entry point."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenoffload.cli import main
from xenoffload.store.pyxs_store import PyxsStore
from xenoffload.xenstored.harness import EmbeddedXenstored
from xenoffload.xenstored.server import RequestRecord
from xenoffload.xs.wire import HEADER, Frame, Op

from .conftest import RawClient

TRACE_LINE = re.compile(r"^(IN|OUT) 0x[0-9a-f]+ \d{8} \d\d:\d\d:\d\d [A-Z_*]+ \(.*\)$")


def test_replies_echo_request_and_transaction_ids(xenstored: EmbeddedXenstored) -> None:
    client = RawClient(xenstored.socket_path)
    start = client.request(Op.TRANSACTION_START, b"\0")
    tx_id = int(start.payload.rstrip(b"\0"))
    reply = client.request(Op.WRITE, b"/t\0v", tx_id)
    assert (reply.op, reply.tx_id, reply.payload) == (Op.WRITE, tx_id, b"OK\0")
    assert client.request(Op.TRANSACTION_END, b"T\0", tx_id).payload == b"OK\0"
    client.close()


def test_watch_reply_precedes_its_first_event(xenstored: EmbeddedXenstored) -> None:
    client = RawClient(xenstored.socket_path)
    client.send_raw(Frame(Op.WATCH, 7, 0, b"/w\0tok\0").encode())
    first, second = client.receive(), client.receive()
    assert (first.op, first.req_id) == (Op.WATCH, 7)
    assert (second.op, second.payload) == (Op.WATCH_EVENT, b"/w\0tok\0")
    client.close()


def test_an_oversized_frame_drops_only_that_connection(xenstored: EmbeddedXenstored) -> None:
    bystander = RawClient(xenstored.socket_path)
    bystander.request(Op.WRITE, b"/keep\0safe")
    offender = RawClient(xenstored.socket_path)
    offender.send_raw(HEADER.pack(Op.WRITE, 1, 0, 5000) + b"x" * 5000)
    with pytest.raises(ConnectionError):
        offender.receive()
    assert bystander.request(Op.READ, b"/keep\0").payload == b"safe"
    bystander.close()


def test_unknown_types_are_answered_enosys(xenstored: EmbeddedXenstored) -> None:
    client = RawClient(xenstored.socket_path)
    reply = client.request(200, b"whatever")
    assert (reply.op, reply.payload) == (Op.ERROR, b"ENOSYS\0")
    client.close()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=600))
def test_garbage_bytes_never_disturb_other_clients(xenstored: EmbeddedXenstored,
                                                   garbage: bytes) -> None:
    bystander = RawClient(xenstored.socket_path)
    bystander.request(Op.WRITE, b"/keep\0safe")
    attacker = RawClient(xenstored.domain_sockets[1])
    attacker.send_raw(garbage)
    attacker.sock.shutdown(socket.SHUT_WR)
    try:
        while True:
            attacker.receive()
    except (ConnectionError, OSError):
        pass
    attacker.close()
    assert bystander.request(Op.READ, b"/keep\0").payload == b"safe"
    assert bystander.request(Op.DIRECTORY, b"/tool\0").payload == b"xenstored\0"
    bystander.close()


def test_guest_socket_connections_are_unprivileged_and_bound(
        xenstored: EmbeddedXenstored) -> None:
    guest = RawClient(xenstored.domain_sockets[2])
    assert guest.request(Op.READ, b"/tool\0").payload == b"EACCES\0"
    assert guest.request(Op.INTRODUCE, b"3\x000\x001\0").payload == b"EACCES\0"
    dom0 = RawClient(xenstored.socket_path)
    dom0.request(Op.MKDIR, b"/local/domain/2\0")
    dom0.request(Op.SET_PERMS, b"/local/domain/2\0n2\0")
    assert guest.request(Op.WRITE, b"data\0x").payload == b"OK\0"
    assert dom0.request(Op.GET_PERMS, b"/local/domain/2/data\0").payload == b"n2\0"
    guest.close()
    dom0.close()


def test_request_log_records_every_request_and_reply(xenstored: EmbeddedXenstored) -> None:
    seen: list[RequestRecord] = []
    xenstored.server.on_request = seen.append
    client = RawClient(xenstored.domain_sockets[1])
    client.request(Op.READ, b"/nope\0")
    record = xenstored.request_log[-1]
    assert (record.domid, record.op, record.payload, record.reply_op, record.reply_payload) == (
        1, "READ", b"/nope\0", "ERROR", b"EACCES\0")
    assert seen == [record]
    client.close()


def test_trace_file_uses_xenstoreds_format(xenstored: EmbeddedXenstored) -> None:
    client = RawClient(xenstored.socket_path)
    client.request(Op.WRITE, b"/t\0v\x01")
    client.request(Op.WATCH, b"/t\0tok\0")
    client.close()
    xenstored.stop()
    assert xenstored.trace_path is not None
    with open(xenstored.trace_path, encoding="ascii") as trace:
        lines = [line.rstrip("\n") for line in trace if line.startswith(("IN ", "OUT "))]
    assert all(TRACE_LINE.match(line) for line in lines), lines
    assert any(line.endswith("WRITE (/t v\\x01)") for line in lines)
    assert any(line.endswith("WATCH_EVENT (/t tok )") for line in lines)


def test_release_closes_the_guests_connections(xenstored: EmbeddedXenstored) -> None:
    guest = RawClient(xenstored.domain_sockets[1])
    guest.request(Op.GET_DOMAIN_PATH, b"1\0")
    dom0 = RawClient(xenstored.socket_path)
    assert dom0.request(Op.RELEASE, b"1\0").payload == b"OK\0"
    with pytest.raises((ConnectionError, OSError)):
        guest.request(Op.GET_DOMAIN_PATH, b"1\0")
    dom0.close()


def test_model_changes_from_another_thread_reach_watchers(xenstored: EmbeddedXenstored) -> None:
    client = RawClient(xenstored.socket_path)
    client.request(Op.WATCH, b"/ext\0tok\0")
    assert client.receive().payload == b"/ext\0tok\0"
    conn = xenstored.model.connect(0)
    xenstored.model.write(conn, "/ext/x", b"1")
    assert client.receive().payload == b"/ext/x\0tok\0"
    client.close()


def test_restart_loses_the_tree_unless_asked_to_keep_it(xenstored: EmbeddedXenstored) -> None:
    with PyxsStore(xenstored.socket_path, timeout=2) as store:
        store.write("/kept", b"1")
    xenstored.restart(keep_tree=True)
    with PyxsStore(xenstored.socket_path, timeout=2) as store:
        assert store.read("/kept") == b"1"
    xenstored.restart()
    with PyxsStore(xenstored.socket_path, timeout=2) as store:
        assert store.try_read("/kept") is None


def test_a_stale_socket_does_not_block_a_start(sockdir: str) -> None:
    path = f"{sockdir}/socket"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: what a crashed daemon leaves
    with EmbeddedXenstored(path) as server, PyxsStore(server.socket_path, timeout=2) as store:
        assert store.directory("/tool") == ["xenstored"]


def test_a_live_socket_is_not_stolen(xenstored: EmbeddedXenstored) -> None:
    with pytest.raises(OSError, match="already serving"):
        EmbeddedXenstored(xenstored.socket_path).start()
    with PyxsStore(xenstored.socket_path, timeout=2) as store:
        assert store.read("/tool") == b""


def test_kill_leaves_the_socket_file_and_restart_reclaims_it(
        xenstored: EmbeddedXenstored) -> None:
    xenstored.kill()
    assert os.path.exists(xenstored.socket_path)
    xenstored.start()
    with PyxsStore(xenstored.socket_path, timeout=2) as store:
        assert store.get_domain_path(1) == "/local/domain/1"


def _wait_for(path: str) -> None:
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_python_m_serves_until_signalled_and_removes_its_sockets(sockdir: str,
                                                                 signum: int) -> None:
    main, guest, trace = f"{sockdir}/socket", f"{sockdir}/dom3", f"{sockdir}/trace"
    process = subprocess.Popen(
        [sys.executable, "-m", "xenoffload.xenstored", "--socket", main,
         "--domain", f"3:{guest}", "--trace", trace, "-v"],
        stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(guest)
        with PyxsStore(guest, timeout=5) as store:
            assert store.get_domain_path(3) == "/local/domain/3"
    finally:
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=10)
    # SIGINT is an interruption (130, as every xenoffload command: docs/cli.md)
    assert process.returncode == (130 if signum == signal.SIGINT else 0), stderr
    assert not os.path.exists(main) and not os.path.exists(guest)
    assert "listening on" in stderr
    with open(trace, encoding="ascii") as lines:
        assert any("GET_DOMAIN_PATH (3 )" in line for line in lines)


def test_xenstored_command_rejects_a_bad_domain_argument(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["xenstored", "--socket", "/tmp/x", "--domain", "zero:/tmp/y"]) == 2
    assert "DOMID:PATH" in capsys.readouterr().err


def test_xenstored_command_reports_an_unusable_socket_path(sockdir: str) -> None:
    blocker = f"{sockdir}/file"
    with open(blocker, "w", encoding="ascii") as handle:
        handle.write("not a socket")
    assert main(["xenstored", "--socket", blocker]) == 1


@pytest.mark.parametrize("name_length", [8, 104 - len("/tmp/xsXXXXXXXX/")])
def test_a_socket_path_appears_only_once_it_listens(sockdir: str, name_length: int) -> None:
    """Bound under a temporary name and renamed (or, when the longer name would not fit,
    bound in place): a client that waits for the file never meets a refusing socket."""
    from xenoffload.xenstored.server import _listening_socket

    path = f"{sockdir}/{'s' * name_length}"
    listener = _listening_socket(path)
    try:
        assert os.listdir(sockdir) == [os.path.basename(path)]  # no temporary name left
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
    finally:
        listener.close()
