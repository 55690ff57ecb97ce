"""The pytest plugin: ``pytest -p xenoffload.conformance --conformance-impl backend:COMMAND``
turns every scenario of the catalogue into a test item for that implementation.

Options: ``--conformance-impl ROLE:COMMAND`` (repeatable, one per role),
``--conformance-scenario ID`` (repeatable), ``--conformance-mode full|companion|all``,
``--conformance-timeout SECONDS``, ``--conformance-grace SECONDS``,
``--conformance-require-observable``, ``--conformance-keep-workdir``. Without
``--conformance-impl`` the plugin adds nothing (it is also loaded through its entry point).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from xenoffload.conformance.command import DEFAULT_GRACE, command_timing, modes_for
from xenoffload.conformance.runner import (
    ERROR,
    FAIL,
    SKIP,
    SelectionError,
    Verdict,
    run_scenario,
    selected,
)
from xenoffload.conformance.scenarios import Scenario
from xenoffload.conformance.subjects import CommandSubject
from xenoffload.schema import Role

__all__ = ["ConformanceFailure", "ConformanceItem", "addoption", "collect"]


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


class ConformanceFailure(Exception):
    """A scenario failed; carries the verdict."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        super().__init__(verdict.explain())


class ConformanceItem(pytest.Item):
    """One scenario for one role of one implementation."""

    def __init__(self, *, scenario: Scenario, role: Role, subject: CommandSubject,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        self.role = role
        self.subject = subject

    def runtest(self) -> None:
        option = self.config.getoption
        verdict = run_scenario(
            self.scenario, self.role, self.subject,
            command_timing(option("conformance_timeout"), option("conformance_grace")),
            option("conformance_require_observable"), option("conformance_keep_workdir"))
        if verdict.outcome == SKIP:
            pytest.skip(f"{verdict.observed} ({verdict.expected})")
        if verdict.outcome in (FAIL, ERROR):
            raise ConformanceFailure(verdict)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        if isinstance(excinfo.value, ConformanceFailure):
            return excinfo.value.verdict.explain()
        return str(super().repr_failure(excinfo, style))

    def reportinfo(self) -> tuple[str, int | None, str]:
        return "xenoffload-conformance", None, self.name


def _parse_impl(text: str) -> tuple[Role, str]:
    role, sep, command = text.partition(":")
    if not sep or role not in ("backend", "frontend") or not command.strip():
        raise pytest.UsageError(f"--conformance-impl expects ROLE:COMMAND with ROLE backend or "
                                f"frontend, got {text!r}")
    return Role(role), command


def _items(session: pytest.Session, config: pytest.Config) -> Iterator[ConformanceItem]:
    ids = tuple(config.getoption("conformance_scenario"))
    for text in config.getoption("conformance_impl"):
        role, command = _parse_impl(text)
        subject = CommandSubject(command)
        try:
            scenarios = selected(role, modes_for(subject, config.getoption("conformance_mode")),
                                 ids)
        except SelectionError as error:
            raise pytest.UsageError(f"conformance: {error}") from error
        for scenario in scenarios:
            yield ConformanceItem.from_parent(
                session, name=f"conformance[{role.value}:{scenario.id}]", scenario=scenario,
                role=role, subject=subject)


def collect(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Append one item per scenario and ``--conformance-impl``."""
    items.extend(_items(session, config))
