"""``python -m xenoffload`` and the ``xenoffload`` console script (:func:`run`)."""

import os
import signal
import sys


def _interrupted_early(_signum: int, _frame: object) -> None:
    """Ctrl-C before the command line is even parsed (the imports take a moment): one line and
    exit 130, never a traceback (docs/cli.md)."""
    try:
        os.write(2, b"xenoffload: interrupted\n")
    finally:
        os._exit(130)


def run() -> None:
    """The entry point: handles Ctrl-C from the first instant, then runs the command line.
    SIGINT raises KeyboardInterrupt again once :func:`xenoffload.cli.main` can catch it (the
    daemons install their own handlers)."""
    signal.signal(signal.SIGINT, _interrupted_early)
    from xenoffload.cli import main

    sys.exit(main())


if __name__ == "__main__":
    run()
