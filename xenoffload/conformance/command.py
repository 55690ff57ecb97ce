"""``xenoffload conformance``: run the suite against a command and report (table, JUnit XML).

The command is started once per scenario with ``XENSTORED_PATH`` set to the embedded
xenstored's socket for its role (dom0's for a backend, the guest's for a frontend);
``{config}``, ``{mode}``, ``{xenstore}`` and ``{device-log}`` in it are replaced
(docs/conformance.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from xenoffload.conformance.lab import Timing
from xenoffload.conformance.options import DEFAULT_GRACE
from xenoffload.conformance.runner import (
    PASS,
    SKIP,
    format_table,
    run_suite,
    selected,
    write_junit,
)
from xenoffload.conformance.subjects import CommandSubject
from xenoffload.machine import Mode
from xenoffload.schema import Role

__all__ = ["DEFAULT_GRACE", "EXIT_FAILED", "EXIT_PASSED", "EXIT_UNSEEN", "VERDICTS",
           "command_timing", "modes_for", "run_command_suite"]

#: Exit statuses (docs/conformance.md): all passed (or skipped), everything checked; a
#: scenario failed or the implementation exited; every scenario passed what could be seen but
#: some decisions could not be seen (no published result, no device log). (A selection
#: error is the CLI's usage error, 2.)
EXIT_PASSED, EXIT_FAILED, EXIT_UNSEEN = 0, 1, 8
#: The last line of a run, one per exit status: grep for it.
VERDICTS = {EXIT_PASSED: "VERDICT: passed", EXIT_FAILED: "VERDICT: failed",
            EXIT_UNSEEN: "VERDICT: passed-what-could-be-seen (not certified: some decisions "
                         "could not be seen; see above)"}


def command_timing(timeout: float, grace: float = DEFAULT_GRACE) -> Timing:
    """Timings for an implementation in another process (start-up, scheduling): each awaited
    step may take ``timeout`` seconds; ``grace`` is how long a change may go without any
    request from the implementation before it is taken to have nothing to react to."""
    return Timing(timeout=timeout, quiet=0.3, grace=grace, poll=0.01)


def modes_for(subject: CommandSubject, mode: str | None) -> tuple[Mode, ...]:
    """Return the modes whose scenarios run: ``mode`` when given (``all``: both), else both
    when the command takes ``{mode}``, else full mode only."""
    if mode == "all" or (mode is None and subject.takes_mode):
        return (Mode.FULL, Mode.COMPANION)
    return (Mode(mode),) if mode is not None else (Mode.FULL,)


def run_command_suite(role: Role, command: str, junit: Path | None = None,
                      mode: str | None = None, ids: tuple[str, ...] = (),
                      timeout: float = 10.0, out: TextIO = sys.stdout,
                      grace: float = DEFAULT_GRACE, require_observable: bool = False,
                      keep_workdir: bool = False) -> int:
    """Run the scenarios against ``command``; print the table and the verdict line, write
    JUnit XML when asked. Return EXIT_PASSED when nothing failed and everything could be
    checked, EXIT_UNSEEN when nothing failed but something could not be checked, else
    EXIT_FAILED. Raises SelectionError when ``mode``/``ids`` name an unknown scenario or
    match none."""
    subject = CommandSubject(command)
    scenarios = selected(role, modes_for(subject, mode), ids)
    verdicts = run_suite(role, subject, scenarios, command_timing(timeout, grace),
                         require_observable, keep_workdir)
    out.write(format_table(verdicts) + "\n")
    if junit is not None:
        write_junit(verdicts, junit, f"xenoffload-conformance-{role.value}")
    if not all(v.outcome in (PASS, SKIP) for v in verdicts):
        code = EXIT_FAILED
    else:
        code = EXIT_UNSEEN if any(v.unchecked for v in verdicts) else EXIT_PASSED
    out.write(f"\n{VERDICTS[code]}\n")
    return code
