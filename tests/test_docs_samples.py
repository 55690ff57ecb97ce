"""The code samples in docs/ run, so they cannot drift from the code.

Convention: a fenced block is a sample the tests run or load; an indented block is an
illustration (commands for a real Xen host, install steps) and is not run.

* getting-started.md: its ``sh`` blocks, in order, are one bash script, run as written (``/tmp/``
  becomes the test's directory, ``xenoffload`` and ``python3`` this checkout's);
* every ``toml`` block in docs/ is a policy file that loads;
* every ``python`` block in docs/ runs, against the embedded XenStore server;
* cli.md's ``show`` table header is the one ``show`` prints, and cli.md names every command and
  option the parser has.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_root, require_tool

from xenoffload.cli import build_parser
from xenoffload.policy import load_policy
from xenoffload.show import render_table

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def blocks(path: Path, kind: str) -> list[str]:
    return [body for info, body in _FENCE.findall(path.read_text()) if info == kind]


def _bin_dir(tmp: Path) -> Path:
    """A directory with ``xenoffload`` and ``python3`` that run this checkout's package with
    this interpreter, however it is installed: scripts that exec ``sys.executable`` by the
    path it was started as (a symlink to it would not find a virtual environment's packages:
    Python looks for ``pyvenv.cfg`` beside the path it was started as)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    python = shlex.quote(sys.executable)
    for name, command in (("xenoffload", f"{python} -m xenoffload"), ("python3", python)):
        shim = bin_dir / name
        shim.write_text(f"#!/bin/sh\nexec {command} \"$@\"\n")
        shim.chmod(0o755)
    return bin_dir


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, PATH=f"{_bin_dir(tmp)}:{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT),
                                                      os.environ.get("PYTHONPATH")) if p))
    env.pop("XENSTORED_PATH", None)
    return env


def test_getting_started_runs_as_written(tmp_path: Path) -> None:
    script = "\n".join(blocks(ROOT / "docs" / "getting-started.md", "sh"))
    assert "xenoffload xenstored" in script and "xenoffload set" in script
    work = tmp_path / "w"
    work.mkdir()
    # A safety net only: the script stops what it started itself (step 7).
    wrapped = "set -eu\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + \
        script.replace("/tmp/", f"{work}/")
    done = subprocess.run(["bash", "-c", wrapped], capture_output=True, text=True,
                          timeout=180, check=False, env=_env(tmp_path), cwd=work)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "OK: eth1 on xenpriv0" in done.stdout  # the demo
    assert re.search(r"^1/0  \S+ +\S+  xenpriv0  Connected/Connected  tx 4\+6 rx 4\+6",
                     done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^set /local/domain/0/xenoffload/policy/vif/[0-9a-f-]{36}/0$", done.stdout,
                     re.MULTILINE), done.stdout
    assert '"agreed": true' in done.stdout
    assert not (work / "xs.sock").exists()  # the server was stopped and removed its socket


@pytest.mark.parametrize("path", [p for p in DOCS if blocks(p, "toml")], ids=lambda p: p.name)
def test_toml_samples_are_policies_that_load(path: Path, tmp_path: Path) -> None:
    for index, body in enumerate(blocks(path, "toml")):
        sample = tmp_path / f"{path.stem}-{index}.toml"
        sample.write_text(body)
        load_policy(sample)


def test_integration_python_sample_runs(tmp_path: Path) -> None:
    """The Python API sample of integration.md, as written, in a network namespace holding a
    veth named vif3.1, against the embedded server with a guest agent as the frontend."""
    require_root()
    require_tool("ip", "iproute2")
    (sample,) = blocks(ROOT / "docs" / "integration.md", "python")
    from e2e.lab import lab_context

    with lab_context(tmp_path, with_netns=True) as lab:
        lab.add_guest(3, ["xenbr0", "xenpriv0"], name="nfs")
        (tmp_path / "policy.toml").write_text(
            '[[rule]]\nbridge = "xenpriv0"\nto-guest = true\nfrom-guest = true\n')
        lab.guest_process(3)
        env = dict(_env(tmp_path), XENSTORED_PATH=lab.socket)
        done = subprocess.run(["ip", "netns", "exec", lab.netns[0], sys.executable, "-c",
                               sample], capture_output=True, text=True, timeout=60,
                              check=False, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "to-guest ipv4+ipv6, from-guest ipv4+ipv6"


#: Fenced samples no test runs yet, with why. A new fenced sample must be run by a test above
#: or listed here.
NOT_RUN = {
    ("toggles.md", "python"): "signatures and a sample that switches a host device; the toggles "
                              "tests cover them",
    ("toggles.md", "sh"): "tc and ethtool commands of the Xen lab's proof, run there",
    ("xenstored.md", "python"): "an illustration with `...`; the xenstored tests cover it",
    ("xenstored.md", "sh"): "the xenstored command line is moving (xenstored readiness)",
    ("xenlab.md", "sh"): "boots the real Xen lab (tox -e xenlab)",
}


def test_every_fenced_sample_is_run_or_listed() -> None:
    found = {(p.name, kind) for p in DOCS for kind in ("python", "sh") if blocks(p, kind)}
    run = {("integration.md", "python"), ("getting-started.md", "sh")}
    assert found - run == set(NOT_RUN)


def test_cli_md_show_header_is_what_show_prints() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    shown = text.split("<!-- show-table -->\n", 1)[1].splitlines()[0]
    assert re.split(r"\s{2,}", shown.strip()) == re.split(r"\s{2,}", render_table([]))


def test_cli_md_names_every_command_and_option() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    assert "`-q`" in text.split("## Exit codes")[0]  # with -v, in the preamble
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        assert f"`{name}" in text, name
        if name == "xenstored":
            continue
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and option not in ("--help", "--verbose",
                                                              "--quiet"):
                    row = next(line for line in text.splitlines()
                               if line.startswith(f"| `{name} "))
                    assert option in row, f"{name} {option}"


def test_integration_md_api_table_names_are_where_it_says() -> None:
    """Each name in docs/integration.md's API table can be imported from the module its row
    names beside it (``name(...)``, ``Name`` (``xenoffload.module``))."""
    import importlib

    text = (ROOT / "docs" / "integration.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| `")]
    assert table
    checked = 0
    for line in table:
        first_cell = line.split(" | ")[0]
        for names, module in re.findall(r"((?:`[A-Za-z_][^`]*`(?:, )?)+) \(`(xenoffload[\w.]*)`\)",
                                        first_cell):
            imported = importlib.import_module(module)
            for name in re.findall(r"`([A-Za-z_]\w*)", names):
                assert hasattr(imported, name), f"{name} is not in {module}"
                checked += 1
    assert checked >= 15, checked
