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
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs

from xenoffload.conformance.observe import MUTATING_OPS, WireOp, wire_ops
from xenoffload.machine import Mode
from xenoffload.paths import VifPaths
from xenoffload.schema import Role
from xenoffload.store.base import StoreUnavailable, XenStoreError
from xenoffload.store.pyxs_store import PyxsStore, connect_store
from xenoffload.toolstack import VifSpec, create_domain, create_vif
from xenoffload.xenstored.harness import EmbeddedXenstored
from xenoffload.xenstored.server import RequestRecord

__all__ = ["GUEST_DOMID", "DEVID", "BACKEND_DOMID", "VIF", "Lab", "LabTimeout", "QuietPoint",
           "Settled", "Timing"]

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
    IUT's silence that counts as settled, ``grace`` for the IUT to start reacting to a change
    (after which it is taken to have nothing to react to), ``poll`` between two looks;
    ``busy_limit`` is how many requests the IUT may make, and ``busy_seconds`` how long it may
    stay active, while the harness waits for it to settle before it counts as never quiet."""

    timeout: float = 5.0
    quiet: float = 0.12
    grace: float = 0.5
    poll: float = 0.005
    busy_limit: int = 1000
    busy_seconds: float = 3.0


@attrs.frozen
class Settled:
    """How a wait for the IUT to settle ended: ``outcome`` is ``quiet`` (it reacted to the
    harness's last change, then was quiet), ``no-reaction`` (no request within the grace),
    ``busy`` (never quiet: more requests than the busy limit, or active too long) or ``gone``;
    ``start``/``end`` are request-log positions, ``requests`` how many the IUT made."""

    outcome: str
    start: int
    end: int
    requests: int
    seconds: float

    @property
    def settled(self) -> bool:
        return self.outcome in ("quiet", "no-reaction")

    def describe(self) -> str:
        """Say in a few words how the wait ended."""
        return {"quiet": "reacted, then quiet", "no-reaction": "no request within the grace",
                "busy": f"never quiet: {self.requests} requests in {self.seconds:.2f} s",
                "gone": "the implementation is gone"}[self.outcome]


@attrs.frozen
class QuietPoint:
    """What the harness saw when a wait for the IUT to settle ended: during step ``step``
    (the number of steps when it is the final wait), how the wait ended, both vif
    directories, the IUT's simulated device (in-process IUTs) and how many device-log lines
    it had written."""

    step: int
    wait: Settled
    dump: Mapping[str, bytes]
    device: Mapping[str, bool] | None = None
    device_lines: int | None = None


class Lab:
    """One embedded xenstored with a guest (domid 1) and its vif 0 served by dom0."""

    def __init__(self, role: Role, mode: Mode, timing: Timing | None = None,
                 workdir: str | None = None, keep: bool = False) -> None:
        self.role = role
        self.mode = mode
        self.timing = timing or Timing()
        self.keep = keep
        self.workdir = Path(tempfile.mkdtemp(prefix="xo-conf-", dir=workdir))
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
        if self.keep:
            self.write_request_log(self.workdir / "requests.log")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

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

    def harness_ops(self) -> list[WireOp]:
        """Return the harness's own requests (peer, kernel, toolstack) as WireOps."""
        return wire_ops((position, record)
                        for position, record in enumerate(self.server.request_log)
                        if record.conn_id in self.harness_conns)

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

    def last_harness_change(self) -> int:
        """Return the log position of the harness's last request that changed the tree (a
        plain write, mkdir, rm or set-perms, or a committed transaction); -1 if none."""
        log = self.server.request_log
        for position in range(len(log) - 1, -1, -1):
            record = log[position]
            if record.conn_id not in self.harness_conns or record.reply_op == "ERROR":
                continue
            if record.op == "TRANSACTION_END" and record.payload.startswith(b"T"):
                return position
            if record.op in MUTATING_OPS and not record.tx_id:
                return position
        return -1

    def settle(self, alive: Callable[[], str | None] = lambda: None,
               since: int = -1) -> Settled:
        """Wait until the IUT has reacted to the harness's last change (or to what happened
        at log position ``since``, if later: a policy change) and then been quiet.

        Reacted: it made a request after that change. Quiet: no request for
        :attr:`Timing.quiet` seconds. An IUT that makes no request within :attr:`Timing.grace`
        seconds of the wait's start is taken to have nothing to react to. The wait ends early
        when the IUT is gone or has made more than :attr:`Timing.busy_limit` requests without
        a quiet moment or stayed active for :attr:`Timing.busy_seconds` (it polls or spins);
        the outcome says which."""
        started = time.monotonic()
        start = self.position()
        change = max(self.last_harness_change(), since)
        log = self.server.request_log
        outcome = "busy"
        reacted, requests, scanned = False, 0, change + 1
        last = self.last_iut_activity()
        while True:
            now = time.monotonic()
            if alive() is not None:
                outcome = "gone"
                break
            count = len(log)
            for position in range(scanned, count):
                record = log[position]
                if record.conn_id not in self.harness_conns:
                    reacted, last = True, record.time
                    requests += position >= start
            scanned = count
            idle = last is None or now - last >= self.timing.quiet
            if idle and (reacted or now - started >= self.timing.grace):
                outcome = "quiet" if reacted else "no-reaction"
                break
            limit = max(self.timing.busy_seconds, self.timing.grace + self.timing.quiet)
            if requests > self.timing.busy_limit or now - started > limit:
                outcome = "busy"
                break
            time.sleep(self.timing.poll)
        end = self.position()
        requests = sum(1 for record in log[start:end] if record.conn_id not in self.harness_conns)
        return Settled(outcome, start, end, requests, time.monotonic() - started)

    def dump(self) -> dict[str, bytes]:
        """Return every node under both vif directories (absolute path -> value)."""
        nodes: dict[str, bytes] = {}
        for directory in (self.own_dir, self.peer_dir):
            nodes.update(self.server.model.dump(directory))
        return nodes

    def write_request_log(self, path: Path) -> None:
        """Write the server's request log as text, one request per line, marking who made it
        (``harness`` or ``IUT``): what ``--keep-workdir`` leaves for a reader."""
        with open(path, "w", encoding="utf-8") as out:
            for position, record in enumerate(self.server.request_log):
                who = "harness" if record.conn_id in self.harness_conns else "IUT"
                out.write(f"{position} {record.time:.6f} {who} conn={record.conn_id} "
                          f"domid={record.domid} tx={record.tx_id} {record.op} "
                          f"{record.payload!r} -> {record.reply_op} "
                          f"{record.reply_payload[:200]!r}\n")
