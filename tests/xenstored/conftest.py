"""Fixtures for the embedded xenstored: a running server on short temporary socket paths, and a
minimal raw-socket client."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator

import pytest

from xenoffload.xenstored.harness import EmbeddedXenstored
from xenoffload.xs.wire import Frame, FrameParser, Op


@pytest.fixture
def sockdir() -> Iterator[str]:
    """A short directory for Unix sockets (tmp_path may exceed the 108-byte limit)."""
    path = tempfile.mkdtemp(prefix="xs", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def xenstored(sockdir: str) -> Iterator[EmbeddedXenstored]:
    server = EmbeddedXenstored(f"{sockdir}/socket", {1: f"{sockdir}/dom1", 2: f"{sockdir}/dom2"},
                               trace_path=f"{sockdir}/trace")
    with server:
        yield server


class RawClient:
    """Speaks frames over a socket; no validation, for malformed input and exact replies."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.parser = FrameParser()
        self.pending: list[Frame] = []
        self.next_req = 1

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> Frame:
        """Return the next frame (reply or event); raise ConnectionError on EOF."""
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by xenstored")
            self.pending += self.parser.feed(data)
        return self.pending.pop(0)

    def request(self, op: int, payload: bytes, tx_id: int = 0) -> Frame:
        """Send a request; return its reply (events received meanwhile are kept aside)."""
        req_id = self.next_req
        self.next_req += 1
        self.send_raw(Frame(op, req_id, tx_id, payload).encode())
        events = []
        while True:
            frame = self.receive()
            if frame.op == Op.WATCH_EVENT:
                events.append(frame)
                continue
            assert frame.req_id == req_id
            self.pending = events + self.pending
            return frame

    def close(self) -> None:
        self.sock.close()
