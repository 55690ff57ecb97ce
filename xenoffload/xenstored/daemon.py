"""The embedded xenstored as a daemon process: foreground or background, pid file, readiness.

:func:`run` serves until SIGTERM or SIGINT. It reports readiness once every socket listens:
``READY=1`` to systemd (:mod:`xenoffload.sdnotify`, for ``Type=notify`` units), the pid file
(``--pidfile``), and with ``background=True`` — what C xenstored does unless given
``--no-fork`` — it forks, and the parent exits only when the child serves (status 0) or has
failed to (status 1), so a script can start it and use it on the next line. The command line
is ``xenoffload xenstored`` (:mod:`xenoffload.cli`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable

import attrs

from xenoffload import sdnotify
from xenoffload.stdio import detach_stdio
from xenoffload.xenstored.server import DEFAULT_SOCKET, ServerLimits, XenstoredServer
from xenoffload.xs.model import Quotas, XenStoreModel

__all__ = ["DaemonOptions", "EXIT_CANNOT_SERVE", "EXIT_OK", "run"]

log = logging.getLogger(__name__)

EXIT_OK = 0
#: The sockets cannot be bound (or the background child died before serving).
EXIT_CANNOT_SERVE = 1
#: Stopped by SIGINT (Ctrl-C), as every xenoffload command (docs/cli.md).
EXIT_INTERRUPTED = 130


@attrs.frozen
class DaemonOptions:
    """How to run the daemon (``xenoffload xenstored --help`` lists the flags)."""

    socket_path: str = DEFAULT_SOCKET
    domains: tuple[tuple[int, str], ...] = ()
    trace_path: str | None = None
    quotas: Quotas = Quotas()
    limits: ServerLimits = ServerLimits()
    pidfile: str | None = None
    background: bool = False
    log_file: str | None = None


def run(options: DaemonOptions) -> int:
    """Serve until SIGTERM/SIGINT; return the exit status: 0 after a clean shutdown by SIGTERM
    (or, with ``background``, in the parent once the child serves), 130 after SIGINT, 1 when
    the sockets cannot be bound (one line on stderr naming the path)."""
    if options.background:
        return _fork_and_wait(options)
    return _serve(options, on_ready=None)


def _fork_and_wait(options: DaemonOptions) -> int:
    """Fork; the child serves and reports readiness through a pipe, the parent returns 0 once
    it did, 1 if the child ended first."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_end)
        os.setsid()
        detach_stdio(options.log_file)

        def ready() -> None:
            os.write(write_end, b"R")
            os.close(write_end)

        def failed(line: str) -> None:
            os.write(write_end, b"E" + line.encode("utf-8", "replace")[:4000])
            os.close(write_end)

        code = EXIT_CANNOT_SERVE
        try:
            code = _serve(options, on_ready=ready, on_error=failed)
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        said = pipe.read()
    if said[:1] == b"R":
        return EXIT_OK
    _, status = os.waitpid(pid, 0)
    why = said[1:].decode("utf-8", "replace") if said[:1] == b"E" else \
        f"xenstored did not start (exit status {os.waitstatus_to_exitcode(status)})"
    print(f"xenoffload: {why}", file=sys.stderr, flush=True)
    return EXIT_CANNOT_SERVE


def _serve(options: DaemonOptions, on_ready: Callable[[], None] | None,
           on_error: Callable[[str], None] | None = None) -> int:
    if options.log_file and not options.background:
        _redirect_stderr(options.log_file)
    model = XenStoreModel(options.quotas)
    server = XenstoredServer(model, options.socket_path, dict(options.domains),
                             trace_path=options.trace_path, record=False, limits=options.limits)
    try:
        signum = asyncio.run(_serve_until_signalled(server, options, on_ready))
    except OSError as err:
        # One line, naming the path (docs/cli.md); in the background the parent prints it.
        line = f"xenstored: cannot serve {_where(err, options)}: {err.strerror or err}"
        if on_error is not None:
            on_error(line)
        else:
            print(f"xenoffload: {line}", file=sys.stderr, flush=True)
        return EXIT_CANNOT_SERVE
    return EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_OK


def _where(err: OSError, options: DaemonOptions) -> str:
    """The socket or file an error of start-up concerns, as best known."""
    if err.filename is not None:
        return str(err.filename)
    return " and ".join([options.socket_path, *(path for _domid, path in options.domains)])


def _redirect_stderr(log_file: str) -> None:
    target = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    sys.stderr.flush()
    os.dup2(target, 2)
    os.close(target)


async def _serve_until_signalled(server: XenstoredServer, options: DaemonOptions,
                                 on_ready: Callable[[], None] | None) -> int:
    """Serve until SIGTERM or SIGINT; return the signal's number."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    wrote_pidfile = False
    try:
        await server.start()
        if options.pidfile is not None:
            _write_pidfile(options.pidfile)
            wrote_pidfile = True
        sockets = 1 + len(options.domains)
        sdnotify.ready(f"serving {options.socket_path} and {sockets - 1} guest socket(s)")
        if on_ready is not None:
            on_ready()
        await stop.wait()
        log.info("signal received, shutting down")
        sdnotify.stopping()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await server.close(remove_sockets=True)
        if wrote_pidfile and options.pidfile is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(options.pidfile)
    return received[0] if received else signal.SIGTERM


def _write_pidfile(path: str) -> None:
    """Write this process' pid to ``path`` atomically (a reader never sees a partial file)."""
    partial = f"{path}.{os.getpid()}.tmp"
    with open(partial, "w", encoding="ascii") as handle:
        handle.write(f"{os.getpid()}\n")
    os.replace(partial, path)
