"""``xenoffload conformance``: run the suite against a command and report (table, JUnit XML).

The command is started once per scenario with ``XENSTORED_PATH`` set to the embedded
xenstored's socket for its role (dom0's for a backend, the guest's for a frontend);
``{config}``, ``{mode}`` and ``{xenstore}`` in it are replaced (docs/conformance.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from xenoffload.conformance.lab import Timing
from xenoffload.conformance.runner import FAIL, format_table, run_suite, selected, write_junit
from xenoffload.conformance.subjects import CommandSubject
from xenoffload.machine import Mode
from xenoffload.schema import Role

__all__ = ["command_timing", "modes_for", "run_command_suite"]


def command_timing(timeout: float) -> Timing:
    """Timings for an implementation in another process (start-up, scheduling)."""
    return Timing(timeout=timeout, quiet=0.3, poll=0.01)


def modes_for(subject: CommandSubject, mode: str | None) -> tuple[Mode, ...]:
    """Return the modes whose scenarios run: ``mode`` when given (``all``: both), else both
    when the command takes ``{mode}``, else full mode only."""
    if mode == "all" or (mode is None and subject.takes_mode):
        return (Mode.FULL, Mode.COMPANION)
    return (Mode(mode),) if mode is not None else (Mode.FULL,)


def run_command_suite(role: Role, command: str, junit: Path | None = None,
                      mode: str | None = None, ids: tuple[str, ...] = (),
                      timeout: float = 10.0, out: TextIO = sys.stdout) -> int:
    """Run the scenarios against ``command``; print the table, write JUnit XML when asked.
    Return 0 when nothing failed, 1 otherwise. Raises KeyError for an unknown scenario id."""
    subject = CommandSubject(command)
    scenarios = selected(role, modes_for(subject, mode), ids)
    verdicts = run_suite(role, subject, scenarios, command_timing(timeout))
    out.write(format_table(verdicts) + "\n")
    if junit is not None:
        write_junit(verdicts, junit, f"xenoffload-conformance-{role.value}")
    return 1 if any(v.outcome == FAIL for v in verdicts) else 0
