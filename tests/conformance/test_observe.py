"""Turning request records into what became visible, and reading xenstored -T traces."""

from __future__ import annotations

from xenoffload.conformance.observe import absolute, effects, parse_trace, under, wire_ops
from xenoffload.xenstored.server import RequestRecord


def rec(op: str, payload: bytes, tx_id: int = 0, reply_op: str | None = None,
        reply: bytes = b"OK\0", conn: int = 7, domid: int = 1) -> RequestRecord:
    return RequestRecord(conn, domid, op, 0, tx_id, payload, reply_op or op, reply, 0.0)


def test_a_committed_transaction_is_one_effect_and_an_aborted_one_none() -> None:
    records = [
        rec("TRANSACTION_START", b"\0", reply=b"3\0"),
        rec("WRITE", b"device/vif/0/feature-csum-tx\x001", tx_id=3),
        rec("WRITE", b"device/vif/0/state\x004", tx_id=3),
        rec("TRANSACTION_END", b"T\0", tx_id=3),
        rec("TRANSACTION_START", b"\0", reply=b"4\0"),
        rec("WRITE", b"device/vif/0/state\x005", tx_id=4),
        rec("TRANSACTION_END", b"F\0", tx_id=4),
        rec("TRANSACTION_START", b"\0", reply=b"5\0"),
        rec("WRITE", b"device/vif/0/state\x006", tx_id=5),
        rec("TRANSACTION_END", b"T\0", tx_id=5, reply_op="ERROR", reply=b"EAGAIN\0"),
        rec("RM", b"/local/domain/1/device/vif/0\0"),
    ]
    found = effects(wire_ops(enumerate(records)))
    assert [e.writes for e in found] == [
        (("/local/domain/1/device/vif/0/feature-csum-tx", b"1"),
         ("/local/domain/1/device/vif/0/state", b"4")),
        (("/local/domain/1/device/vif/0", None),)]


def test_relative_paths_resolve_against_the_connections_domain() -> None:
    assert absolute("device/vif/0", 3) == "/local/domain/3/device/vif/0"
    assert absolute("/local/domain/0/x", 3) == "/local/domain/0/x"
    assert under("/a/b/c", "/a/b") and under("/a/b", "/a/b") and not under("/a/bc", "/a/b")


def test_trace_requests_inherit_the_open_transaction_and_pair_with_replies() -> None:
    lines = [
        "IN 0x1 20261126 21:25:24 TRANSACTION_START ( )",
        "OUT 0x1 20261126 21:25:24 TRANSACTION_START (3 )",
        "IN 0x1 20261126 21:25:24 WRITE (backend/vif/1/0/feature-sg 1)",
        "OUT 0x1 20261126 21:25:24 WATCH_EVENT (backend/vif/1/0/x TOKEN )",
        "OUT 0x1 20261126 21:25:24 WRITE (OK )",
        "IN 0x1 20261126 21:25:24 TRANSACTION_END (T )",
        "OUT 0x1 20261126 21:25:24 TRANSACTION_END (OK )",
        "IN 0x1 20261126 21:25:24 WRITE (backend/vif/1/0/feature-ctrl-ring 1)",
        "OUT 0x1 20261126 21:25:24 WRITE (OK )",
    ]
    found = effects(wire_ops(enumerate(parse_trace(lines))))
    assert [(e.tx_id, e.writes) for e in found] == [
        (3, (("/local/domain/0/backend/vif/1/0/feature-sg", b"1"),)),
        (0, (("/local/domain/0/backend/vif/1/0/feature-ctrl-ring", b"1"),))]
