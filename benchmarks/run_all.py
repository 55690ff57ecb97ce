"""Run every ``benchmarks/bench_*.py`` script in turn and print their tables.

Each script runs in its own interpreter (so one's imports, threads and memory do not colour
the next one's figures) with the arguments given after ``--``; a script that fails is reported
and the others still run. Exit status: 0 if every script succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts(only: list[str]) -> list[Path]:
    """Return the benchmark scripts, sorted by name (``only``: name fragments to keep)."""
    found = sorted(HERE.glob("bench_*.py"))
    return [path for path in found if not only or any(part in path.stem for part in only)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="run only scripts whose name contains this")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds each script may take (default 1800)")
    args, extra = parser.parse_known_args(argv)
    extra = [arg for arg in extra if arg != "--"]
    failed = []
    for path in scripts(args.only):
        print(f"=== {path.name} {' '.join(extra)}".rstrip(), flush=True)
        start = time.monotonic()
        try:
            done = subprocess.run([sys.executable, str(path), *extra], timeout=args.timeout,
                                  check=False)
            status = done.returncode
        except subprocess.TimeoutExpired:
            status = -1
            print(f"{path.name}: timed out after {args.timeout:.0f} s")
        print(f"=== {path.name}: exit {status} in {time.monotonic() - start:.1f} s\n",
              flush=True)
        if status != 0:
            failed.append(path.name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
