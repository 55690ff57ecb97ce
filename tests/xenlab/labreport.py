"""The module fixture every lab test module shares: boot once (or re-read an earlier run's
report), print the run's summary past pytest's capture, return the report."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import xenlab  # tests/xenlab/xenlab.py, beside this file

Report = dict[str, Any]


def module_report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                  *, saved_env: str, workdir_env: str, tmp_name: str, opt_in: str,
                  run: Callable[[Path, Path], Report],
                  lines: Callable[[Report], Sequence[str]] = lambda report: (),
                  label: str = "xenlab") -> Report:
    """Return the report of ``run(workdir, cache)``, or of the earlier run whose report.json
    ``$saved_env`` names (developing assertions); the workdir is ``$workdir_env`` or a new
    temporary ``tmp_name``. Prints ``label``'s workdir, the summary and ``lines(report)``."""
    saved = os.environ.get(saved_env)
    if saved:
        result: Report = json.loads(Path(saved).read_text())
        workdir = Path(result["workdir"])
    else:
        if os.geteuid() != 0:
            pytest.fail(f"{opt_in} but not root: the lab needs root")
        chosen = os.environ.get(workdir_env)
        workdir = Path(chosen) if chosen else tmp_path_factory.mktemp(tmp_name)
        cache = Path(os.environ.get("XENOFFLOAD_XENLAB_CACHE", str(xenlab.DEFAULT_CACHE)))
        result = run(workdir, cache)
    text = "\n".join(["", f"{label} workdir: {workdir}", xenlab.summary(result),
                      *lines(result), ""])
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(text, flush=True)
    else:
        print(text, flush=True)
    return result
