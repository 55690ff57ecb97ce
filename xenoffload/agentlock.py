"""One writer per end: the locks that keep two xenoffload processes from writing one end's keys.

An *end* is one side of every vif of one domain as seen through one XenStore: the backend end
of driver domain D (``backend-agent --domid D``) or the frontend end of guest G
(``guest-agent`` in G). Exactly one process writes an end's keys and status at a time:

* an **agent** (a daemon, or ``--once``) holds its end's *agent lock* exclusively for as long
  as it runs; a second agent for the same end gets :class:`EndBusy` and writes nothing;
* a **hotplug** hook (``xenoffload hotplug online``) for vif G/N holds that vif's *vif lock*
  exclusively and its end's *hotplug lock* shared. An agent takes the hotplug lock
  exclusively before it writes, so hotplug hooks and an agent never write together: a hook
  that finds an agent leaves the vif to it; an agent that starts while hooks are waiting stops
  them first (:data:`signal.SIGTERM`, see :func:`supersede`).
* a newer hook for the same vif (``online`` again, or ``offline``) supersedes the older one
  the same way.

The locks are ``flock(2)`` locks on files in :func:`lock_dir` (``/run/xenoffload`` for root).
The kernel drops a lock when its holder dies, so a lock is never stale; its holder removes the
lock file when it lets go (a shared holder when it is the last), so files do not pile up; a
lock *file* left behind by a killed holder holds nothing and is reused. Each holder writes a
one-line :class:`Holder` record (pid, the process's start time, what it is) into its file; a
record is only trusted for signalling when its pid still runs with the same start time, so a
recycled pid is never signalled.

An end is keyed on (role, domid, XenStore): the system XenStore (its daemon's socket or the
xenbus device, however reached) is one store; any other endpoint (an embedded xenstored's
socket) is keyed on its resolved path. On the system XenStore the frontend end is the guest's
own, whatever its domid (it changes across ``xl restore`` and migration). The rule is enforced
among the processes of one operating system, which is where an end's agents run (they toggle
that system's devices).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

from xenoffload.schema import Role

__all__ = [
    "EndBusy",
    "EndKey",
    "Holder",
    "HeldLock",
    "lock_dir",
    "store_identity",
    "acquire_agent",
    "acquire_vif",
    "hotplug_permit",
    "supersede",
    "SYSTEM_XENSTORE_PATHS",
]

#: Endpoints that all reach the system's XenStore daemon (one store, whichever is used).
SYSTEM_XENSTORE_PATHS = ("/var/run/xenstored/socket", "/run/xenstored/socket",
                         "/var/run/xenstored/socket_ro", "/run/xenstored/socket_ro",
                         "/dev/xen/xenbus", "/proc/xen/xenbus")

#: How long an agent or hook waits for the processes it superseded to let go of their locks.
SUPERSEDE_SECONDS = 5.0


class EndBusy(Exception):
    """Another process already writes for this end (or this vif); carries its record."""

    def __init__(self, message: str, holder: Holder | None = None) -> None:
        super().__init__(message)
        self.holder = holder


def lock_dir() -> Path:
    """Return the directory of the lock files, creating it (mode 0700) if needed:
    ``/run/xenoffload`` when it is usable (root, or systemd's ``RuntimeDirectory``), else
    ``$XDG_RUNTIME_DIR/xenoffload``, else ``/tmp/xenoffload-<uid>``. Raises OSError when none
    can be used."""
    candidates = [Path("/run/xenoffload")]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        candidates.append(Path(runtime, "xenoffload"))
    candidates.append(Path(f"/tmp/xenoffload-{os.geteuid()}"))
    last: OSError | None = None
    for candidate in candidates:
        try:
            candidate.mkdir(mode=0o700, exist_ok=True)
            info = candidate.lstat()
            if not candidate.is_dir() or candidate.is_symlink() or \
                    info.st_uid != os.geteuid():
                raise PermissionError(errno.EPERM, "not a directory of this user",
                                      str(candidate))
            if not os.access(candidate, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not writable", str(candidate))
            return candidate
        except OSError as error:
            last = error
    assert last is not None
    raise last


def store_identity(xenstore: str) -> str:
    """Return what names the XenStore behind endpoint ``xenstore``: ``system`` for the system
    daemon's socket or the xenbus device, else the endpoint's resolved path."""
    resolved = os.path.realpath(xenstore)
    system = {os.path.realpath(path) for path in SYSTEM_XENSTORE_PATHS}
    return "system" if resolved in system or xenstore in SYSTEM_XENSTORE_PATHS else resolved


@attrs.frozen
class EndKey:
    """One end: its role, its domain, and the XenStore it is written through."""

    role: Role
    domid: int
    store: str

    @classmethod
    def of(cls, role: Role, domid: int, xenstore: str) -> EndKey:
        return cls(role, domid, store_identity(xenstore))

    @property
    def stem(self) -> str:
        """The lock files' common name: role, domid and a digest of the store's identity.
        The frontend end on the system XenStore is named ``self`` instead of a domid: a
        guest's system reaches one domain, its own, whose domid changes when it is restored
        or migrated (an agent that follows it and one started afterwards are one end)."""
        digest = hashlib.sha256(self.store.encode()).hexdigest()[:12]
        domain = "self" if self.role is Role.FRONTEND and self.store == "system" else \
            str(self.domid)
        return f"{self.role.value}-{domain}-{digest}"

    def describe(self) -> str:
        where = "the system XenStore" if self.store == "system" else self.store
        return f"the {self.role.value} end of domain {self.domid} on {where}"


def _start_time(pid: int) -> str | None:
    """Return the start time of process ``pid`` (clock ticks since boot, /proc/PID/stat field
    22), or None if it does not run (no such process, or a zombie: it has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else fields[19]


@attrs.frozen
class Holder:
    """Who holds a lock: written by the holder into the lock file, one line."""

    pid: int
    start: str
    what: str
    since: str

    @classmethod
    def me(cls, what: str) -> Holder:
        return cls(os.getpid(), _start_time(os.getpid()) or "?", what,
                   time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def line(self) -> str:
        return f"pid={self.pid} start={self.start} since={self.since} what={self.what}\n"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """Return the record in ``text``, or None if it is not one."""
        fields: dict[str, str] = {}
        head, _, what = text.strip().partition(" what=")
        for token in head.split():
            key, _, value = token.partition("=")
            fields[key] = value
        try:
            return cls(int(fields["pid"]), fields["start"], what, fields["since"])
        except (KeyError, ValueError):
            return None

    @property
    def alive(self) -> bool:
        """True while the process this record names still runs (same pid, same start)."""
        return _start_time(self.pid) == self.start

    def describe(self) -> str:
        return f"{self.what} (pid {self.pid}, since {self.since})"


@attrs.define
class HeldLock:
    """An acquired lock: an open file descriptor holding ``flock``. Closing it (:meth:`close`
    or the end of the process) lets go; a forked child that keeps the descriptor keeps the
    lock (the hotplug hook hands its locks to its background child this way)."""

    path: Path
    fd: int
    exclusive: bool = True

    def close(self) -> None:
        """Let go, removing the lock file when no other process holds it (an exclusive
        holder always may; a shared one when it can take it exclusively), so that lock files
        do not pile up: one taker that opened the file before it went away sees that its
        lock is on a removed file and takes the new one (:func:`_take`)."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            if (self.exclusive or _try_flock(self.fd, fcntl.LOCK_EX)) and \
                    _same_file(self.fd, self.path):
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1

    def keep(self) -> None:
        """Let go without removing the file (a parent whose forked child holds the lock)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def record(self, holder: Holder) -> None:
        """Write ``holder`` as this lock's record (a forked child rewrites its own pid)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, holder.line().encode(), 0)

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _open(path: Path, create: bool = True) -> int:
    return os.open(path, os.O_RDWR | (os.O_CREAT if create else 0) | os.O_CLOEXEC |
                   os.O_NOFOLLOW, 0o600)


def _same_file(fd: int, path: Path) -> bool:
    """True when ``path`` still names the file open as ``fd`` (not removed, not replaced)."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _try_flock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def read_holder(path: Path) -> Holder | None:
    """Return the record in lock file ``path``, or None (no file, no record yet)."""
    try:
        return Holder.parse(path.read_text(errors="replace"))
    except OSError:
        return None


def _take(path: Path, operation: int, holder: Holder | None) -> HeldLock | None:
    """Open ``path`` and try ``flock(operation)`` without waiting; return the held lock (its
    record written if ``holder``) or None when another process holds it. A lock won on a
    file its holder removed meanwhile (:meth:`HeldLock.close`) is taken again on the file the
    path names now."""
    while True:
        fd = _open(path)
        if not _try_flock(fd, operation):
            os.close(fd)
            return None
        if _same_file(fd, path):
            break
        os.close(fd)  # removed by its last holder: take the path's new file
    lock = HeldLock(path, fd, exclusive=operation == fcntl.LOCK_EX)
    if holder is not None:
        lock.record(holder)
    return lock


def _wait_take(path: Path, operation: int, holder: Holder | None,
               seconds: float) -> HeldLock | None:
    """:func:`_take`, retried every 20 ms for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        lock = _take(path, operation, holder)
        if lock is not None or time.monotonic() >= deadline:
            return lock
        time.sleep(0.02)


def supersede(path: Path) -> Holder | None:
    """Ask the process holding lock file ``path`` to stop (SIGTERM), if its record names a
    process that still runs; return the record signalled, or None. The hotplug hook's
    background part has no handler for SIGTERM: it ends at once, between two XenStore
    requests (an unfinished transaction is dropped with its connection)."""
    holder = read_holder(path)
    if holder is None or holder.pid == os.getpid() or not holder.alive:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(holder.pid, signal.SIGTERM)
    return holder


def _files(end: EndKey, directory: Path) -> tuple[Path, Path]:
    return directory / f"{end.stem}.agent", directory / f"{end.stem}.hotplug"


def _vif_path(end: EndKey, directory: Path, guest: int, devid: int) -> Path:
    return directory / f"{end.stem}.vif-{guest}-{devid}"


def acquire_agent(end: EndKey, what: str, directory: Path | None = None,
                  wait: float = SUPERSEDE_SECONDS) -> list[HeldLock]:
    """Become the one writer of ``end``: take its agent lock, then its hotplug lock (stopping
    hotplug hooks still waiting on its vifs, for at most ``wait`` seconds). Return the held
    locks (keep them open for as long as the process writes). Raises EndBusy naming the
    holder when another agent acts for the end, or hooks did not stop in time."""
    directory = directory or lock_dir()
    agent_path, hotplug_path = _files(end, directory)
    agent = _take(agent_path, fcntl.LOCK_EX, Holder.me(what))
    if agent is None:
        holder = read_holder(agent_path)
        raise EndBusy(f"{holder.describe() if holder else 'another xenoffload agent'} "
                      f"already acts for {end.describe()}", holder)
    hotplug = _take(hotplug_path, fcntl.LOCK_EX, None)
    if hotplug is None:
        stopped = [holder for path in sorted(directory.glob(f"{end.stem}.vif-*"))
                   if (holder := _busy_holder(path)) is not None]
        for path in sorted(directory.glob(f"{end.stem}.vif-*")):
            supersede(path)
        hotplug = _wait_take(hotplug_path, fcntl.LOCK_EX, None, wait)
        if hotplug is None:
            agent.close()
            names = ", ".join(h.describe() for h in stopped) or "unknown processes"
            raise EndBusy(f"hotplug hooks still write for {end.describe()} after {wait:.0f}s: "
                          f"{names}")
    for path in sorted(directory.glob(f"{end.stem}.vif-*")):
        _remove_if_free(path)  # left by hooks that were stopped
    return [agent, hotplug]


def _remove_if_free(path: Path) -> None:
    """Remove lock file ``path`` if no process holds it."""
    try:
        fd = _open(path, create=False)
    except OSError:
        return
    HeldLock(path, fd, exclusive=False).close()


def _busy_holder(path: Path) -> Holder | None:
    """Return the record of lock file ``path`` if a process holds it now."""
    try:
        fd = _open(path, create=False)
    except FileNotFoundError:
        return None
    try:
        if _try_flock(fd, fcntl.LOCK_SH):
            return None
    finally:
        os.close(fd)
    return read_holder(path)


def acquire_vif(end: EndKey, guest: int, devid: int, what: str,
                directory: Path | None = None,
                wait: float = SUPERSEDE_SECONDS) -> tuple[HeldLock, Holder | None]:
    """Take the vif lock of ``guest``/``devid`` for a hotplug hook, stopping an older hook
    that holds it. Return the lock and the record of the hook stopped (None if none was).
    Raises EndBusy when the older hook did not let go within ``wait`` seconds."""
    directory = directory or lock_dir()
    path = _vif_path(end, directory, guest, devid)
    lock = _take(path, fcntl.LOCK_EX, Holder.me(what))
    if lock is not None:
        return lock, None
    older = supersede(path)
    lock = _wait_take(path, fcntl.LOCK_EX, Holder.me(what), wait)
    if lock is None:
        holder = read_holder(path)
        raise EndBusy(f"{holder.describe() if holder else 'another hook'} still holds vif "
                      f"{guest}/{devid} of {end.describe()} after {wait:.0f}s", holder)
    return lock, older


def hotplug_permit(end: EndKey, directory: Path | None = None) -> HeldLock:
    """Take ``end``'s hotplug lock shared (hooks of different vifs run side by side). Return
    it; raises EndBusy naming the agent when one acts for the end (the hook then leaves the
    vif to it)."""
    directory = directory or lock_dir()
    agent_path, hotplug_path = _files(end, directory)
    permit = _take(hotplug_path, fcntl.LOCK_SH, None)
    if permit is None:
        holder = read_holder(agent_path)
        raise EndBusy(f"{holder.describe() if holder else 'a xenoffload agent'} acts for "
                      f"{end.describe()}", holder)
    return permit


@contextlib.contextmanager
def held(locks: list[HeldLock]) -> Iterator[list[HeldLock]]:
    """Close ``locks`` on leaving the block."""
    try:
        yield locks
    finally:
        for lock in reversed(locks):
            lock.close()
