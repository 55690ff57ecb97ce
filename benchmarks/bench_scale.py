"""Benchmark the backend agent at 1,000 and at 10,000 vifs on one host, in one run: the cost per
vif of connecting every vif, of a flip through ``xenoffload set``, and of an agent restart on the
connected fleet, and how the 10,000-vif figure compares with the 1,000-vif one.

Issue 20's question: is the agent linear in the number of vifs? Each size is its own world
(benchmarks/agentlab.py: the embedded xenstored, vifs laid out as libxl writes them, the scripted
frontend answering in bursts, the agent as users start it with ``--toggles dry-run``). 2,500
guests x 4 vifs put 2,500 names in the backend root's listing, past one reply (4096 bytes): the
agent, the frontend and the toolstack list it with DIRECTORY_PART, as C xenstored requires. The
server's own pipelined throughput is measured in the same run, against the same store sizes.
Requests per vif come from a traced world of each size (``--no-trace`` skips them).

``python benchmarks/bench_scale.py [--sizes 250,2500] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import agentlab as lab
import bench_agents as bench

PER_GUEST = 4


def scale_world(world: bench.World) -> dict[str, Any]:
    """Connect, the ``set`` flip, and a restart of the agent on the connected fleet."""
    figures: dict[str, Any] = {}
    socket = world.server.socket
    config = world.tmp / "policy.toml"
    config.write_text("")
    log = world.tmp / "agent.log"
    agent = lab.Agent(socket, config, log)
    try:
        timer = bench.Timer(world, agent.proc)
        world.goal("connected")
        bench.phase_end(world, "connect", figures, timer, world.done())
        figures["rss_kib"] = agent.proc.rss_kib()
        world.goal("key feature-csum-tx 1")
        timer = bench.Timer(world, agent.proc)
        figures["set_process_s"] = bench.xenoffload(socket, "set", *bench.SET, "--tx", "on",
                                                    "--rx", "on")
        bench.phase_end(world, "set_flip", figures, timer, world.done())
    finally:
        agent.close()
    agent = lab.Agent(socket, config, log)
    try:
        timer = bench.Timer(world, agent.proc)
        figures["restart_quiescent_s"], figures["restart_cpu_s"] = timer.quiet()
        world.server.mark("restart")
        figures["reconnects"] = lab.count_lines(agent.log_lines(), "lost XenStore",
                                                "rescan kept conflicting")
    finally:
        agent.close()
    return figures


def one_size(guests: int, trace: bool) -> dict[str, Any]:
    vifs = guests * PER_GUEST
    start = time.monotonic()
    figures = bench.in_world(guests, PER_GUEST, False, scale_world)
    figures["world_s"] = time.monotonic() - start
    if trace:
        traced = bench.in_world(guests, PER_GUEST, True, scale_world)
        for phase in ("connect", "set_flip", "restart"):
            counts = traced["requests"].get(phase, {}).get("agent", {})
            figures[f"{phase}_requests_per_vif"] = sum(counts.values()) / vifs
            figures[f"{phase}_requests"] = dict(counts)
    return figures


def per_vif(figures: dict[str, Any], vifs: int, empty: dict[str, float]) -> dict[str, float]:
    empty_cpu_s = empty["cpu_s"]
    return {
        "connect_ms_per_vif": figures["connect_s"] * 1000 / vifs,
        "connect_cpu_ms_per_vif": (figures["connect_cpu_s"] - empty_cpu_s) * 1000 / vifs,
        "connect_server_cpu_ms_per_vif": figures["connect_server_cpu_s"] * 1000 / vifs,
        "set_flip_ms_per_vif": figures["set_flip_s"] * 1000 / vifs,
        "set_flip_cpu_ms_per_vif": figures["set_flip_cpu_s"] * 1000 / vifs,
        "set_flip_server_cpu_ms_per_vif": figures["set_flip_server_cpu_s"] * 1000 / vifs,
        "set_flip_frontend_cpu_ms_per_vif": figures["set_flip_frontend_cpu_s"] * 1000 / vifs,
        "connect_frontend_cpu_ms_per_vif": figures["connect_frontend_cpu_s"] * 1000 / vifs,
        "set_process_ms_per_vif": figures["set_process_s"] * 1000 / vifs,
        "restart_ms_per_vif": figures["restart_quiescent_s"] * 1000 / vifs,
        "restart_cpu_ms_per_vif": (figures["restart_cpu_s"] - empty_cpu_s) * 1000 / vifs,
        "rss_kib_per_vif": (figures["rss_kib"] - empty["rss_kib"]) / vifs,
        **{key: figures[key] for key in ("connect_requests_per_vif",
                                          "set_flip_requests_per_vif",
                                          "restart_requests_per_vif") if key in figures},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250,2500", help="guests per world (x4 vifs)")
    parser.add_argument("--no-trace", action="store_true", help="skip the request counts")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    empty = bench.empty_agent()
    report: dict[str, Any] = {"load": load, "empty_agent": empty, "sizes": {}}
    for guests in sizes:
        vifs = guests * PER_GUEST
        raw = one_size(guests, not args.no_trace)
        report["sizes"][vifs] = {"raw": raw, "per_vif": per_vif(raw, vifs, empty)}
    if len(sizes) >= 2:
        small, large = (report["sizes"][g * PER_GUEST]["per_vif"] for g in sizes[:2])
        report["ratio_large_to_small"] = {key: large[key] / small[key]
                                          for key in small if small[key]}
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"bench_scale: sizes {', '.join(str(g * PER_GUEST) for g in sizes)} vifs; "
          f"load average at start {load}; empty agent {empty['cpu_s']:.2f} s CPU, "
          f"{empty['rss_kib']:.0f} KiB")
    keys = list(report["sizes"][sizes[0] * PER_GUEST]["per_vif"])
    header = "per vif".ljust(34) + "".join(f"{g * PER_GUEST:>12,}" for g in sizes)
    print(header + ("   ratio" if len(sizes) >= 2 else ""))
    for key in keys:
        row = key.ljust(34) + "".join(
            f"{report['sizes'][g * PER_GUEST]['per_vif'][key]:>12.3f}" for g in sizes)
        if "ratio_large_to_small" in report and key in report["ratio_large_to_small"]:
            row += f"{report['ratio_large_to_small'][key]:>8.2f}"
        print(row)
    for guests in sizes:
        raw = report["sizes"][guests * PER_GUEST]["raw"]
        print(f"{guests * PER_GUEST:,} vifs: connect {raw['connect_s']:.2f} s, set flip "
              f"{raw['set_flip_s']:.2f} s (set itself {raw['set_process_s']:.2f} s), restart "
              f"quiescent {raw['restart_quiescent_s']:.2f} s, reconnects {raw['reconnects']}; "
              f"server {raw['server']['read_per_s']:,.0f} READs/s, "
              f"{raw['server']['flip_txn_requests_per_s']:,.0f} flip-shaped requests/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
