"""Entry point: ``python -m xenoffload.xenstored`` runs the embedded xenstored in the foreground."""

import sys

from xenoffload.xenstored.server import serve_main

sys.exit(serve_main())
