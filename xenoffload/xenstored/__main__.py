"""Entry point: ``python -m xenoffload.xenstored ARGS`` is ``xenoffload xenstored ARGS``."""

import sys

from xenoffload.cli import main

sys.exit(main(["xenstored", *sys.argv[1:]]))
