"""Debian's xenstore-utils (the C libxenstore clients) against the embedded xenstored.

Skipped without the tools; a failure under XENOFFLOAD_REQUIRE_SYSTEM=1.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from conftest import require_tool

from xenoffload.xenstored.harness import EmbeddedXenstored
from xenoffload.xs.values import Access, Perm

pytestmark = pytest.mark.system


def run(tool: str, *args: str, socket_path: str,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = require_tool(tool, "xenstore-utils")
    env = dict(os.environ, XENSTORED_PATH=socket_path)
    return subprocess.run([binary, *args], env=env, capture_output=True, text=True, timeout=10,
                          check=check)


def test_write_then_read(xenstored: EmbeddedXenstored) -> None:
    sock = xenstored.socket_path
    run("xenstore-write", "/vm/a/name", "domu", "/vm/a/uuid", "1234", socket_path=sock)
    assert run("xenstore-read", "/vm/a/name", "/vm/a/uuid", socket_path=sock).stdout == (
        "domu\n1234\n")


def test_read_of_a_missing_node_fails(xenstored: EmbeddedXenstored) -> None:
    result = run("xenstore-read", "/missing", socket_path=xenstored.socket_path, check=False)
    assert result.returncode != 0


def test_ls_shows_values_and_permissions(xenstored: EmbeddedXenstored) -> None:
    sock = xenstored.socket_path
    run("xenstore-write", "/dir/key", "v", socket_path=sock)
    run("xenstore-chmod", "/dir/key", "n0", "r1", socket_path=sock)
    listing = run("xenstore-ls", "-p", "/dir", socket_path=sock).stdout
    assert "key" in listing and '"v"' in listing and "(n0,r1)" in listing


def test_chmod_sets_the_permission_list(xenstored: EmbeddedXenstored) -> None:
    sock = xenstored.socket_path
    run("xenstore-write", "/p", "", socket_path=sock)
    run("xenstore-chmod", "/p", "b3", "r4", socket_path=sock)
    conn = xenstored.model.connect(0)
    assert xenstored.model.get_perms(conn, "/p") == (Perm(Access.BOTH, 3), Perm(Access.READ, 4))


def test_rm_and_exists(xenstored: EmbeddedXenstored) -> None:
    sock = xenstored.socket_path
    run("xenstore-write", "/gone/soon", "1", socket_path=sock)
    assert run("xenstore-exists", "/gone/soon", socket_path=sock).returncode == 0
    run("xenstore-rm", "/gone", socket_path=sock)
    assert run("xenstore-exists", "/gone/soon", socket_path=sock, check=False).returncode != 0


def test_list_names_the_children(xenstored: EmbeddedXenstored) -> None:
    sock = xenstored.socket_path
    for name in ("b", "a", "c"):
        run("xenstore-write", f"/l/{name}", "", socket_path=sock)
    assert run("xenstore-list", "/l", socket_path=sock).stdout.split() == ["b", "a", "c"]


def test_watch_reports_registration_and_changes(xenstored: EmbeddedXenstored) -> None:
    binary = require_tool("xenstore-watch", "xenstore-utils")
    env = dict(os.environ, XENSTORED_PATH=xenstored.socket_path)
    watcher = subprocess.Popen([binary, "-n", "2", "/w"], env=env, stdout=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 10
        while not any(r.op == "WATCH" for r in xenstored.request_log):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        run("xenstore-write", "/w/x", "1", socket_path=xenstored.socket_path)
        stdout, _ = watcher.communicate(timeout=10)
    finally:
        watcher.kill()
    assert stdout.split() == ["/w", "/w/x"]


def test_guest_socket_clients_are_confined(xenstored: EmbeddedXenstored) -> None:
    dom0, guest = xenstored.socket_path, xenstored.domain_sockets[1]
    run("xenstore-write", "/local/domain/1/name", "domu", socket_path=dom0)
    run("xenstore-chmod", "/local/domain/1", "n1", socket_path=dom0)
    run("xenstore-chmod", "/local/domain/1/name", "n0", "r1", socket_path=dom0)
    assert run("xenstore-read", "name", socket_path=guest).stdout == "domu\n"
    assert run("xenstore-write", "name", "evil", socket_path=guest, check=False).returncode != 0
    assert run("xenstore-read", "/tool", socket_path=guest, check=False).returncode != 0
    run("xenstore-write", "data/ok", "1", socket_path=guest)
    conn = xenstored.model.connect(0)
    assert xenstored.model.get_perms(conn, "/local/domain/1/data/ok")[0] == Perm(Access.NONE, 1)
