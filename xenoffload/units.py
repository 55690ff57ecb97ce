"""The files that run xenoffload as part of a system, rendered for this installation.

Two systemd units (``xenoffload-backend.service`` for dom0 or a driver domain,
``xenoffload-guest.service`` for guests) and the vif hotplug wrapper
(``vif-bridge-xenoffload``) ship as templates in the package (``unit-files/``). Their command
is this installation's own entry point, never a guessed ``/usr/local/bin``: the ``xenoffload``
script installed beside this interpreter, else ``<python> -m xenoffload``.
``xenoffload units --output DIR`` writes them.
"""

from __future__ import annotations

import os
import shlex
import sys
import sysconfig
from importlib import resources
from pathlib import Path

__all__ = ["TEMPLATES", "entry_point", "doc_dir", "render", "write_files"]

#: Rendered name -> (template in the package, file mode).
TEMPLATES = {
    "xenoffload-backend.service": ("xenoffload-backend.service.in", 0o644),
    "xenoffload-guest.service": ("xenoffload-guest.service.in", 0o644),
    "vif-bridge-xenoffload": ("vif-bridge-xenoffload.in", 0o755),
}


def entry_point() -> str:
    """Return the command that runs this installation's xenoffload: the console script in
    this interpreter's scripts directory if it is there, else ``<python> -m xenoffload``."""
    script = Path(sysconfig.get_path("scripts"), "xenoffload")
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    return f"{shlex.quote(sys.executable)} -m xenoffload"


def doc_dir() -> str:
    """Return where the wheel installs the documentation (``<prefix>/share/doc/xenoffload``)."""
    return str(Path(sysconfig.get_path("data"), "share", "doc", "xenoffload", "docs"))


def render(name: str, command: str | None = None) -> str:
    """Return file ``name`` of :data:`TEMPLATES` for ``command`` (default
    :func:`entry_point`). Raises KeyError for an unknown name."""
    template, _mode = TEMPLATES[name]
    text = resources.files("xenoffload").joinpath("unit-files", template).read_text()
    return text.replace("@XENOFFLOAD@", command or entry_point()).replace("@DOCDIR@",
                                                                          doc_dir())


def write_files(directory: Path, command: str | None = None) -> list[Path]:
    """Write every file of :data:`TEMPLATES` into ``directory`` (which must exist); return
    their paths. Raises OSError."""
    written = []
    for name, (_template, mode) in TEMPLATES.items():
        path = directory / name
        path.write_text(render(name, command))
        path.chmod(mode)
        written.append(path)
    return written
