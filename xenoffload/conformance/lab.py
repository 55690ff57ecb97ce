"""The conformance lab: an embedded xenstored, one vif laid out as libxl does, the harness's own
connections told apart from the implementation under test, and waiting on what it does.

One lab serves one scenario run. The implementation under test (IUT) connects to
:attr:`Lab.iut_socket` (dom0's socket for a backend, the guest's socket for a frontend). Every
connection the harness opens reads a tag path first, so its connection id is known; every
other connection in the server's request log is the IUT's.
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from xenoffload.conformance.observe import WireOp, wire_ops
from xenoffload.machine import Mode
from xenoffload.paths import VifPaths
from xenoffload.schema import Role
from xenoffload.store.base import StoreUnavailable, XenStoreError
from xenoffload.store.pyxs_store import PyxsStore, connect_store
from xenoffload.toolstack import VifSpec, create_domain, create_vif
from xenoffload.xenstored.harness import EmbeddedXenstored
from xenoffload.xenstored.server import RequestRecord

__all__ = ["GUEST_DOMID", "DEVID", "BACKEND_DOMID", "VIF", "Lab", "LabTimeout", "Timing"]

GUEST_DOMID = 1
DEVID = 0
BACKEND_DOMID = 0
#: The one vif every scenario negotiates.
VIF = VifPaths(BACKEND_DOMID, GUEST_DOMID, DEVID)
_TAG_ROOT = "/conformance-harness"
_tags = itertools.count(1)


class LabTimeout(Exception):
    """Something awaited did not happen in time; the message says what."""


@attrs.frozen
class Timing:
    """How long the harness waits: ``timeout`` for one awaited condition, ``quiet`` for the
    IUT's silence that counts as settled, ``poll`` between two looks."""

    timeout: float = 5.0
    quiet: float = 0.12
    poll: float = 0.005


class Lab:
    """One embedded xenstored with a guest (domid 1) and its vif 0 served by dom0."""

    def __init__(self, role: Role, mode: Mode, timing: Timing | None = None,
                 workdir: str | None = None) -> None:
        self.role = role
        self.mode = mode
        self.timing = timing or Timing()
        self._tmp = tempfile.TemporaryDirectory(prefix="xo-conf-", dir=workdir)
        self.workdir = Path(self._tmp.name)
        self.server = EmbeddedXenstored(self.workdir / "xenstored.sock",
                                        {GUEST_DOMID: self.workdir / "guest.sock"})
        self.harness_conns: set[int] = set()
        self._conn_ids: dict[int, int] = {}
        self._stores: list[PyxsStore] = []
        self.toolstack: PyxsStore | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Lab:
        self.server.start()
        self.toolstack = self.connect(BACKEND_DOMID)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for store in self._stores:
            with contextlib.suppress(StoreUnavailable):
                store.close()
        self.server.stop()
        self._tmp.cleanup()

    # ------------------------------------------------------------------ where things are

    @property
    def own_dir(self) -> str:
        """The IUT's directory."""
        return VIF.backend_dir if self.role is Role.BACKEND else VIF.frontend_dir

    @property
    def peer_dir(self) -> str:
        return VIF.frontend_dir if self.role is Role.BACKEND else VIF.backend_dir

    def socket_for(self, domid: int) -> str:
        return self.server.socket_path if domid == 0 else self.server.domain_sockets[domid]

    @property
    def iut_socket(self) -> str:
        """Where the IUT connects: dom0's socket for a backend, the guest's for a frontend."""
        return self.socket_for(BACKEND_DOMID if self.role is Role.BACKEND else GUEST_DOMID)

    def domid_of(self, role: Role) -> int:
        return BACKEND_DOMID if role is Role.BACKEND else GUEST_DOMID

    # ------------------------------------------------------------------ connections

    def connect(self, domid: int) -> PyxsStore:
        """Open a harness connection as ``domid`` and register it as the harness's."""
        store = connect_store(self.socket_for(domid), timeout=self.timing.timeout)
        tag = f"{_TAG_ROOT}/{next(_tags)}"
        with contextlib.suppress(XenStoreError):
            store.try_read(tag)
        for record in reversed(self.server.request_log):
            if record.op == "READ" and record.payload == tag.encode() + b"\0":
                self.harness_conns.add(record.conn_id)
                self._conn_ids[id(store)] = record.conn_id
                break
        else:  # pragma: no cover - the server logs before it replies
            raise RuntimeError("harness connection not found in the request log")
        self._stores.append(store)
        return store

    def conn_id(self, store: PyxsStore) -> int:
        """Return the server's connection id of a harness connection."""
        return self._conn_ids[id(store)]

    def layout(self) -> None:
        """Create dom0, the guest and its vif as libxl does (both states Initialising)."""
        assert self.toolstack is not None
        create_domain(self.toolstack, BACKEND_DOMID, "Domain-0")
        create_domain(self.toolstack, GUEST_DOMID, "conformance-guest")
        create_vif(self.toolstack, VifSpec(GUEST_DOMID, DEVID, "00:16:3e:c0:4f:00", "xenbr0"))

    def read(self, path: str) -> bytes | None:
        """Read a node through the toolstack's connection (None: absent)."""
        assert self.toolstack is not None
        return self.toolstack.try_read(path)

    # ------------------------------------------------------------------ the IUT's traffic

    def position(self) -> int:
        """Return the current length of the request log (a mark between steps)."""
        return len(self.server.request_log)

    def iut_records(self) -> list[tuple[int, RequestRecord]]:
        """Return (log position, record) of every request made by a non-harness connection."""
        return [(position, record) for position, record in enumerate(self.server.request_log)
                if record.conn_id not in self.harness_conns]

    def iut_ops(self) -> list[WireOp]:
        return wire_ops(self.iut_records())

    def last_iut_activity(self) -> float | None:
        for record in reversed(self.server.request_log):
            if record.conn_id not in self.harness_conns:
                return record.time
        return None

    # ------------------------------------------------------------------ waiting

    def wait_until(self, predicate: Callable[[], bool], what: str,
                   alive: Callable[[], str | None] = lambda: None) -> None:
        """Poll ``predicate`` until true; raise LabTimeout naming ``what`` after the timeout
        (at once if ``alive`` reports the IUT gone)."""
        deadline = time.monotonic() + self.timing.timeout
        while not predicate():
            gone = alive()
            if gone is not None:
                raise LabTimeout(f"{what}: the implementation is gone ({gone})")
            if time.monotonic() > deadline:
                raise LabTimeout(f"{what}: not within {self.timing.timeout:g} s")
            time.sleep(self.timing.poll)

    def settle(self, alive: Callable[[], str | None] = lambda: None) -> None:
        """Wait until the IUT has made no request for ``quiet`` seconds (it made at least one
        since the lab started, or the timeout passed)."""
        deadline = time.monotonic() + self.timing.timeout
        while time.monotonic() < deadline:
            if alive() is not None:
                return
            last = self.last_iut_activity()
            if last is not None and time.monotonic() - last >= self.timing.quiet:
                return
            time.sleep(self.timing.poll)

    def dump(self) -> dict[str, bytes]:
        """Return every node under both vif directories (absolute path -> value)."""
        nodes: dict[str, bytes] = {}
        for directory in (self.own_dir, self.peer_dir):
            nodes.update(self.server.model.dump(directory))
        return nodes


@contextlib.contextmanager
def open_lab(role: Role, mode: Mode, timing: Timing | None = None) -> Iterator[Lab]:
    """Yield a started lab with the vif laid out; stop it afterwards."""
    with Lab(role, mode, timing) as lab:
        lab.layout()
        yield lab
