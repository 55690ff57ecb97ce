"""Shared test helpers: system-test gating.

Tests that need root, network namespaces, ethtool or Debian's xenstore-utils call
:func:`require_system`. On a developer machine without them they skip with the reason; in CI
(``XENOFFLOAD_REQUIRE_SYSTEM=1``) a missing prerequisite is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_SYSTEM = os.environ.get("XENOFFLOAD_REQUIRE_SYSTEM") == "1"


def require_system(ok: bool, reason: str) -> None:
    """Skip the calling test (or fail it under XENOFFLOAD_REQUIRE_SYSTEM=1) unless ``ok``."""
    if ok:
        return
    if REQUIRE_SYSTEM:
        pytest.fail(f"system prerequisite missing under XENOFFLOAD_REQUIRE_SYSTEM=1: {reason}")
    pytest.skip(reason)


def require_root() -> None:
    require_system(os.geteuid() == 0, "needs root")


def require_tool(name: str, package: str) -> str:
    """Return the path of ``name``; skip/fail if it is missing (Debian package ``package``)."""
    path = shutil.which(name)
    require_system(path is not None, f"needs {name} (apt-get install {package})")
    assert path is not None
    return path


#: A test's ``record_property(SUMMARY, text)`` line, printed at the end of the run: it reaches
#: the terminal from a pytest-xdist worker too, where a print would not.
SUMMARY = "summary"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = [str(value)
             for outcome in ("passed", "failed")
             for report in terminalreporter.stats.get(outcome, [])
             for name, value in report.user_properties
             if name == SUMMARY]
    if lines:
        terminalreporter.section("summaries")
        for line in lines:
            terminalreporter.write_line(line)
