"""``python -m xenoffload``: the ``xenoffload`` command."""

from xenoffload.cli import main

raise SystemExit(main())
