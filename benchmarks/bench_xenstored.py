"""Benchmark of the embedded xenstored: READ and WRITE round trips per second.

Runs the server as its own process (``python -m xenoffload.xenstored``) and measures, in one run:
one PyxsStore client, 8 concurrent PyxsStore client processes, and a minimal raw-socket client
(blocking send/recv of one frame at a time) for comparison; prints a table with ratios, or JSON
with ``--json``. Usage: ``python benchmarks/bench_xenstored.py [--duration S] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from xenoffload.store.pyxs_store import PyxsStore
from xenoffload.xs.wire import HEADER, Op

CLIENTS = 8
PATH = "/bench/key"
VALUE = b"4"


def _raw_loop(socket_path: str, op: str, start_at: float, duration: float) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)
    if op == "READ":
        kind, payload = Op.READ, PATH.encode() + b"\0"
    else:
        kind, payload = Op.WRITE, PATH.encode() + b"\0" + VALUE
    done = 0
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + duration
    while time.time() < end:
        sock.sendall(HEADER.pack(kind, done, 0, len(payload)) + payload)
        header = b""
        while len(header) < HEADER.size:
            header += sock.recv(HEADER.size - len(header))
        length = HEADER.unpack(header)[3]
        body = b""
        while len(body) < length:
            body += sock.recv(length - len(body))
        done += 1
    sock.close()
    return done


def _pyxs_loop(socket_path: str, op: str, start_at: float, duration: float) -> int:
    store = PyxsStore(socket_path, timeout=30)
    done = 0
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + duration
    call = (lambda: store.read(PATH)) if op == "READ" else (lambda: store.write(PATH, VALUE))
    while time.time() < end:
        call()
        done += 1
    store.close()
    return done


def _worker(client: str, socket_path: str, op: str, start_at: float, duration: float) -> int:
    loop = _raw_loop if client == "raw" else _pyxs_loop
    return loop(socket_path, op, start_at, duration)


def _measure(pool: ProcessPoolExecutor, client: str, socket_path: str, op: str, count: int,
             duration: float) -> float:
    start_at = time.time() + 1.0
    futures = [pool.submit(_worker, client, socket_path, op, start_at, duration)
               for _ in range(count)]
    return sum(future.result() for future in futures) / duration


def run(duration: float) -> dict[str, float]:
    """Return round trips per second for every (client kind, clients, op) combination."""
    tmp = tempfile.mkdtemp(prefix="xsbench", dir="/tmp")
    socket_path = f"{tmp}/socket"
    server = subprocess.Popen([sys.executable, "-m", "xenoffload.xenstored", "--socket",
                               socket_path])
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(socket_path):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("embedded xenstored did not start")
            time.sleep(0.02)
        with PyxsStore(socket_path) as store:
            store.write(PATH, VALUE)
        results: dict[str, float] = {}
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(CLIENTS, mp_context=context) as pool:
            for op in ("READ", "WRITE"):
                for client, count in (("raw", 1), ("pyxs", 1), ("pyxs", CLIENTS)):
                    key = f"{client} x{count} {op}"
                    results[key] = _measure(pool, client, socket_path, op, count, duration)
        return results
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=2.0,
                        help="seconds per measurement (default 2)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    results = run(args.duration)
    ratios = {}
    for op in ("READ", "WRITE"):
        raw, single, many = (results[f"raw x1 {op}"], results[f"pyxs x1 {op}"],
                             results[f"pyxs x{CLIENTS} {op}"])
        ratios[f"pyxs/raw {op}"] = single / raw
        ratios[f"pyxs x{CLIENTS}/x1 {op}"] = many / single
    if args.json:
        print(json.dumps({"round_trips_per_s": results, "ratios": ratios,
                          "cpus": os.cpu_count()}, indent=2))
        return 0
    print(f"{'client':<20}{'round trips/s':>15}{'us per trip':>14}")
    for key, rate in results.items():
        print(f"{key:<20}{rate:>15,.0f}{1e6 / rate:>14.1f}")
    print()
    for key, ratio in ratios.items():
        print(f"{key:<20}{ratio:>15.2f}")
    print(f"(cpus: {os.cpu_count()}; server and clients share them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
