"""One writer per end (docs/agents.md, "One writer per end"), through the real commands: a
second agent for an end, ``--once`` beside a running agent, and hotplug hooks beside an agent
or beside each other never write; each says so in one line and exits with its code."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.lab import AgentProcess, Lab, run_cli, wait_until

from xenoffload.agentlock import EndKey, Holder, lock_dir, read_holder
from xenoffload.cli import EXIT_BUSY
from xenoffload.schema import Role

from .conftest import Processes

BACKEND = ("backend-agent", "--mode", "full", "--toggles", "none", "--no-config")
GUEST = ("guest-agent", "--mode", "full", "--toggles", "none", "--no-config")


def _backend(lab: Lab, processes: Processes, name: str, *extra: str) -> AgentProcess:
    return processes.start(name, *BACKEND, "--xenstore", lab.socket, *extra)


def _connections(lab: Lab) -> set[int]:
    return {record.conn_id for record in lab.xenstored.request_log}


def _mutations_by(lab: Lab, conn_ids: set[int], since: int = 0) -> list[str]:
    return [f"{r.op} {r.payload[:80]!r}" for r in lab.requests_since(since)
            if r.conn_id in conn_ids and r.op in ("WRITE", "MKDIR", "RM", "SET_PERMS")
            and r.reply_op != "ERROR"]


def _acting(lab: Lab, token: str) -> set[int]:
    return wait_until(lambda: lab.conn_ids(token), 15, f"an agent watching ({token})")


def test_a_second_backend_agent_exits_5_and_never_connects(lab: Lab,
                                                            processes: Processes) -> None:
    lab.add_guest(1, ["xenbr0"])
    first = _backend(lab, processes, "first")
    _acting(lab, "xenoffload-backend")
    before = _connections(lab)
    second = subprocess.run([sys.executable, "-m", "xenoffload", *BACKEND, "--xenstore",
                             lab.socket], capture_output=True, text=True, timeout=30,
                            check=False)
    assert second.returncode == EXIT_BUSY
    (line,) = second.stderr.strip().splitlines()
    assert f"backend-agent (pid {first.process.pid}" in line
    assert "already acts for the backend end of domain 0" in line
    assert "writes nothing" in line
    assert _connections(lab) == before  # it never even connected
    assert first.running()


def test_once_beside_a_running_agent_writes_nothing(lab: Lab, processes: Processes) -> None:
    vif = lab.add_guest(1, ["xenbr0"])[0]
    _backend(lab, processes, "daemon")
    _acting(lab, "xenoffload-backend")
    wait_until(lambda: lab.toolstack.try_read(f"{vif.backend_dir}/feature-csum-tx"), 10,
               "the daemon's keys")
    status = lab.toolstack.try_read(f"{vif.backend_dir}/xenoffload-csum-status")
    before, since = _connections(lab), len(lab.xenstored.request_log)
    # The case: --once with a namespace that does not exist would have written
    # "error: toggles unavailable" over the daemon's status.
    once = run_cli("backend-agent", "--once", "--toggles", "netlink", "--netns", "nosuchns",
                   "--no-config", "--xenstore", lab.socket)
    assert once.returncode == EXIT_BUSY, once.stderr
    assert "--once writes nothing" in once.stderr
    assert _mutations_by(lab, _connections(lab) - before, since) == []
    assert lab.toolstack.try_read(f"{vif.backend_dir}/xenoffload-csum-status") == status


def test_a_second_guest_agent_in_the_same_guest_exits_5(lab: Lab,
                                                        processes: Processes) -> None:
    lab.add_guest(1, ["xenbr0"])
    lab.add_guest(2, ["xenbr0"])
    processes.start("guest", *GUEST, "--xenstore", lab.guest_socket(1))
    _acting(lab, "xenoffload-guest")
    second = run_cli(*GUEST, "--xenstore", lab.guest_socket(1))
    assert second.returncode == EXIT_BUSY
    assert "the frontend end of domain 1" in second.stderr
    # Another guest is another end: its agent runs (its vif waits for a backend: exit 1).
    other = run_cli(*GUEST, "--once", "--settle", "0.2", "--xenstore", lab.guest_socket(2))
    assert other.returncode == 1, other.stderr
    assert '"domid": 2' not in other.stdout  # a table, not JSON
    assert "2/0" in other.stdout


def test_an_agent_killed_outright_leaves_no_stale_lock(lab: Lab, processes: Processes) -> None:
    lab.add_guest(1, ["xenbr0"])
    first = _backend(lab, processes, "first")
    _acting(lab, "xenoffload-backend")
    first.process.kill()  # no cleanup at all: the kernel drops the lock
    first.process.wait(10)
    once = run_cli(*BACKEND, "--once", "--settle", "0.2", "--xenstore", lab.socket)
    assert once.returncode == 1, once.stderr  # it ran: the vif waits for its frontend
    assert "1/0" in once.stdout and "InitWait/Initialising" in once.stdout


# ------------------------------------------------------------------------------ hotplug


def _vif_lock(lab: Lab, devid: int) -> Path:
    return lock_dir() / f"{EndKey.of(Role.BACKEND, 0, lab.socket).stem}.vif-1-{devid}"


def _hook_holder(lab: Lab, devid: int) -> Holder | None:
    holder = read_holder(_vif_lock(lab, devid))
    return holder if holder is not None and holder.alive else None


@pytest.fixture
def hooks(lab: Lab) -> Iterator[None]:
    """Kill any hotplug child still waiting when the test ends."""
    yield
    for devid in (0, 1):
        holder = _hook_holder(lab, devid)
        if holder is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(holder.pid, signal.SIGKILL)


def hotplug(lab: Lab, action: str, devid: int = 0,
            **environ: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XENBUS_PATH": f"backend/vif/1/{devid}", "vif": f"vif1.{devid}",
           **environ}
    return subprocess.run([sys.executable, "-m", "xenoffload", "-v", "hotplug", action,
                           "--xenstore", lab.socket, "--toggles", "none", "--no-config",
                           "--wait", "60"], env=env, capture_output=True, text=True,
                          timeout=30, check=False)


def test_a_hook_leaves_the_vif_to_a_running_agent(lab: Lab, processes: Processes,
                                                  hooks: None) -> None:
    lab.add_guest(1, ["xenbr0"])
    _backend(lab, processes, "daemon")
    _acting(lab, "xenoffload-backend")
    before, since = _connections(lab), len(lab.xenstored.request_log)
    done = hotplug(lab, "online")
    assert done.returncode == 0, done.stderr
    assert "acts for the backend end of domain 0" in done.stderr
    assert "leaving the vif to it" in done.stderr
    assert _mutations_by(lab, _connections(lab) - before, since) == []
    assert _hook_holder(lab, 0) is None  # no background part left


def test_an_agent_stops_waiting_hooks_before_it_writes(lab: Lab, processes: Processes,
                                                       hooks: None) -> None:
    lab.add_guest(1, ["xenbr0", "xenpriv0"])
    for devid in (0, 1):
        assert hotplug(lab, "online", devid).returncode == 0
    children = [_hook_holder(lab, devid) for devid in (0, 1)]
    assert all(children), children
    daemon = _backend(lab, processes, "daemon")
    _acting(lab, "xenoffload-backend")
    for child in children:
        assert child is not None and not child.alive  # stopped, not left to write
    assert daemon.running()


def test_a_newer_online_supersedes_the_waiting_one(lab: Lab, hooks: None) -> None:
    lab.add_guest(1, ["xenbr0"])
    assert hotplug(lab, "online").returncode == 0
    older = _hook_holder(lab, 0)
    assert older is not None
    done = hotplug(lab, "online")
    assert done.returncode == 0
    assert f"stopped hotplug online vif 1/0 (background) (pid {older.pid}" in done.stderr
    assert not older.alive
    newer = _hook_holder(lab, 0)
    assert newer is not None and newer.pid != older.pid


def test_offline_stops_the_waiting_online(lab: Lab, hooks: None) -> None:
    lab.add_guest(1, ["xenbr0"])
    assert hotplug(lab, "online").returncode == 0
    older = _hook_holder(lab, 0)
    assert older is not None
    done = hotplug(lab, "offline")
    assert done.returncode == 0
    assert "stopped hotplug online vif 1/0" in done.stderr
    assert not older.alive and _hook_holder(lab, 0) is None


def test_the_emulated_twin_of_an_hvm_vif_is_left_alone(lab: Lab, hooks: None) -> None:
    vif = lab.add_guest(1, ["xenbr0"])[0]
    for action, environ in (("add", {"type_if": "tap", "vif": "vif1.0-emu"}),
                            ("online", {"type_if": "tap", "vif": "vif1.0-emu"})):
        done = hotplug(lab, action, **environ)
        assert done.returncode == 0
        assert "emulated NIC of an HVM guest" in done.stderr
    assert lab.toolstack.try_read(f"{vif.backend_dir}/feature-csum-tx") is None
    assert _hook_holder(lab, 0) is None




def test_a_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    """A record whose pid now belongs to another process (another start time) is stale:
    superseding it signals nothing. Here the pid is a live ``sleep``'s."""
    from xenoffload.agentlock import supersede

    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        lock = tmp_path / "x.vif-1-0"
        lock.write_text(Holder(sleeper.pid, "1", "hotplug online vif 1/0", "then").line())
        assert supersede(lock) is None
        assert sleeper.poll() is None  # still running: not signalled
        live = Holder.parse(lock.read_text())
        assert live is not None and not live.alive
    finally:
        sleeper.kill()
        sleeper.wait(10)


def test_the_lock_works_between_agents_of_one_process(tmp_path: Path) -> None:
    """flock(2) locks belong to open files, not processes: two agents embedded in one
    process (the in-process tests' way) exclude each other too, and letting go frees it."""
    from xenoffload.agentlock import EndBusy, acquire_agent, held

    end = EndKey.of(Role.FRONTEND, 7, str(tmp_path / "xs.sock"))
    with held(acquire_agent(end, "first", tmp_path)):
        with pytest.raises(EndBusy, match=r"first .* already acts for the frontend end of "
                                          r"domain 7"):
            acquire_agent(end, "second", tmp_path)
        other = EndKey.of(Role.FRONTEND, 8, str(tmp_path / "xs.sock"))
        with held(acquire_agent(other, "another end", tmp_path)):
            pass
    with held(acquire_agent(end, "second", tmp_path)):
        pass


# ------------------------------------------------------------------------------ lock files


def test_lock_files_are_removed_by_their_last_holder(tmp_path: Path) -> None:
    from xenoffload.agentlock import acquire_agent, hotplug_permit

    end = EndKey.of(Role.BACKEND, 0, str(tmp_path / "xs.sock"))
    locks = acquire_agent(end, "test agent", tmp_path)
    assert len(list(tmp_path.iterdir())) == 2
    for lock in locks:
        lock.close()
    assert not list(tmp_path.iterdir())  # one pair per socket ever used no more
    first, second = hotplug_permit(end, tmp_path), hotplug_permit(end, tmp_path)
    first.close()
    assert list(tmp_path.iterdir())  # the other hook still holds it
    second.close()
    assert not list(tmp_path.iterdir())


def test_a_lock_won_on_a_removed_file_is_taken_again(tmp_path: Path) -> None:
    """A taker that opened the file before its holder removed it must not hold a lock on the
    removed file beside a third process locking the new one."""
    import fcntl
    import os

    from xenoffload.agentlock import HeldLock, _take

    path = tmp_path / "x.agent"
    first = _take(path, fcntl.LOCK_EX, None)
    assert first is not None
    stale = os.open(path, os.O_RDWR)  # the racing taker's open, before the removal
    first.close()
    assert not path.exists()
    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it wins the lock on the removed file
    again = _take(path, fcntl.LOCK_EX, None)  # the path's new file: a lock of its own
    assert again is not None and path.exists()
    os.close(stale)
    HeldLock.close(again)
