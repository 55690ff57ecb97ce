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

from xenoffload.conformance.command import command_timing, modes_for
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

__all__ = ["ConformanceFailure", "ConformanceItem", "collect"]


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
