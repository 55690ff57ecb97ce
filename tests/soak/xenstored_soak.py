"""Soak: issue 13's attacks all at once against the embedded xenstored for a minute, while dom0
and another guest keep reading; reports the server's RSS, the bystanders' latency percentiles
and every error. ``tox -e soak`` runs it (not part of the default ``tox`` run).

The server runs as its own process with 1,024 file descriptors, like the issue's probe. Each
attack is a hostile guest of its own (domains 1 and 3 to 6; a guest's own attacks would only
compete for its own connection slots) running in its own process, over and over until the time
is up: a watcher with 129 watches of 3.9 KB tokens that never reads while another connection
writes; 20 connections pipelining READs of a 1.9 KB node without reading; 1,100 connections
held open; 11 concurrent transactions each creating 900 nodes; random bytes on fresh
connections. The bystanders (dom0 and guest 2,
on kept connections, and every tenth probe on a fresh one) time a READ round trip every 20 ms.

Exit status 0 when the server stayed within the bounds (RSS less than 64 MiB above idle, no
bystander error, 90% of answers under 50 ms), 1 otherwise. Usage:
``python tests/soak/xenstored_soak.py [--duration SECONDS] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the attack helpers

from xenstored.attacks import (
    Bystanders,
    Held,
    ServerProcess,
    connection_flood,
    owned_nodes,
    raised_fd_limit,
    reply_flood,
    transaction_flood,
    watch_flood,
)

from xenoffload.store.pyxs_store import PyxsStore

RSS_BOUND_MIB = 64
LATENCY_BOUND = 0.050


def _round(name: str, server: ServerProcess, deadline: float,
           results: multiprocessing.Queue[Any], step: Callable[[Held], dict[str, int]]) -> None:
    """Repeat one attack until ``deadline``; put its totals (and errors) on ``results``."""
    totals: dict[str, int] = {"rounds": 0}
    errors: list[str] = []
    with raised_fd_limit(4096):
        while time.monotonic() < deadline:
            held = Held()
            try:
                for key, value in step(held).items():
                    totals[key] = totals.get(key, 0) + value
                totals["rounds"] += 1
                time.sleep(1.0)  # hold the hostile state while the bystanders probe
            except Exception as err:
                errors.append(f"{name}: {err!r}")
                time.sleep(0.2)
            finally:
                held.close()
    results.put((name, totals, errors[:5], len(errors)))


#: Which guest runs which attack.
WATCHER, READER, CONNECTOR, TRANSACTOR, FUZZER = 1, 3, 4, 5, 6


def _watches(server: ServerProcess) -> Callable[[Held], dict[str, int]]:
    def step(held: Held) -> dict[str, int]:
        watch_flood(server, held, writes=200, guest=WATCHER)(threading.Event())
        with PyxsStore(server.guest_sockets[WATCHER], timeout=30) as guest:
            for index in range(200):  # stay clear of the node quota for the next round
                guest.rm(f"data/n{index}")
        return {"writes": 200}

    return step


def _replies(server: ServerProcess) -> Callable[[Held], dict[str, int]]:
    def step(held: Held) -> dict[str, int]:
        reply_flood(server, held, connections=20, reads=3000, guest=READER)(threading.Event())
        return {"connections": len(held.sockets)}

    return step


def _connections(server: ServerProcess) -> Callable[[Held], dict[str, int]]:
    def step(held: Held) -> dict[str, int]:
        connection_flood(server, held, connections=1100, guest=CONNECTOR)(threading.Event())
        return {"opened": len(held.sockets)}

    return step


def _transactions(server: ServerProcess) -> Callable[[Held], dict[str, int]]:
    def step(held: Held) -> dict[str, int]:
        attack, outcomes = transaction_flood(server, transactions=11, nodes=900,
                                             guest=TRANSACTOR)
        attack(threading.Event())
        with PyxsStore(server.guest_sockets[TRANSACTOR], timeout=30) as guest:
            for number in range(11):
                guest.rm(f"data/p{number}")
        return {"committed": outcomes.count("OK"), "enospc": outcomes.count("ENOSPC"),
                "eagain": outcomes.count("EAGAIN")}

    return step


def _garbage(server: ServerProcess) -> Callable[[Held], dict[str, int]]:
    generator = random.Random(13)

    def step(held: Held) -> dict[str, int]:
        sent = 0
        for _ in range(200):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2.0)
                try:
                    sock.connect(server.guest_sockets[FUZZER])
                    sock.sendall(generator.randbytes(generator.randint(1, 600)))
                    sent += 1
                except OSError:
                    pass  # refused (the connection flood holds the socket's slots): fine
        return {"fuzzed": sent}

    return step


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def soak(duration: float) -> dict[str, Any]:
    """Run the soak; return its report."""
    sockdir = tempfile.mkdtemp(prefix="xsoak", dir="/tmp")
    server = ServerProcess(sockdir, nofile=1024,
                           attackers=(WATCHER, READER, CONNECTOR, TRANSACTOR, FUZZER))
    try:
        server.lay_out_domains()
        time.sleep(0.5)
        idle = server.rss_kib()
        deadline = time.monotonic() + duration
        results: multiprocessing.Queue[Any] = multiprocessing.Queue()
        context = multiprocessing.get_context("fork")
        attackers = [context.Process(target=_round,
                                     args=(name, server, deadline, results, make(server)),
                                     name=name, daemon=True)
                     for name, make in (("watch-flood", _watches), ("reply-flood", _replies),
                                        ("connection-flood", _connections),
                                        ("transaction-flood", _transactions),
                                        ("garbage", _garbage))]
        for process in attackers:
            process.start()
        bystanders = Bystanders(server)
        fresh = Bystanders(server, fresh=True)
        latencies: list[float] = []
        errors: list[str] = []
        peak = idle
        probes = 0
        while time.monotonic() < deadline:
            got, failed = (fresh if probes % 10 == 9 else bystanders).probe()
            latencies += got
            errors += failed
            peak = max(peak, server.rss_kib())
            probes += 1
            time.sleep(0.02)
        bystanders.close()
        fresh.close()
        attacks = {}
        for _ in attackers:
            name, totals, attack_errors, error_count = results.get(timeout=120)
            attacks[name] = {**totals, "errors": error_count, "first_errors": attack_errors}
        for process in attackers:
            process.join(30)
        return {
            "duration_s": duration,
            "idle_rss_mib": round(idle / 1024, 1),
            "peak_rss_mib": round(peak / 1024, 1),
            "rss_growth_mib": round((peak - idle) / 1024, 1),
            "probes": len(latencies),
            "latency_ms": {name: round(1000 * percentile(latencies, fraction), 2)
                           for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99),
                                                  ("max", 1.0))},
            "bystander_errors": len(errors),
            "first_bystander_errors": errors[:5],
            "transactor_nodes_owned": owned_nodes(server, TRANSACTOR),
            "server_log_bytes": server.log_bytes(),
            "server_alive": server.process.poll() is None,
            "attacks": attacks,
        }
    finally:
        server.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


def within_bounds(report: dict[str, Any]) -> bool:
    return (report["server_alive"] and report["bystander_errors"] == 0
            and report["rss_growth_mib"] < RSS_BOUND_MIB
            and report["latency_ms"]["p90"] < 1000 * LATENCY_BOUND
            and report["transactor_nodes_owned"] <= 1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = soak(args.duration)
    ok = within_bounds(report)
    if args.json:
        print(json.dumps({**report, "within_bounds": ok}, indent=2))
        return 0 if ok else 1
    print(f"xenstored soak, {args.duration:.0f} s, all attacks at once "
          f"({os.cpu_count()} cpus, shared with the attackers and bystanders)")
    print(f"server RSS: idle {report['idle_rss_mib']} MiB, peak {report['peak_rss_mib']} MiB "
          f"(+{report['rss_growth_mib']} MiB; bound {RSS_BOUND_MIB})")
    latency = report["latency_ms"]
    print(f"bystander READ latency over {report['probes']} answers (dom0 and guest 2): "
          f"p50 {latency['p50']} ms, p90 {latency['p90']} ms, p99 {latency['p99']} ms, "
          f"max {latency['max']} ms")
    print(f"bystander errors: {report['bystander_errors']} {report['first_bystander_errors']}")
    print(f"the transaction flooder owns {report['transactor_nodes_owned']} nodes "
          f"(quota 1000); "
          f"server log {report['server_log_bytes']} bytes")
    for name, totals in report["attacks"].items():
        print(f"  {name}: {totals}")
    print("within bounds" if ok else "OUT OF BOUNDS")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
