"""Frame codec and request dispatch, fuzzed in isolation (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenoffload.xs.dispatch import handle_request
from xenoffload.xs.model import XenStoreModel
from xenoffload.xs.wire import HEADER, PAYLOAD_MAX, Frame, FrameParser, Op, ProtocolError, op_name

frames = st.builds(Frame, st.integers(0, 30), st.integers(0, 2**32 - 1),
                   st.integers(0, 2**32 - 1), st.binary(max_size=300))


@given(st.lists(frames, max_size=8), st.lists(st.integers(1, 64), max_size=40))
def test_frames_survive_any_chunking(sent: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(frame.encode() for frame in sent)
    parser = FrameParser()
    received: list[Frame] = []
    position = 0
    for cut in cuts:
        received += parser.feed(stream[position:position + cut])
        position += cut
    received += parser.feed(stream[position:])
    assert received == sent
    assert parser.buffered == 0


def test_a_header_announcing_more_than_4096_bytes_is_a_protocol_error() -> None:
    parser = FrameParser()
    with pytest.raises(ProtocolError):
        parser.feed(HEADER.pack(Op.READ, 1, 0, PAYLOAD_MAX + 1))
    with pytest.raises(ProtocolError):
        parser.feed(Frame(Op.READ, 2, 0, b"/\0").encode())


def test_exactly_4096_bytes_is_accepted() -> None:
    frame = Frame(Op.WRITE, 1, 0, b"/a\0" + b"x" * (PAYLOAD_MAX - 3))
    assert FrameParser().feed(frame.encode()) == [frame]


def test_frames_refuse_oversized_payloads() -> None:
    with pytest.raises(ValueError):
        Frame(Op.WRITE, 1, 0, b"x" * (PAYLOAD_MAX + 1))


def test_type_numbers_match_xs_wire() -> None:
    assert (Op.DEBUG, Op.WATCH_EVENT, Op.ERROR, Op.RESET_WATCHES, Op.DIRECTORY_PART,
            Op.SET_QUOTA) == (0, 15, 16, 21, 22, 26)
    assert op_name(Op.DEBUG) == "CONTROL"
    assert op_name(1234) == "**UNKNOWN**"


def _tree_is_consistent(model: XenStoreModel) -> None:
    tree = model.dump("/")
    for path in tree:
        if path == "/":
            continue
        parent = path.rsplit("/", 1)[0] or "/"
        info = model.node(parent)
        assert info is not None and path.rsplit("/", 1)[1] in info.children


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 3), st.binary(max_size=60),
                          st.booleans()), max_size=25))
def test_no_request_bytes_raise_or_corrupt_the_tree(requests: list[tuple[int, int, bytes,
                                                                          bool]]) -> None:
    model = XenStoreModel()
    dom0 = model.connect(0)
    guest = model.connect(1)
    model.write(dom0, "/keep", b"safe")
    for op, tx_id, payload, as_guest in requests:
        conn = guest if as_guest else dom0
        reply_op, reply = handle_request(model, conn, op, tx_id, payload)
        assert reply_op in (op, Op.ERROR)
        assert len(reply) <= PAYLOAD_MAX
        if reply_op == Op.ERROR:
            assert reply.endswith(b"\0") and reply[:-1].isalnum()
    _tree_is_consistent(model)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([Op.READ, Op.WRITE, Op.MKDIR, Op.RM, Op.DIRECTORY, Op.GET_PERMS,
                        Op.SET_PERMS, Op.WATCH, Op.DIRECTORY_PART]),
       st.lists(st.sampled_from(["a", "b", "", "..", "@x", "local", "domain", "1", "é", " "]),
                max_size=6),
       st.binary(max_size=8))
def test_guest_requests_never_touch_nodes_outside_what_it_may_write(op: int, parts: list[str],
                                                                   tail: bytes) -> None:
    model = XenStoreModel()
    dom0 = model.connect(0)
    model.write(dom0, "/local/domain/0/backend/x", b"1")
    before = model.dump("/local/domain/0")
    guest = model.connect(1)
    path = "/".join(parts).encode("utf-8")
    handle_request(model, guest, op, 0, path + b"\0" + tail)
    assert model.dump("/local/domain/0") == before
    _tree_is_consistent(model)
