"""Where XenStore is reached by default: libxenstore's rule, in one function.

libxenstore's ``xs_open()`` (tools/libs/store/xs.c, Xen 4.17+) first tries
``xs_daemon_socket()`` — ``$XENSTORED_PATH``, else ``$XENSTORED_RUNDIR/socket`` with the run
directory defaulting to /var/run/xenstored — and, when that path does not exist, falls back to
``xs_domain_dev()``: ``$XENSTORED_PATH``, else /dev/xen/xenbus if it exists, else
/proc/xen/xenbus (Linux). :func:`default_xenstore_path` answers the same, so ``xenoffload``
and ``xenstore-read`` find the same XenStore.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

__all__ = ["DEFAULT_RUNDIR", "daemon_socket_path", "default_xenstore_path"]

#: XEN_RUN_STORED: where xenstored puts its socket unless $XENSTORED_RUNDIR says otherwise.
DEFAULT_RUNDIR = "/var/run/xenstored"
_XENBUS_DEVICE = "/dev/xen/xenbus"
_XENBUS_PROC = "/proc/xen/xenbus"


def default_xenstore_path(environ: Mapping[str, str] | None = None,
                          exists: Callable[[str], bool] = os.path.exists) -> str:
    """Return the XenStore endpoint libxenstore would open: ``$XENSTORED_PATH`` if set; else
    the daemon socket ``${XENSTORED_RUNDIR:-/var/run/xenstored}/socket`` if it exists; else
    /dev/xen/xenbus if it exists; else /proc/xen/xenbus.

    ``environ`` defaults to ``os.environ``; ``exists`` tells whether a path exists.
    """
    env = os.environ if environ is None else environ
    explicit = env.get("XENSTORED_PATH")
    if explicit:
        return explicit
    daemon_socket = daemon_socket_path(env)
    if exists(daemon_socket):
        return daemon_socket
    if exists(_XENBUS_DEVICE):
        return _XENBUS_DEVICE
    return _XENBUS_PROC


def daemon_socket_path(environ: Mapping[str, str] | None = None) -> str:
    """Return where a xenstored listens by default, as C xenstored's
    ``xenstore_daemon_path()`` says: ``$XENSTORED_PATH``, else
    ``${XENSTORED_RUNDIR:-/var/run/xenstored}/socket``."""
    env = os.environ if environ is None else environ
    return env.get("XENSTORED_PATH") or f"{env.get('XENSTORED_RUNDIR') or DEFAULT_RUNDIR}/socket"
