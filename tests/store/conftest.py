"""Fixtures for the Store contract suite: one behavioural suite, two backends.

``backend`` gives (a) MemoryStore over the model and (b) PyxsStore over a real Unix socket to
the embedded xenstored, with guest sockets for domains 1 and 2.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest

from xenoffload.store.base import Access, Perm, Store
from xenoffload.store.memory import MemoryXenStore
from xenoffload.store.pyxs_store import PyxsStore
from xenoffload.xenstored.harness import EmbeddedXenstored
from xenoffload.xs.locked import LockedModel

GUESTS = (1, 2)


class Backend:
    """Opens stores as a given domain and injects faults, whatever the backend."""

    def __init__(self, name: str, model: LockedModel) -> None:
        self.name = name
        self.model = model
        self.stores: list[Store] = []

    def connect(self, domid: int = 0) -> Store:
        raise NotImplementedError

    def fail_next_commits(self, count: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for store in self.stores:
            store.close()


class MemoryBackend(Backend):
    def __init__(self) -> None:
        self.xs = MemoryXenStore()
        super().__init__("memory", self.xs.model)

    def fail_next_commits(self, count: int) -> None:
        self.xs.fail_next_commits(count)

    def connect(self, domid: int = 0) -> Store:
        store = self.xs.connect(domid)
        self.stores.append(store)
        return store


class PyxsBackend(Backend):
    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="xs", dir="/tmp")
        self.server = EmbeddedXenstored(f"{self.tmp}/socket",
                                        {domid: f"{self.tmp}/dom{domid}" for domid in GUESTS})
        self.server.start()
        super().__init__("pyxs", self.server.model)

    def fail_next_commits(self, count: int) -> None:
        self.server.fail_next_commits(count)

    def connect(self, domid: int = 0) -> Store:
        path = self.server.socket_path if domid == 0 else self.server.domain_sockets[domid]
        store = PyxsStore(path, timeout=5.0)
        self.stores.append(store)
        return store

    def close(self) -> None:
        super().close()
        self.server.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(params=["memory", "pyxs"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    chosen: Backend = MemoryBackend() if request.param == "memory" else PyxsBackend()
    try:
        yield chosen
    finally:
        chosen.close()


def make_vif(dom0: Store, guest: int = 1, devid: int = 0) -> tuple[str, str]:
    """Lay out a vif as libxl does; return (frontend_dir, backend_dir)."""
    home = f"/local/domain/{guest}"
    frontend = f"{home}/device/vif/{devid}"
    backend_dir = f"/local/domain/0/backend/vif/{guest}/{devid}"
    dom0.mkdir(home)
    dom0.set_perms(home, [Perm(Access.NONE, 0), Perm(Access.READ, guest)])
    dom0.mkdir(f"{home}/device")
    dom0.set_perms(f"{home}/device", [Perm(Access.NONE, 0), Perm(Access.READ, guest)])
    dom0.mkdir(frontend)
    dom0.set_perms(frontend, [Perm(Access.NONE, guest), Perm(Access.READ, 0)])
    dom0.write(f"{frontend}/state", b"1")
    dom0.write(f"{frontend}/backend", backend_dir.encode())
    dom0.mkdir(backend_dir)
    dom0.set_perms(backend_dir, [Perm(Access.NONE, 0), Perm(Access.READ, guest)])
    dom0.write(f"{backend_dir}/state", b"1")
    dom0.write(f"{backend_dir}/frontend", frontend.encode())
    return frontend, backend_dir
