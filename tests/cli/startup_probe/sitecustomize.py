"""Test-only: makes ``python -m xenoffload``'s start-up observable, for the row "8: SIGINT at
start-up" of tests/cli/test_bad_inputs.py (this directory is its PYTHONPATH).

With ``XENOFFLOAD_TEST_STARTED=FILE`` in the environment, the import of ``xenoffload.cli`` (which
``xenoffload.__main__.run`` makes after installing its early Ctrl-C handler) creates FILE and
then holds the start-up for up to 30 s: a SIGINT sent once FILE exists lands while the command
is starting, however loaded the machine, where a fixed delay could land after the command ended.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import time
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

_STARTED = os.environ.get("XENOFFLOAD_TEST_STARTED")


class _HoldStartUp(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if name == "xenoffload.cli" and _STARTED:
            open(_STARTED, "w").close()
            time.sleep(30)  # the SIGINT ends it (Python retries a sleep only if no handler raises)
        return None  # the import itself goes on as usual


if _STARTED:
    sys.meta_path.insert(0, _HoldStartUp())
