"""Ground truth: replay xl's connection from the real xenstored trace and get the same replies.

tests/conformance/fixtures/real-xen-vif-negotiation.trace was recorded with C xenstored (Xen 4.17)
while xl created a guest with one vif. xl's connection (0x5555fccf4f70) is single threaded, so
its requests can be replayed alone: everything between TRANSACTION_START and TRANSACTION_END
belongs to that transaction. Its first 169 requests (domain creation: transactions, RM of
missing nodes with missing parents, WRITE/MKDIR with parents created, SET_PERMS,
GET_DOMAIN_PATH, INTRODUCE, the console and vif device directories) only depend on state xl
created itself; the 170th reads a `state` node that netback wrote on another connection.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from xenoffload.xs.dispatch import handle_request
from xenoffload.xs.model import XenStoreModel
from xenoffload.xs.wire import Op

#: The real trace (Xen 4.17's C xenstored), committed beside the conformance suite.
TRACE = Path(__file__).resolve().parents[1] / "conformance/fixtures/real-xen-vif-negotiation.trace"
XL_CONNECTION = "0x5555fccf4f70"
INDEPENDENT_PREFIX = 169
LINE = re.compile(r"^(IN|OUT) (0x[0-9a-f]+) \d{8} [\d:]{8} ([A-Z_]+) \((.*)\)$")
#: dom0's nodes before xl started, as the trace's own xenstore-ls listed them.
INITIAL = {"/local/domain/0/control/feature-poweroff": b"1",
           "/local/domain/0/control/feature-reboot": b"1",
           "/local/domain/0/control/feature-suspend": b"1",
           "/local/domain/0/domid": b"0", "/local/domain/0/name": b"Domain-0",
           "/local/pool/0/name": b"Pool-0", "/test": b"1"}


def _request_payload(op: str, shown: str) -> bytes:
    """Rebuild the payload from its trace form (NULs shown as spaces)."""
    if op == "WRITE":  # path NUL value; the value has no NUL and may hold spaces
        path, _, value = shown.partition(" ")
        return path.encode() + b"\0" + value.encode("latin-1")
    return b"".join(arg.encode("latin-1") + b"\0" for arg in shown.split(" ")[:-1])


def _connection_lines(conn: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    requests, replies = [], []
    for line in TRACE.read_text(encoding="latin-1").splitlines():
        match = LINE.match(line)
        if match is None or match.group(2) != conn:
            continue
        direction, _, op, shown = match.groups()
        if direction == "IN":
            requests.append((op, shown))
        elif op != "WATCH_EVENT":
            replies.append((op, shown))
    return requests, replies


def replay_xl(model: XenStoreModel) -> Iterator[tuple[str, str, int, bytes]]:
    """Replay xl's first INDEPENDENT_PREFIX requests on ``model`` (after dom0's initial nodes);
    yield each request's type and trace form, and the model's reply type and payload."""
    requests, _ = _connection_lines(XL_CONNECTION)
    setup = model.connect(0)
    for path, value in INITIAL.items():
        model.write(setup, path, value)
    xl = model.connect(0)
    tx_id = 0
    for op, shown in requests[:INDEPENDENT_PREFIX]:
        reply_op, reply = handle_request(model, xl, Op[op], tx_id, _request_payload(op, shown))
        yield op, shown, reply_op, reply
        if op == "TRANSACTION_START":
            tx_id = int(reply.rstrip(b"\0") or b"0")
        elif op == "TRANSACTION_END":
            tx_id = 0


def test_xl_domain_creation_gets_the_replies_c_xenstored_gave() -> None:
    requests, replies = _connection_lines(XL_CONNECTION)
    assert len(requests) > INDEPENDENT_PREFIX
    for index, ((op, shown, reply_op, reply), expected) in enumerate(
            zip(replay_xl(XenStoreModel()), replies, strict=False)):
        got = (Op(reply_op).name, reply.decode("latin-1").replace("\0", " "))
        assert got == expected, f"request {index}: {op} ({shown})"
