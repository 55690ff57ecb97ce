"""The default XenStore endpoint follows libxenstore's xs_open() rule, in one function that both
PyxsStore and the command line use."""

from __future__ import annotations

import pytest

from xenoffload.cli import resolve_xenstore
from xenoffload.store.location import daemon_socket_path, default_xenstore_path


def exists_only(*paths: str):  # type: ignore[no-untyped-def]
    return lambda path: path in paths


def test_default_path_prefers_xenstored_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENSTORED_PATH", "/somewhere/socket")
    assert default_xenstore_path() == "/somewhere/socket"


def test_xenstored_path_wins_even_when_the_socket_exists() -> None:
    env = {"XENSTORED_PATH": "/elsewhere"}
    assert default_xenstore_path(env, exists_only("/var/run/xenstored/socket")) == "/elsewhere"


def test_the_daemon_socket_comes_first_when_it_exists() -> None:
    everything = exists_only("/var/run/xenstored/socket", "/dev/xen/xenbus")
    assert default_xenstore_path({}, everything) == "/var/run/xenstored/socket"


def test_xenstored_rundir_moves_the_daemon_socket() -> None:
    env = {"XENSTORED_RUNDIR": "/run/xs"}
    assert default_xenstore_path(env, exists_only("/run/xs/socket")) == "/run/xs/socket"
    assert daemon_socket_path(env) == "/run/xs/socket"


def test_without_a_daemon_socket_the_xenbus_device_is_used() -> None:
    assert default_xenstore_path({}, exists_only("/dev/xen/xenbus")) == "/dev/xen/xenbus"


def test_without_dev_xen_xenbus_the_proc_file_is_the_last_resort() -> None:
    assert default_xenstore_path({}, exists_only()) == "/proc/xen/xenbus"


def test_the_command_line_asks_the_same_function(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENSTORED_PATH", "/from/env")
    assert resolve_xenstore(None) == "/from/env"
    assert resolve_xenstore("/explicit") == "/explicit"
