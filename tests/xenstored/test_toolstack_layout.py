"""The toolstack API lays out a domain and a vif with exactly libxl's ownership: every node
create_domain/create_vif writes is compared with what xl's requests in the real C xenstored
trace produced; and a guest, through its own socket, cannot do what libxl's layout forbids."""

from __future__ import annotations

import pytest

from xenoffload.negotiation import LinkPolicy
from xenoffload.store.memory import MemoryXenStore
from xenoffload.store.pyxs_store import PyxsStore
from xenoffload.toolstack import VifSpec, create_domain, create_vif, destroy_vif, negotiate_vif
from xenoffload.xenstored.harness import EmbeddedXenstored
from xenoffload.xs.errors import XenStoreError
from xenoffload.xs.model import XenStoreModel
from xenoffload.xs.values import Access, Perm

from .test_real_trace import replay_xl

GUEST, DEVID = 1, 0
#: What xl gave the vif in the trace.
TRACE_VIF = VifSpec(GUEST, DEVID, "00:16:3e:41:87:bb", "xenbr0",
                    script="/etc/xen/scripts/vif-mini")


def _libxl_tree() -> XenStoreModel:
    """The store after xl's domain and vif creation, replayed from the trace."""
    model = XenStoreModel()
    for _ in replay_xl(model):
        pass
    return model


def _trace_uuid() -> str:
    """The VM UUID xl gave the domain in the trace (``vm`` names ``/vm/<uuid>``)."""
    node = _libxl_tree().node(f"/local/domain/{GUEST}/vm")
    assert node is not None and node.value.startswith(b"/vm/")
    return node.value[len(b"/vm/"):].decode()


def _ours() -> MemoryXenStore:
    xs = MemoryXenStore()
    toolstack = xs.connect(0)
    create_domain(toolstack, GUEST, "domu", _trace_uuid())
    create_vif(toolstack, TRACE_VIF)
    return xs


@pytest.mark.parametrize("top", ["/local/domain/1", "/local/domain/0/backend/vif/1/0",
                                 "/vm"])
def test_every_node_we_write_has_libxls_permissions_and_value(top: str) -> None:
    libxl, ours = _libxl_tree(), _ours().model
    written = ours.dump(top)
    assert written, top
    for path, value in written.items():
        theirs = libxl.node(path)
        assert theirs is not None, f"libxl does not write {path}"
        mine = ours.node(path)
        assert mine is not None
        assert mine.perms == theirs.perms, path
        assert value == theirs.value, path


def test_the_trace_shows_the_layout_we_copy() -> None:
    libxl = _libxl_tree()
    toolstack_owned = (Perm(Access.NONE, 0), Perm(Access.READ, GUEST))
    for path in ("/local/domain/1", "/local/domain/1/device", "/local/domain/1/device/vif",
                 "/local/domain/1/name", "/local/domain/1/domid"):
        node = libxl.node(path)
        assert node is not None and node.perms == toolstack_owned, path
    data = libxl.node("/local/domain/1/data")
    assert data is not None and data.perms == (Perm(Access.NONE, GUEST),)


@pytest.fixture
def xenstored(sockdir: str) -> EmbeddedXenstored:  # type: ignore[misc]
    with EmbeddedXenstored(f"{sockdir}/socket", {GUEST: f"{sockdir}/dom1"}) as server:
        with PyxsStore(server.socket_path, timeout=5) as dom0:
            create_domain(dom0, 0, "Domain-0")
            create_domain(dom0, GUEST, "domu")
            create_vif(dom0, TRACE_VIF)
        yield server


def _guest_errno(server: EmbeddedXenstored, action: str, path: str) -> str:
    with PyxsStore(server.domain_sockets[GUEST], timeout=5) as guest, \
            pytest.raises(XenStoreError) as excinfo:
        getattr(guest, action)(path)
    return excinfo.value.errno_name


@pytest.mark.parametrize(("action", "path"), [
    ("rm", "/local/domain/1"),
    ("rm", "/local/domain/1/name"),
    ("rm", "/local/domain/1/domid"),
    ("rm", "/local/domain/1/device"),
    ("mkdir", "/local/domain/1/device/vif/5"),
    ("mkdir", "/local/domain/1/device/vbd/0"),
])
def test_a_guest_cannot_remove_its_home_or_invent_devices(xenstored: EmbeddedXenstored,
                                                          action: str, path: str) -> None:
    assert _guest_errno(xenstored, action, path) == "EACCES"
    assert xenstored.model.node("/local/domain/1/name") is not None
    assert xenstored.model.node("/local/domain/1/device/vif/5") is None


def test_a_guest_keeps_its_own_data_and_frontend(xenstored: EmbeddedXenstored) -> None:
    with PyxsStore(xenstored.domain_sockets[GUEST], timeout=5) as guest:
        guest.write("data/note", b"mine")
        guest.write("device/vif/0/feature-rx-notify", b"1")
        assert guest.read("name") == b"domu"
    assert xenstored.model.dump("/local/domain/1/data") == {
        "/local/domain/1/data": b"", "/local/domain/1/data/note": b"mine"}


def test_negotiate_vif_returns_none_when_the_device_is_removed() -> None:
    xs = MemoryXenStore()
    toolstack = xs.connect(0)
    create_domain(toolstack, GUEST, "domu")
    paths = create_vif(toolstack, TRACE_VIF)
    destroy_vif(toolstack, paths)
    assert negotiate_vif(xs.connect(0), 0, GUEST, DEVID, LinkPolicy(), timeout=5.0) is None
