"""Importing xenoffload has no effects: a toolstack that installs it, and every pytest run in
that environment (the conformance plugin's ``pytest11`` entry point), pays for nothing it does
not use. Checked in fresh interpreters."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_any_module_opens_no_descriptor_and_starts_no_thread(tmp_path: Path) -> None:
    out = _run("""
        import importlib, json, os, pkgutil, threading
        import xenoffload
        names = sorted(m.name for m in pkgutil.walk_packages(xenoffload.__path__, "xenoffload.")
                       if not m.name.endswith("__main__"))
        effects = []
        for name in names:
            fds, threads = os.listdir("/proc/self/fd"), threading.active_count()
            importlib.import_module(name)
            if len(os.listdir("/proc/self/fd")) != len(fds) or \\
                    threading.active_count() != threads:
                effects.append(name)
        print(json.dumps({"modules": len(names), "effects": effects}))
    """, tmp_path)
    found = json.loads(out)
    assert found["modules"] > 60, found
    assert found["effects"] == [], found


def test_the_pytest_plugin_loads_nothing_of_the_suite_until_asked(tmp_path: Path) -> None:
    """``-p xenoffload.conformance`` is what the entry point does in every pytest run: the
    options are there, the suite (runner, subjects, the embedded xenstored...) is not
    imported without ``--conformance-impl``."""
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    out = _run(f"""
        import json, sys
        import pytest
        code = pytest.main(["-q", "-p", "xenoffload.conformance", "-p", "no:cacheprovider",
                            {str(tmp_path)!r}])
        print(json.dumps({{"code": int(code), "loaded": sorted(
            m for m in sys.modules if m.startswith("xenoffload"))}}))
    """, tmp_path)
    found = json.loads(out.splitlines()[-1])
    assert found["code"] == 0, out
    assert found["loaded"] == ["xenoffload", "xenoffload.conformance",
                               "xenoffload.conformance.options"], found
    help_text = _run("""
        import pytest
        pytest.main(["-p", "xenoffload.conformance", "--help"])
    """, tmp_path)
    assert "--conformance-impl" in help_text
