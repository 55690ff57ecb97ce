"""Sans-I/O XenStore data model: node tree, sessions, permissions, transactions, watches, quotas.

This module holds every rule the embedded xenstored and the in-memory store (MemoryStore)
obey, so both judge clients identically. It never touches a socket, a thread or a clock:
callers hand it a :class:`Connection` and typed arguments, it mutates the tree, raises
:class:`~xenoffload.xs.errors.XenStoreError` with the errno name C xenstored would put on the
wire, and queues :class:`~xenoffload.xs.values.WatchEvent` on the connections that should see
them. It is not thread-safe: whoever shares one model between threads serialises the calls
(:class:`~xenoffload.xs.locked.LockedModel`).

Semantics follow C xenstored (tools/xenstored in Xen 4.17+):

- Nodes created implicitly (WRITE/MKDIR of a path whose parents are missing) inherit the
  permissions of the nearest existing parent; an unprivileged creator becomes the owner.
- Permission checks: privileged connections, the owner and the owner's device model (SET_TARGET)
  get full access; otherwise the first per-domain entry naming the domain applies, else the
  default access of the first entry. A failing lookup answers EACCES instead of ENOENT when the
  nearest existing ancestor would not grant the access either (no information leak).
- Transactions: each node is copied into the transaction on first access and its generation
  recorded; TRANSACTION_END "T" fails with EAGAIN when any accessed node's generation changed.
  Watch events of a transaction are fired at commit.
- Watches fire once at registration, then for writes/mkdir/set_perms of the watched node or a
  descendant; RM fires the removed root for ancestor watches and every removed descendant for
  exact watches on it. A watcher only sees events for nodes it (or, for the parent) may read.
- Quotas apply to unprivileged connections only, with C xenstored's defaults and errnos: ENOSPC
  for nodes per domain (checked again when a transaction commits), node size, permissions per
  node, transactions per domain and nodes per transaction; E2BIG for watches per domain; ENOMEM
  when a request would take the domain's memory (nodes it owns, its watches, its open
  transactions and, charged by the server, its queued output) to the memory quota.
  (oxenstored answers EQUOTA instead; this model follows C xenstored.)
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Iterable, Sequence

import attrs

from xenoffload.xs.errors import XenStoreError
from xenoffload.xs.values import Access, Perm, WatchEvent
from xenoffload.xs.wire import ABS_PATH_MAX, REL_PATH_MAX

__all__ = [
    "DOMID_SELF",
    "SPECIAL_PATHS",
    "Connection",
    "DomainUsage",
    "NodeInfo",
    "Quotas",
    "XenStoreModel",
    "parent_path",
]

#: The domid a domain uses to name itself.
DOMID_SELF = 0x7FF0
#: Special watch paths xenstored fires itself.
SPECIAL_PATHS = ("@introduceDomain", "@releaseDomain")

_NO_GENERATION = -1
_READ = 1
_WRITE = 2
_OWNER = 4
_ALL = _READ | _WRITE | _OWNER
_ACCESS_BITS = {Access.NONE: 0, Access.READ: _READ, Access.WRITE: _WRITE,
                Access.BOTH: _READ | _WRITE}
_VALID_PATH = re.compile(r"[A-Za-z0-9\-/_@]+")
_LOCAL_DOMAIN = re.compile(r"/local/domain/(\d{1,5})/")
#: Size of C xenstored's node header and of one permission entry, for the node-size quota.
_NODE_HEADER_SIZE = 16
_PERM_ENTRY_SIZE = 8


@attrs.frozen
class Quotas:
    """Per-domain limits for unprivileged connections (C xenstored's defaults and names).

    The model enforces all but ``outstanding``, which the server applies when it reads
    requests (a domain with that many replies unsent is not read until it reads).
    """

    node_size: int = 2048
    nodes: int = 1000
    watches: int = 128
    transactions: int = 10
    perms: int = 5
    transaction_nodes: int = 1024
    path_length: int = REL_PATH_MAX
    #: Bytes of XenStore memory a domain may use: nodes, watches, transactions, queued output.
    memory: int = 2 * 1024 * 1024 + 512 * 1024
    #: Replies a domain may have queued (not yet sent) before its requests are not read.
    outstanding: int = 20


@attrs.frozen
class DomainUsage:
    """What one domain uses of its quotas (CONTROL ``quota <domid>``)."""

    nodes: int
    watches: int
    transactions: int
    memory: int


@attrs.frozen
class NodeInfo:
    """A read-only view of one node, for inspection by tests and tools."""

    path: str
    value: bytes
    perms: tuple[Perm, ...]
    children: tuple[str, ...]
    generation: int


def parent_path(name: str) -> str:
    """Return the parent of a canonical path as C xenstored computes it (``/`` for top level
    nodes and for special ``@`` names)."""
    slash = name.rfind("/", 1)
    return name[:slash] if slash > 0 else "/"


def _child_path(parent: str, child: str) -> str:
    return f"/{child}" if parent == "/" else f"{parent}/{child}"


def _ancestors_or_self(name: str) -> Iterable[str]:
    """Yield ``name`` and every node it is a descendant of, ending with ``/``."""
    yield name
    while name != "/":
        name = parent_path(name)
        yield name


class _Node:
    """A node as stored: mutable, owned by exactly one tree (live or a transaction's copy)."""

    __slots__ = ("charged", "charged_to", "child_bytes", "children", "generation", "perms",
                 "value")

    def __init__(self, value: bytes, perms: tuple[Perm, ...],
                 children: dict[str, None] | None = None, generation: int = 0) -> None:
        self.value = value
        self.perms = perms
        self.children: dict[str, None] = children if children is not None else {}
        self.child_bytes = sum(len(child) + 1 for child in self.children)
        self.generation = generation
        self.charged = 0  # memory charged for this node while it is live ...
        self.charged_to = 0  # ... and to whom

    def copy(self) -> _Node:
        """A copy for a transaction (charged to nobody)."""
        return _Node(self.value, self.perms, dict(self.children), self.generation)

    @property
    def owner(self) -> int:
        return self.perms[0].domid

    def add_child(self, name: str) -> None:
        if name not in self.children:
            self.children[name] = None
            self.child_bytes += len(name) + 1

    def remove_child(self, name: str) -> None:
        if name in self.children:
            del self.children[name]
            self.child_bytes -= len(name) + 1

    def size(self) -> int:
        """Size as C xenstored accounts it against the node-size quota."""
        return (_NODE_HEADER_SIZE + _PERM_ENTRY_SIZE * len(self.perms) + len(self.value)
                + self.child_bytes)


class _Watch:
    __slots__ = ("conn", "node", "prefix_len", "token")

    def __init__(self, conn: Connection, node: str, token: str, prefix_len: int) -> None:
        self.conn = conn
        self.node = node
        self.token = token
        self.prefix_len = prefix_len


class _Accessed:
    """A node as one transaction sees it."""

    __slots__ = ("charged", "exact", "fire", "generation", "modified", "node", "old_perms")

    def __init__(self, node: _Node | None) -> None:
        self.node = node
        self.generation = node.generation if node is not None else _NO_GENERATION
        self.old_perms = node.perms if node is not None else None
        self.modified = False
        self.fire = False
        self.exact = False
        self.charged = 0  # memory charged to the transaction's domain for this entry


class _Transaction:
    __slots__ = ("accessed", "conn", "memory", "owner_delta", "tx_id")

    def __init__(self, conn: Connection, tx_id: int) -> None:
        self.conn = conn
        self.tx_id = tx_id
        self.accessed: dict[str, _Accessed] = {}
        self.owner_delta: collections.Counter[int] = collections.Counter()
        self.memory = 0  # total charged for its entries


class _Domain:
    __slots__ = ("domid", "introduced", "port", "target")

    def __init__(self, domid: int) -> None:
        self.domid = domid
        self.introduced = False
        self.target: int | None = None
        self.port = 0


class _Ctx:
    """Where an operation reads and writes: the live tree, or a transaction's view of it."""

    __slots__ = ("conn", "op", "tx")

    def __init__(self, conn: Connection, tx: _Transaction | None, op: str) -> None:
        self.conn = conn
        self.tx = tx
        self.op = op


class Connection:
    """One client session of the model, bound to a domain.

    ``listener`` (if set) is called with the connection by the model call that queued events
    for it; ``close_listener`` when the model ends the session (RELEASE of its domain). Neither
    may call back into the model.
    """

    def __init__(self, conn_id: int, domid: int, privileged: bool) -> None:
        self.conn_id = conn_id
        self.domid = domid
        self.privileged = privileged
        self.closed = False
        self.watches: dict[tuple[str, str], _Watch] = {}
        self.transactions: dict[int, _Transaction] = {}
        self.next_tx_id = 1
        self.pending: collections.deque[WatchEvent] = collections.deque()
        self.listener: Callable[[Connection], None] | None = None
        self.close_listener: Callable[[Connection], None] | None = None

    def __repr__(self) -> str:
        kind = "privileged" if self.privileged else "guest"
        return f"Connection(id={self.conn_id}, domid={self.domid}, {kind})"

    @property
    def implicit_path(self) -> str:
        """The home relative paths are resolved against."""
        return f"/local/domain/{self.domid}"

    def _push(self, event: WatchEvent) -> None:
        self.pending.append(event)
        if self.listener is not None:
            self.listener(self)


class XenStoreModel:
    """The whole store: tree, domains, connections, and each domain's use of its quotas."""

    def __init__(self, quotas: Quotas | None = None) -> None:
        self.quotas = quotas if quotas is not None else Quotas()
        self._generation = 0
        self._nodes: dict[str, _Node] = {}
        self._owner_counts: collections.Counter[int] = collections.Counter()
        self._watch_counts: collections.Counter[int] = collections.Counter()
        self._tx_counts: collections.Counter[int] = collections.Counter()
        self._watch_index: dict[str, list[_Watch]] = {}
        self._connections: dict[int, Connection] = {}
        self._next_conn_id = 1
        self._domains: dict[int, _Domain] = {}
        self._memory: collections.Counter[int] = collections.Counter()
        root_perms = (Perm(Access.NONE, 0),)
        for name, children in (("/", ("tool",)), ("/tool", ("xenstored",)),
                               ("/tool/xenstored", ()), *((s, ()) for s in SPECIAL_PATHS)):
            self._live_create(name, _Node(b"", root_perms, dict.fromkeys(children)))
        dom0 = self._domain(0)
        dom0.introduced = True

    # ----------------------------------------------------------------- sessions, inspection

    def connect(self, domid: int = 0, privileged: bool | None = None) -> Connection:
        """Open a session as ``domid`` (privileged by default only for dom0).

        A domain not yet known is introduced (firing ``@introduceDomain``), as the toolstack
        would have done before the guest could talk to xenstored.
        """
        if privileged is None:
            privileged = domid == 0
        conn = Connection(self._next_conn_id, domid, privileged)
        self._next_conn_id += 1
        self._connections[conn.conn_id] = conn
        self.add_domain(domid)
        return conn

    def add_domain(self, domid: int) -> None:
        """Introduce ``domid`` as the toolstack would (firing ``@introduceDomain``) unless it
        is already introduced."""
        domain = self._domain(domid)
        if not domain.introduced:
            domain.introduced = True
            self._fire_special("@introduceDomain")

    def disconnect(self, conn: Connection) -> None:
        """End a session: its watches and transactions vanish."""
        self._drop_watches(conn)
        self._drop_transactions(conn)
        conn.closed = True
        self._connections.pop(conn.conn_id, None)

    def connections(self) -> list[Connection]:
        """Return the open sessions."""
        return list(self._connections.values())

    def take_events(self, conn: Connection) -> list[WatchEvent]:
        """Return and forget the events queued for ``conn``."""
        events = list(conn.pending)
        conn.pending.clear()
        return events

    def node(self, path: str) -> NodeInfo | None:
        """Return the live node at canonical ``path``, or None. No permission check."""
        node = self._nodes.get(path)
        if node is None:
            return None
        return NodeInfo(path, node.value, node.perms, tuple(node.children), node.generation)

    def dump(self, top: str = "/") -> dict[str, bytes]:
        """Return ``{path: value}`` for ``top`` and every node below it. No permission check."""
        result: dict[str, bytes] = {}
        stack = [top] if top in self._nodes else []
        while stack:
            name = stack.pop()
            node = self._nodes[name]
            result[name] = node.value
            stack.extend(_child_path(name, child) for child in node.children)
        return result

    def usage(self, domid: int) -> DomainUsage:
        """Return what ``domid`` uses of its quotas (memory includes charged output)."""
        return DomainUsage(self._owner_counts[domid], self._watch_counts[domid],
                           self._tx_counts[domid], self._memory[domid])

    def memory(self, domid: int) -> int:
        """Return the bytes of XenStore memory charged to ``domid``."""
        return self._memory[domid]

    def charge(self, domid: int, nbytes: int) -> None:
        """Add ``nbytes`` (negative: release) to ``domid``'s memory: the server charges the
        output it queues for the domain's connections. Never refused; see
        :meth:`memory_exceeded`."""
        self._memory[domid] += nbytes

    def memory_exceeded(self, domid: int, growth: int = 0) -> bool:
        """Return whether ``domid`` (not dom0) would reach its memory quota with ``growth``
        more bytes: C xenstored's rule, ``used + growth >= quota`` (a quota of 0: no limit)."""
        quota = self.quotas.memory
        return domid != 0 and quota > 0 and self._memory[domid] + growth >= quota

    # ----------------------------------------------------------------- node operations

    def read(self, conn: Connection, path: str, tx_id: int = 0) -> bytes:
        """READ: return the node's value."""
        ctx = self._ctx(conn, tx_id, "READ")
        name = self._canonical(ctx, path, allow_special=False)
        return self._existing(ctx, name, _READ).value

    def write(self, conn: Connection, path: str, value: bytes, tx_id: int = 0) -> None:
        """WRITE: set the value, creating the node and missing parents."""
        ctx = self._ctx(conn, tx_id, "WRITE")
        name = self._canonical(ctx, path, allow_special=False)
        node = self._lookup(ctx, name, _WRITE)
        if node is None:
            node = self._create(ctx, name, value)
        else:
            if not conn.privileged:
                size = node.size() - len(node.value) + len(value)
                if size > self.quotas.node_size:
                    raise XenStoreError("ENOSPC", name, ctx.op)
                self._check_memory(ctx, name, self._charged_domain(ctx, node),
                                   len(value) - len(node.value))
            node.value = value
            self._put(ctx, name, node)
        self._fire(ctx, name, node, exact=False)

    def mkdir(self, conn: Connection, path: str, tx_id: int = 0) -> None:
        """MKDIR: create the node (empty) and missing parents; an existing node stays as is."""
        ctx = self._ctx(conn, tx_id, "MKDIR")
        name = self._canonical(ctx, path, allow_special=False)
        if self._lookup(ctx, name, _WRITE) is None:
            node = self._create(ctx, name, b"")
            self._fire(ctx, name, node, exact=False)

    def rm(self, conn: Connection, path: str, tx_id: int = 0) -> None:
        """RM: remove the node and its subtree; a missing node with an existing parent is
        no error."""
        ctx = self._ctx(conn, tx_id, "RM")
        name = self._canonical(ctx, path, allow_special=False)
        node = self._lookup(ctx, name, _WRITE)
        if node is None:
            if self._get(ctx, parent_path(name)) is not None:
                return
            raise XenStoreError("ENOENT", name, ctx.op)
        if name == "/":
            raise XenStoreError("EINVAL", name, ctx.op)
        self._remove_tree(ctx, name, node)

    def directory(self, conn: Connection, path: str, tx_id: int = 0) -> list[str]:
        """DIRECTORY: return the names of the node's children, oldest first."""
        ctx = self._ctx(conn, tx_id, "DIRECTORY")
        name = self._canonical(ctx, path, allow_special=False)
        return list(self._existing(ctx, name, _READ).children)

    def directory_with_generation(self, conn: Connection, path: str,
                                  tx_id: int = 0) -> tuple[int, list[str]]:
        """DIRECTORY_PART's view: the node's generation and its children."""
        ctx = self._ctx(conn, tx_id, "DIRECTORY_PART")
        name = self._canonical(ctx, path, allow_special=False)
        node = self._existing(ctx, name, _READ)
        return node.generation, list(node.children)

    def get_perms(self, conn: Connection, path: str, tx_id: int = 0) -> tuple[Perm, ...]:
        """GET_PERMS: return the permission list, owner first (special paths allowed)."""
        ctx = self._ctx(conn, tx_id, "GET_PERMS")
        name = self._canonical(ctx, path, allow_special=True)
        return self._existing(ctx, name, _READ).perms

    def set_perms(self, conn: Connection, path: str, perms: Sequence[Perm],
                  tx_id: int = 0) -> None:
        """SET_PERMS: replace the permission list. Needs ownership (or privilege); an
        unprivileged owner may not hand the node to another domain (EPERM)."""
        ctx = self._ctx(conn, tx_id, "SET_PERMS")
        new_perms = tuple(perms)
        if not new_perms:
            raise XenStoreError("EINVAL", path, ctx.op)
        if not conn.privileged and len(new_perms) > self.quotas.perms:
            raise XenStoreError("ENOSPC", path, ctx.op)
        name = self._canonical(ctx, path, allow_special=True)
        node = self._existing(ctx, name, _WRITE | _OWNER)
        if not conn.privileged and new_perms[0].domid != node.owner:
            raise XenStoreError("EPERM", name, ctx.op)
        if not conn.privileged:
            growth = _PERM_ENTRY_SIZE * (len(new_perms) - len(node.perms))
            if node.size() + growth > self.quotas.node_size:
                raise XenStoreError("ENOSPC", name, ctx.op)
            self._check_memory(ctx, name, self._charged_domain(ctx, node), growth)
        old_perms = node.perms
        self._account(ctx, node.owner, -1)
        node.perms = new_perms
        self._account(ctx, node.owner, +1)
        self._put(ctx, name, node)
        self._fire(ctx, name, node, exact=False, old_perms=old_perms)

    # ----------------------------------------------------------------- watches

    def watch(self, conn: Connection, path: str, token: str) -> None:
        """WATCH: register, and queue the initial event."""
        ctx = _Ctx(conn, None, "WATCH")
        name = self._canonical(ctx, path, allow_special=True)
        relative = not path.startswith(("/", "@"))
        if (name, token) in conn.watches:
            raise XenStoreError("EEXIST", name, ctx.op)
        if not conn.privileged and self._watch_counts[conn.domid] > self.quotas.watches:
            raise XenStoreError("E2BIG", name, ctx.op)
        self._check_memory(ctx, name, conn.domid, _watch_size(name, token))
        prefix_len = len(conn.implicit_path) + 1 if relative else 0
        watch = _Watch(conn, name, token, prefix_len)
        conn.watches[(name, token)] = watch
        self._watch_index.setdefault(name, []).append(watch)
        self._watch_counts[conn.domid] += 1
        self._memory[conn.domid] += _watch_size(name, token)
        conn._push(WatchEvent(name[prefix_len:], token))

    def unwatch(self, conn: Connection, path: str, token: str) -> None:
        """UNWATCH: remove a watch (ENOENT if there is none with this path and token)."""
        ctx = _Ctx(conn, None, "UNWATCH")
        name = self._canonical(ctx, path, allow_special=True)
        watch = conn.watches.pop((name, token), None)
        if watch is None:
            raise XenStoreError("ENOENT", name, ctx.op)
        self._unindex(watch)

    def resume_as(self, conn: Connection, domid: int) -> None:
        """The guest behind ``conn`` resumed as domain ``domid`` (``xl restore``, a
        migration): its kernel's one connection now belongs to the new domain (relative
        paths resolve under the new home) and registers its watches again, as given
        (Linux's ``xs_resume``), each firing once. Its transactions are gone."""
        given = [(watch.node[watch.prefix_len:] if watch.prefix_len else watch.node,
                  watch.token) for watch in conn.watches.values()]
        self._drop_watches(conn)
        self._drop_transactions(conn)
        conn.domid = domid
        self.add_domain(domid)
        for path, token in given:
            self.watch(conn, path, token)

    def reset_watches(self, conn: Connection) -> None:
        """RESET_WATCHES: drop every watch and transaction of the connection."""
        self._drop_watches(conn)
        self._drop_transactions(conn)

    # ----------------------------------------------------------------- transactions

    def check_transaction(self, conn: Connection, tx_id: int) -> None:
        """Raise ENOENT unless ``tx_id`` is 0 or an open transaction of ``conn``."""
        self._ctx(conn, tx_id, "TRANSACTION")

    def transaction_start(self, conn: Connection, tx_id: int = 0) -> int:
        """TRANSACTION_START: return the new transaction's id (EBUSY when sent inside one)."""
        ctx = self._ctx(conn, tx_id, "TRANSACTION_START")
        if ctx.tx is not None:
            raise XenStoreError("EBUSY", None, ctx.op)
        if not conn.privileged and self._tx_counts[conn.domid] > self.quotas.transactions:
            raise XenStoreError("ENOSPC", None, ctx.op)
        new_id = conn.next_tx_id
        while new_id == 0 or new_id in conn.transactions:
            new_id = (new_id + 1) % 2**32
        conn.next_tx_id = (new_id + 1) % 2**32
        conn.transactions[new_id] = _Transaction(conn, new_id)
        self._tx_counts[conn.domid] += 1
        return new_id

    def transaction_end(self, conn: Connection, tx_id: int, commit: bool) -> None:
        """TRANSACTION_END: commit (EAGAIN on a conflict, nothing applied) or abort."""
        op = "TRANSACTION_END"
        if tx_id == 0:
            raise XenStoreError("ENOENT", None, op)
        tx = self._ctx(conn, tx_id, op).tx
        assert tx is not None
        del conn.transactions[tx_id]
        self._tx_counts[conn.domid] -= 1
        self._memory[conn.domid] -= tx.memory
        if not commit:
            return
        if not conn.privileged:  # as C: other transactions may have created nodes meanwhile
            for owner, delta in tx.owner_delta.items():
                if delta > 0 and owner != 0 and \
                        self._owner_counts[owner] + delta > self.quotas.nodes:
                    raise XenStoreError("ENOSPC", None, op)
        for name, seen in tx.accessed.items():
            live = self._nodes.get(name)
            if (live.generation if live is not None else _NO_GENERATION) != seen.generation:
                raise XenStoreError("EAGAIN", name, op)
        changed = [(name, seen) for name, seen in tx.accessed.items() if seen.modified]
        for name, seen in changed:
            old = self._nodes.pop(name, None)
            if old is not None:
                self._owner_counts[old.owner] -= 1
                self._memory[old.charged_to] -= old.charged
            if seen.node is not None:
                self._live_create(name, seen.node)
        for name, seen in changed:
            if seen.fire:
                self._deliver(name, None, seen.exact, seen.old_perms)

    # ----------------------------------------------------------------- domains

    def introduce(self, conn: Connection, domid: int, mfn: int, port: int) -> None:
        """INTRODUCE: xenstored starts talking to ``domid``; fires ``@introduceDomain``."""
        self._privileged(conn, "INTRODUCE")
        if port <= 0:
            raise XenStoreError("EINVAL", None, "INTRODUCE")
        domain = self._domain(domid)
        domain.port = port
        if not domain.introduced:
            domain.introduced = True
            self._fire_special("@introduceDomain")

    def release(self, conn: Connection, domid: int) -> None:
        """RELEASE: forget ``domid``: its sessions end, ``@releaseDomain`` fires."""
        self._privileged(conn, "RELEASE")
        domain = self._introduced_domain(domid, "RELEASE", allow_dom0=False)
        domain.introduced = False
        domain.target = None
        for other in list(self._connections.values()):
            if other.domid == domid and not other.privileged:
                self._drop_watches(other)
                self.disconnect(other)
                if other.close_listener is not None:
                    other.close_listener(other)
        self._fire_special("@releaseDomain")

    def resume(self, conn: Connection, domid: int) -> None:
        """RESUME: clear the domain's shutdown flag (nothing else to do here)."""
        self._privileged(conn, "RESUME")
        self._introduced_domain(domid, "RESUME", allow_dom0=False)

    def set_target(self, conn: Connection, domid: int, target: int) -> None:
        """SET_TARGET: ``domid`` (a device model) gets ``target``'s rights."""
        self._privileged(conn, "SET_TARGET")
        domain = self._introduced_domain(domid, "SET_TARGET", allow_dom0=True)
        self._introduced_domain(target, "SET_TARGET", allow_dom0=True)
        domain.target = target

    def is_domain_introduced(self, conn: Connection, domid: int) -> bool:
        """IS_DOMAIN_INTRODUCED (privileged)."""
        self._privileged(conn, "IS_DOMAIN_INTRODUCED")
        if domid == DOMID_SELF:
            return True
        domain = self._domains.get(domid)
        return domain is not None and domain.introduced

    def get_domain_path(self, conn: Connection, domid: int) -> str:
        """GET_DOMAIN_PATH: ``/local/domain/<domid>`` for any domid."""
        return f"/local/domain/{domid}"

    # ----------------------------------------------------------------- internals: context

    def _ctx(self, conn: Connection, tx_id: int, op: str) -> _Ctx:
        if tx_id == 0:
            return _Ctx(conn, None, op)
        tx = conn.transactions.get(tx_id)
        if tx is None:
            raise XenStoreError("ENOENT", None, op)
        return _Ctx(conn, tx, op)

    def _canonical(self, ctx: _Ctx, path: str, allow_special: bool) -> str:
        if not path or not _VALID_PATH.fullmatch(path) or (
                path.startswith("@") and not allow_special):
            raise XenStoreError("EINVAL", path, ctx.op)
        name = path if path.startswith(("/", "@")) else f"{ctx.conn.implicit_path}/{path}"
        if (name.endswith("/") and name != "/") or "//" in name or len(name) > ABS_PATH_MAX:
            raise XenStoreError("EINVAL", path, ctx.op)
        if not ctx.conn.privileged:
            local = _LOCAL_DOMAIN.match(name)
            if len(name) - (local.end() if local else 0) > self.quotas.path_length:
                raise XenStoreError("EINVAL", path, ctx.op)
        return name

    def _privileged(self, conn: Connection, op: str) -> None:
        if not conn.privileged:
            raise XenStoreError("EACCES", None, op)

    def _domain(self, domid: int) -> _Domain:
        domain = self._domains.get(domid)
        if domain is None:
            domain = self._domains[domid] = _Domain(domid)
        return domain

    def _introduced_domain(self, domid: int, op: str, allow_dom0: bool) -> _Domain:
        if domid == 0 and not allow_dom0:
            raise XenStoreError("EINVAL", None, op)
        domain = self._domains.get(domid)
        if domain is None or not domain.introduced:
            raise XenStoreError("ENOENT", None, op)
        return domain

    # ----------------------------------------------------------------- internals: access

    def _get(self, ctx: _Ctx, name: str) -> _Node | None:
        tx = ctx.tx
        if tx is None:
            return self._nodes.get(name)
        seen = tx.accessed.get(name)
        if seen is None:
            live = self._nodes.get(name)
            charge = len(name) + (live.size() if live is not None else 0)
            if not ctx.conn.privileged:
                if len(tx.accessed) + 1 > self.quotas.transaction_nodes:
                    raise XenStoreError("ENOSPC", name, ctx.op)
                self._check_memory(ctx, name, ctx.conn.domid, charge)
            seen = tx.accessed[name] = _Accessed(live.copy() if live is not None else None)
            self._charge_entry(tx, seen, charge)
        return seen.node

    def _put(self, ctx: _Ctx, name: str, node: _Node) -> None:
        if ctx.tx is None:
            self._generation += 1
            node.generation = self._generation
            self._nodes[name] = node
            self._charge_live(name, node)
            return
        self._get(ctx, name)
        seen = ctx.tx.accessed[name]
        seen.node = node
        seen.modified = True
        self._charge_entry(ctx.tx, seen, len(name) + node.size())

    def _delete(self, ctx: _Ctx, name: str) -> None:
        if ctx.tx is None:
            node = self._nodes.pop(name)
            self._memory[node.charged_to] -= node.charged
            return
        self._get(ctx, name)
        seen = ctx.tx.accessed[name]
        seen.node = None
        seen.modified = True
        self._charge_entry(ctx.tx, seen, len(name))

    def _live_create(self, name: str, node: _Node) -> None:
        self._generation += 1
        node.generation = self._generation
        self._nodes[name] = node
        self._owner_counts[node.owner] += 1
        node.charged = 0
        self._charge_live(name, node)

    # ----------------------------------------------------------------- internals: memory

    def _charge_live(self, name: str, node: _Node) -> None:
        """Charge a live node's memory (path and record) to its owner, replacing what was
        charged for it before (the owner may have changed)."""
        self._memory[node.charged_to] -= node.charged
        node.charged = len(name) + node.size()
        node.charged_to = node.owner
        self._memory[node.charged_to] += node.charged

    def _charge_entry(self, tx: _Transaction, seen: _Accessed, charge: int) -> None:
        """Charge a transaction entry's memory to the transaction's domain."""
        delta = charge - seen.charged
        seen.charged = charge
        tx.memory += delta
        self._memory[tx.conn.domid] += delta

    def _charged_domain(self, ctx: _Ctx, node: _Node) -> int:
        """Who pays for a change of ``node``: its owner, or inside a transaction the
        transaction's domain."""
        return node.owner if ctx.tx is None else ctx.conn.domid

    def _check_memory(self, ctx: _Ctx, name: str, domid: int, growth: int) -> None:
        """Raise ENOMEM if an unprivileged request would take ``domid`` to its memory quota."""
        if not ctx.conn.privileged and growth > 0 and self.memory_exceeded(domid, growth):
            raise XenStoreError("ENOMEM", name, ctx.op)

    def _account(self, ctx: _Ctx, owner: int, delta: int) -> None:
        if ctx.tx is None:
            self._owner_counts[owner] += delta
        else:
            ctx.tx.owner_delta[owner] += delta

    def _owned(self, ctx: _Ctx, owner: int) -> int:
        count = self._owner_counts[owner]
        if ctx.tx is not None:
            count += ctx.tx.owner_delta[owner]
        return count

    def _perm_bits(self, conn: Connection, perms: tuple[Perm, ...]) -> int:
        if conn.privileged:
            return _ALL
        domain = self._domains.get(conn.domid)
        target = domain.target if domain is not None else None
        owner = perms[0].domid
        if owner == conn.domid or (target is not None and owner == target):
            return _ALL
        for perm in perms[1:]:
            if perm.domid == conn.domid or (target is not None and perm.domid == target):
                return _ACCESS_BITS[perm.access]
        return _ACCESS_BITS[perms[0].access]

    def _lookup(self, ctx: _Ctx, name: str, need: int) -> _Node | None:
        """Return the node if it exists and ``need`` is granted; None if it is missing and the
        caller may know that; raise EACCES otherwise."""
        node = self._get(ctx, name)
        if node is not None and self._perm_bits(ctx.conn, node.perms) & need == need:
            return node
        if not self._ancestor_bits(ctx, name) & need:
            raise XenStoreError("EACCES", name, ctx.op)
        if node is not None:
            raise XenStoreError("EACCES", name, ctx.op)
        return None

    def _existing(self, ctx: _Ctx, name: str, need: int) -> _Node:
        node = self._lookup(ctx, name, need)
        if node is None:
            raise XenStoreError("ENOENT", name, ctx.op)
        return node

    def _ancestor_bits(self, ctx: _Ctx, name: str) -> int:
        if ctx.conn.privileged:
            return _ALL
        while name != "/":
            name = parent_path(name)
            node = self._get(ctx, name)
            if node is not None:
                return self._perm_bits(ctx.conn, node.perms)
        return 0

    # ----------------------------------------------------------------- internals: changes

    def _create(self, ctx: _Ctx, name: str, value: bytes) -> _Node:
        missing = [name]
        parent_name = parent_path(name)
        parent = self._get(ctx, parent_name)
        while parent is None:
            missing.append(parent_name)
            parent_name = parent_path(parent_name)
            parent = self._get(ctx, parent_name)
        conn = ctx.conn
        perms = parent.perms
        if not conn.privileged:
            perms = (Perm(perms[0].access, conn.domid), *perms[1:])
            if self._owned(ctx, conn.domid) + len(missing) > self.quotas.nodes:
                raise XenStoreError("ENOSPC", name, ctx.op)
            grown = parent.size() + len(missing[-1].rsplit("/", 1)[1]) + 1
            leaf = _NODE_HEADER_SIZE + _PERM_ENTRY_SIZE * len(perms) + len(value)
            if grown > self.quotas.node_size or leaf > self.quotas.node_size:
                raise XenStoreError("ENOSPC", name, ctx.op)
            new_bytes = len(value) + sum(
                2 * len(path) + _NODE_HEADER_SIZE + _PERM_ENTRY_SIZE * len(perms)
                for path in missing)  # each new node's path and record, its name in its parent
            self._check_memory(ctx, name, conn.domid, new_bytes)
        parent.add_child(missing[-1].rsplit("/", 1)[1])
        self._put(ctx, parent_name, parent)
        node = parent
        for index in range(len(missing) - 1, -1, -1):
            node = _Node(value if index == 0 else b"", perms)
            if index > 0:
                node.add_child(missing[index - 1].rsplit("/", 1)[1])
            self._put(ctx, missing[index], node)
            self._account(ctx, perms[0].domid, +1)
        return node

    def _remove_tree(self, ctx: _Ctx, root: str, root_node: _Node) -> None:
        order: list[tuple[str, _Node]] = []
        stack: list[tuple[str, _Node]] = [(root, root_node)]
        while stack:
            name, node = stack.pop()
            order.append((name, node))
            for child in node.children:
                child_name = _child_path(name, child)
                child_node = self._get(ctx, child_name)
                if child_node is not None:
                    stack.append((child_name, child_node))
        for name, node in reversed(order):
            self._account(ctx, node.owner, -1)
            self._fire(ctx, name, node, exact=name != root)
            self._delete(ctx, name)
        parent_name = parent_path(root)
        parent = self._get(ctx, parent_name)
        assert parent is not None
        parent.remove_child(root.rsplit("/", 1)[1])
        self._put(ctx, parent_name, parent)

    # ----------------------------------------------------------------- internals: watches

    def _fire(self, ctx: _Ctx, name: str, node: _Node | None, exact: bool,
              old_perms: tuple[Perm, ...] | None = None) -> None:
        if ctx.tx is None:
            self._deliver(name, node, exact, old_perms)
            return
        seen = ctx.tx.accessed[name]
        if not seen.fire:
            seen.fire = True
            seen.exact = exact
        elif not exact:
            seen.exact = False

    def _fire_special(self, name: str) -> None:
        self._deliver(name, None, exact=True, old_perms=None)

    def _deliver(self, name: str, node: _Node | None, exact: bool,
                 old_perms: tuple[Perm, ...] | None) -> None:
        if exact:
            watches = list(self._watch_index.get(name, ()))
        else:
            watches = [w for n in _ancestors_or_self(name) for w in self._watch_index.get(n, ())]
        permitted: dict[int, bool] = {}
        for watch in watches:
            conn = watch.conn
            allowed = permitted.get(conn.conn_id)
            if allowed is None:
                allowed = permitted[conn.conn_id] = self._watch_permitted(
                    conn, name, node, old_perms)
            if allowed:
                conn._push(WatchEvent(name[watch.prefix_len:], watch.token))

    def _watch_permitted(self, conn: Connection, name: str, node: _Node | None,
                         old_perms: tuple[Perm, ...] | None) -> bool:
        if conn.privileged:
            return True
        if old_perms is not None and self._perm_bits(conn, old_perms) & _READ:
            return True
        if node is None:
            node = self._nodes.get(name)
            if node is None:
                return False
        if self._perm_bits(conn, node.perms) & _READ:
            return True
        parent = self._nodes.get(parent_path(name))
        return parent is not None and bool(self._perm_bits(conn, parent.perms) & _READ)

    def _unindex(self, watch: _Watch) -> None:
        bucket = self._watch_index.get(watch.node)
        if bucket is not None:
            bucket.remove(watch)
            if not bucket:
                del self._watch_index[watch.node]
        self._watch_counts[watch.conn.domid] -= 1
        self._memory[watch.conn.domid] -= _watch_size(watch.node, watch.token)

    def _drop_watches(self, conn: Connection) -> None:
        for watch in conn.watches.values():
            self._unindex(watch)
        conn.watches.clear()

    def _drop_transactions(self, conn: Connection) -> None:
        self._tx_counts[conn.domid] -= len(conn.transactions)
        for tx in conn.transactions.values():
            self._memory[conn.domid] -= tx.memory
        conn.transactions.clear()


def _watch_size(name: str, token: str) -> int:
    """Memory a watch is charged (C: path and token)."""
    return len(name) + len(token)
