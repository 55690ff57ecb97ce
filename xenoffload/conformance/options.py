"""The conformance plugin's pytest options, and nothing else: what pytest loads at start-up
in every environment where xenoffload is installed (the ``pytest11`` entry point), so it
imports nothing of the suite. The suite itself (:mod:`xenoffload.conformance.plugin`) is
imported only when ``--conformance-impl`` is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

__all__ = ["DEFAULT_GRACE", "addoption"]

#: Default seconds an implementation has to start reacting to a change (docs/conformance.md).
DEFAULT_GRACE = 2.0


def addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("xenoffload-conformance", "xenoffload protocol conformance")
    group.addoption("--conformance-impl", action="append", default=[], metavar="ROLE:COMMAND",
                    help="run the conformance scenarios against COMMAND playing ROLE "
                         "(backend or frontend); repeatable")
    group.addoption("--conformance-scenario", action="append", default=[], metavar="ID",
                    help="only this scenario (repeatable)")
    group.addoption("--conformance-mode", choices=("full", "companion", "all"), default=None,
                    help="which scenarios (default: all if COMMAND has {mode}, else full)")
    group.addoption("--conformance-timeout", type=float, default=10.0, metavar="SECONDS",
                    help="how long to wait for the implementation at each step")
    group.addoption("--conformance-grace", type=float, default=DEFAULT_GRACE,
                    metavar="SECONDS",
                    help="how long a change may go without any request from the "
                         "implementation before it counts as ignored")
    group.addoption("--conformance-require-observable", action="store_true",
                    help="fail a scenario whose result could not be checked (no published "
                         "xenoffload-csum-result, no {device-log})")
    group.addoption("--conformance-keep-workdir", action="store_true",
                    help="keep each scenario's lab directory and name it in the report")
