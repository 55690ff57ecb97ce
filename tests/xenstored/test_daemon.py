"""``xenoffload xenstored`` as a service: sd_notify readiness, background start with a pid file,
and the sd_notify client itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from xenoffload import sdnotify
from xenoffload.store.pyxs_store import PyxsStore

COMMAND = [sys.executable, "-m", "xenoffload.xenstored"]


@pytest.fixture
def notify_socket(sockdir: str) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notify socket, and its path."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = f"{sockdir}/notify"
    sock.bind(path)
    sock.settimeout(10)
    try:
        yield sock, path
    finally:
        sock.close()


# ---------------------------------------------------------------- sdnotify


def test_notify_sends_one_datagram_of_assignments(
        notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert sdnotify.ready("serving", environ={"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
    assert sdnotify.stopping(environ={"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"STOPPING=1"
    assert sdnotify.stopping("stopped", environ={"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopped"
    assert sdnotify.status("busy", environ={"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"STATUS=busy"


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"xenoffload-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(10)
        assert sdnotify.ready(environ={"NOTIFY_SOCKET": f"@{name}"})
        assert sock.recv(4096) == b"READY=1"


def test_without_a_notify_socket_nothing_is_sent() -> None:
    assert not sdnotify.ready(environ={})
    assert not sdnotify.ready(environ={"NOTIFY_SOCKET": ""})


def test_an_unreachable_manager_is_not_an_error(sockdir: str) -> None:
    assert not sdnotify.ready(environ={"NOTIFY_SOCKET": f"{sockdir}/nobody"})


def test_assignments_cannot_smuggle_lines() -> None:
    with pytest.raises(ValueError):
        sdnotify.status("two\nlines", environ={})
    with pytest.raises(ValueError):
        sdnotify.notify({"A=B": "1"}, environ={})


# ---------------------------------------------------------------- the daemon


def test_ready_is_sent_once_every_socket_listens_and_stopping_at_the_end(
        sockdir: str, notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    main, guest = f"{sockdir}/socket", f"{sockdir}/dom4"
    process = subprocess.Popen([*COMMAND, "--socket", main, "--domain", f"4:{guest}"],
                               env={**os.environ, "NOTIFY_SOCKET": path},
                               stderr=subprocess.PIPE, text=True)
    try:
        message = sock.recv(4096).decode()
        assert message.startswith("READY=1\nSTATUS=serving ")
        for endpoint in (main, guest):  # ready means: both answer now, no waiting
            with PyxsStore(endpoint, timeout=5) as store:
                assert store.get_domain_path(4) == "/local/domain/4"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert sock.recv(4096) == b"STOPPING=1"


def test_background_returns_once_serving_and_the_pidfile_names_the_daemon(
        sockdir: str) -> None:
    main, pidfile = f"{sockdir}/socket", f"{sockdir}/xenstored.pid"
    done = subprocess.run([*COMMAND, "--socket", main, "--background", "--pidfile", pidfile],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr  # returned although the daemon holds no pipe
    with open(pidfile, encoding="ascii") as handle:
        pid = int(handle.read())
    try:
        assert pid != os.getpid()
        with PyxsStore(main, timeout=5) as store:
            store.write("/up", b"1")
            assert store.read("/up") == b"1"
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while os.path.exists(pidfile) or os.path.exists(main):
        assert time.monotonic() < deadline, "the daemon did not clean up after SIGTERM"
        time.sleep(0.02)
    with pytest.raises(ProcessLookupError):
        _wait_gone(pid)


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        os.kill(pid, 0)  # raises ProcessLookupError once it is gone
        time.sleep(0.02)


def test_background_fails_when_the_daemon_cannot_serve(sockdir: str) -> None:
    blocker = f"{sockdir}/file"
    with open(blocker, "w", encoding="ascii") as handle:
        handle.write("not a socket")
    done = subprocess.run([*COMMAND, "--socket", blocker, "--background",
                           "--pidfile", f"{sockdir}/pid"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert not os.path.exists(f"{sockdir}/pid")


def test_log_file_takes_the_log(sockdir: str) -> None:
    main, log_file = f"{sockdir}/socket", f"{sockdir}/log"
    done = subprocess.run([*COMMAND, "--socket", main, "--background", "-v",
                           "--pidfile", f"{sockdir}/pid", "--log-file", log_file],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    with open(f"{sockdir}/pid", encoding="ascii") as handle:
        os.kill(int(handle.read()), signal.SIGTERM)
    deadline = time.monotonic() + 10
    while os.path.exists(main):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with open(log_file, encoding="utf-8") as handle:
        text = handle.read()
    assert "listening on" in text and "shutting down" in text


def test_quota_flags_reach_the_server(sockdir: str) -> None:
    main = f"{sockdir}/socket"
    process = subprocess.Popen(
        [*COMMAND, "--socket", main, "-E", "3", "-W", "7", "-M", "5000",
         "-Q", "outstanding=5", "-Q", "memory=100000", "-Q", "node-permissions=2"],
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(main):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.02)
        with PyxsStore(main, timeout=5) as store:
            settings = store.raw_request(0, b"quota\0").decode()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)
    values = {line.split(":")[0].strip(): int(line.split(":")[1].split()[0])
              for line in settings.rstrip("\0").splitlines()[1:]}
    assert values == {"nodes": 3, "watches": 7, "transactions": 10, "outstanding": 5,
                      "transaction-nodes": 1024, "memory": 100000, "node-size": 2048,
                      "path-max": 2048, "permissions": 2}


def test_an_unknown_quota_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from xenoffload.cli import main

    assert main(["xenstored", "--socket", "/tmp/x", "-Q", "bogus=1"]) == 2
    assert "NAME=N" in capsys.readouterr().err
