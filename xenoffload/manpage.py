"""``xenoffload man``: the manual page, roff generated from the command line parser.

Every command, option and help text comes from :func:`xenoffload.cli.build_parser`, so the
page cannot drift from the program; ``xenoffload man | man -l -`` reads it, and
``xenoffload man > xenoffload.1`` installs it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from xenoffload import __version__

__all__ = ["render_man"]


def _roff(text: str) -> str:
    """``text`` escaped for roff: backslashes, hyphens, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = [("\\&" + line) if line.startswith((".", "'")) else line
             for line in text.splitlines()]
    return "\n".join(lines)


def _option_label(action: argparse.Action) -> str:
    names = ", ".join(action.option_strings) or str(action.metavar or action.dest)
    if action.option_strings and action.nargs != 0:
        metavar = str(action.metavar) if action.metavar else (
            "{" + ",".join(map(str, action.choices)) + "}" if action.choices
            else action.dest.upper())
        names += f" {metavar}"
    elif not action.option_strings and action.choices:
        names = "{" + ",".join(map(str, action.choices)) + "}"
    return str(names)


def _options(actions: Iterable[argparse.Action]) -> list[str]:
    out: list[str] = []
    for action in actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        out += [".TP", f"\\fB{_roff(_option_label(action))}\\fR", _roff(action.help or "")]
    return out


def render_man(parser: argparse.ArgumentParser) -> str:
    """Return the roff source of xenoffload(1) for ``parser``."""
    lines = [f'.TH XENOFFLOAD 1 "" "xenoffload {__version__}" "User Commands"',
             ".SH NAME", "xenoffload \\- " + _roff(parser.description or ""),
             ".SH SYNOPSIS", "\\fBxenoffload\\fR [\\fB\\-v\\fR|\\fB\\-q\\fR] "
             "\\fICOMMAND\\fR [\\fIOPTIONS\\fR]", ".SH OPTIONS"]
    lines += _options(parser._actions)
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    lines.append(".SH COMMANDS")
    for name, sub in commands.choices.items():
        usage = " ".join(sub.format_usage().split())
        usage = usage.removeprefix("usage: ")
        lines += [f".SS {_roff(name)}", _roff(sub.description or helps.get(name) or ""),
                  ".PP", f"\\fB{_roff(usage)}\\fR"]
        lines += _options(sub._actions)
    lines += [".SH EXIT STATUS", _roff(parser.epilog or ""),
              ".SH SEE ALSO", "The documentation installed under share/doc/xenoffload "
              "(docs/cli.md: every command, option and exit code)."]
    return "\n".join(lines) + "\n"
