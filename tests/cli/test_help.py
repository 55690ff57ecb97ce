"""Every option says what it does, and the manual page is generated from the same parser."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import pytest

from xenoffload.cli import build_parser


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [("xenoffload", parser), *commands.choices.items()]


@pytest.mark.parametrize(("name", "parser"), _parsers(), ids=[n for n, _ in _parsers()])
def test_every_option_has_help(name: str, parser: argparse.ArgumentParser) -> None:
    missing = [action.option_strings or [action.dest] for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction)
               and not (action.help or "").strip()]
    assert not missing, f"{name}: options without help: {missing}"


def test_man_prints_a_page_with_every_command_and_option() -> None:
    done = subprocess.run([sys.executable, "-m", "xenoffload", "man"], capture_output=True,
                          text=True, timeout=60, check=True)
    page = done.stdout
    assert page.startswith(".TH XENOFFLOAD 1 ")
    for name, parser in _parsers()[1:]:
        assert f".SS {name.replace('-', chr(92) + '-')}\n" in page, name
        for action in parser._actions:
            for option in action.option_strings:
                assert option.replace("-", "\\-") in page, (name, option)
    assert "130 interrupted" in page  # the exit codes
    if shutil.which("groff"):
        rendered = subprocess.run(["groff", "-man", "-Tutf8", "-ww"], input=page,
                                  capture_output=True, text=True, timeout=60, check=True)
        assert "XENOFFLOAD(1)" in rendered.stdout
        assert not rendered.stderr.strip(), rendered.stderr


def test_the_shipped_manual_page_is_current() -> None:
    """docs/xenoffload.1 (installed as share/man/man1/xenoffload.1) is what ``xenoffload man``
    prints; regenerate it with ``python -m xenoffload man > docs/xenoffload.1``."""
    from pathlib import Path

    from xenoffload.manpage import render_man

    shipped = Path(__file__).resolve().parents[2] / "docs" / "xenoffload.1"
    assert shipped.read_text() == render_man(build_parser()), \
        "docs/xenoffload.1 is stale: python -m xenoffload man > docs/xenoffload.1"
