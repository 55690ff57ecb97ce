"""Recorded kernel conversations (tests/toggles/fixtures/kernel-replies.json) and their replay.

A conversation is what one xenoffload call exchanged with a real kernel: each request exactly
as sent and each datagram the kernel answered with. :class:`Replay` stands in for the socket
(a :class:`~xenoffload.toggles.nl_codec.NetlinkTransport`): it checks that every request is
byte for byte the recorded one (so an encoder change shows up here and the fixture must be
captured again with capture_replies.py, as root) and feeds the recorded datagrams through the
same :class:`~xenoffload.toggles.nl_codec.ReplyCollector` the socket uses.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

import attrs

from xenoffload.toggles.nl_codec import (
    Answer,
    ErrorAnswer,
    ReplyCollector,
    Request,
    decode_messages,
)

FIXTURE = Path(__file__).with_name("fixtures") / "kernel-replies.json"


@attrs.frozen
class Exchange:
    """One request as sent and the datagrams that answered it."""

    label: str
    request: bytes
    answers: tuple[bytes, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Exchange:
        return cls(data["label"], bytes.fromhex(data["request"]),
                   tuple(bytes.fromhex(answer) for answer in data["answers"]))

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "request": self.request.hex(),
                "answers": [answer.hex() for answer in self.answers]}

    def as_request(self) -> Request:
        """Return the recorded request as a Request (to send it elsewhere)."""
        (message,) = decode_messages(self.request)
        return Request(message.kind, message.flags, message.payload)


@attrs.frozen
class Conversation:
    """What was set up (``setup``, sent directly) and what the xenoffload call exchanged."""

    name: str
    description: str
    setup: tuple[Exchange, ...]
    exchanges: tuple[Exchange, ...]


def load() -> tuple[str, dict[str, Conversation]]:
    """Return the recording kernel's release and the conversations by name."""
    data = json.loads(FIXTURE.read_text())
    return data["kernel"], {
        name: Conversation(name, entry["description"],
                           tuple(map(Exchange.from_json, entry["setup"])),
                           tuple(map(Exchange.from_json, entry["exchanges"])))
        for name, entry in data["conversations"].items()
    }


class Replay:
    """Answers requests from recorded exchanges, in order, checking each request."""

    def __init__(self, exchanges: tuple[Exchange, ...]) -> None:
        self.pending = deque(exchanges)

    def exchange(self, request: Request, label: str) -> Answer | ErrorAnswer:
        assert self.pending, f"{label}: a request the recording does not have"
        expected = self.pending.popleft()
        assert label == expected.label, f"sent {label}, recorded {expected.label}"
        (recorded,) = decode_messages(expected.request)
        assert request.encode(recorded.seq, recorded.port) == expected.request, (
            f"{label}: request differs from the recording")
        collector = ReplyCollector(recorded.seq, request.expect())
        for datagram in expected.answers:
            outcome = collector.feed(datagram)
            if outcome is not None:
                return outcome
        raise AssertionError(f"{label}: the recorded answer is incomplete")

    def close(self) -> None:
        pass

    @property
    def finished(self) -> bool:
        """Return whether every recorded exchange was replayed."""
        return not self.pending
