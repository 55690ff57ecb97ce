"""Every module of the XenStore layer imports on its own, in a fresh interpreter (no cycles)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", [
    "xenoffload.xenstored.model", "xenoffload.xenstored.wire", "xenoffload.xenstored.dispatch",
    "xenoffload.xenstored.server", "xenoffload.store", "xenoffload.store.memory",
    "xenoffload.store.pyxs_store",
])
def test_module_imports_first(module: str) -> None:
    code = f"import sys, {module}; assert 'pyxs._server' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
