"""Fact collector and traffic tool that the Xen lab's scenario scripts run in dom0 and the guest.

Every subcommand prints its findings as ``@@XO {json}`` lines on stdout (see lib.sh); the host
side (tests/xenlab/xenlab.py) parses them. Only the standard library is used, and every network
operation is bounded by a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing

if TYPE_CHECKING:  # annotations only (strings at run time): typing costs an import under TCG
    from collections.abc import Sequence
    from typing import Any

# Under TCG every module imported costs; hashlib, random, socket, subprocess, shlex and threading
# are imported by the subcommands that need them, not at start-up.

MARK = "@@XO "
# ethtool -k lines worth reporting (checksum, scatter-gather and segmentation offloads).
ETHTOOL_FEATURES = (
    "rx-checksumming",
    "tx-checksumming",
    "tx-checksum-ipv4",
    "tx-checksum-ip-generic",
    "tx-checksum-ipv6",
    "scatter-gather",
    "tcp-segmentation-offload",
    "tx-tcp-segmentation",
    "tx-tcp6-segmentation",
    "generic-segmentation-offload",
    "generic-receive-offload",
)
# Standard-library modules the xenoffload agents rely on; pyinfo checks each imports.
REQUIRED_STDLIB = (
    "asyncio",
    "argparse",
    "logging",
    "json",
    "socket",
    "ctypes",
    "struct",
    "tomllib",
    "selectors",
    "subprocess",
    "hashlib",
)


def domain() -> str:
    """Return ``dom0`` or ``guest`` (from XO_DOMAIN, set by the init scripts)."""
    return os.environ.get("XO_DOMAIN", "unknown")


def fact_line(scenario: str, fact: str, **fields: Any) -> str:
    """Return one fact line (``@@XO {json}``)."""
    record = {"scenario": scenario, "domain": domain(), "fact": fact, **fields}
    return MARK + json.dumps(record, separators=(",", ":"), sort_keys=True)


def emit(scenario: str, fact: str, **fields: Any) -> None:
    """Print one fact line."""
    print(fact_line(scenario, fact, **fields), flush=True)


def parse_ethtool_k(text: str) -> dict[str, str]:
    """Return ``feature -> state`` (``on``, ``off [fixed]``, ...) for :data:`ETHTOOL_FEATURES`."""
    features: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, state = line.strip().partition(":")
        if sep and name in ETHTOOL_FEATURES:
            features[name] = state.strip()
    return features


def cmd_ethtool(args: argparse.Namespace) -> int:
    """Emit the offload features of each interface (``ethtool -k``).

    With --saved DIR, read what ``xo_ethtool_save`` stored there (DIR/IFACE.out, DIR/IFACE.rc)
    instead of running ethtool now: the shell records the moment, one Python start reports many.
    """
    import subprocess

    rc = 0
    for iface in args.ifaces:
        if args.saved:
            base = Path(args.saved) / iface
            try:
                code = int(Path(f"{base}.rc").read_text().strip() or 1)
                out = Path(f"{base}.out").read_text(errors="replace")
            except (OSError, ValueError) as exc:
                code, out = 1, f"not saved: {exc}"
            stdout, stderr = (out, "") if code == 0 else ("", out)
        else:
            proc = subprocess.run(
                ["/usr/sbin/ethtool", "-k", iface], capture_output=True, text=True, timeout=30,
                check=False,
            )
            code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        if code != 0:
            rc = 1
        emit(args.scenario, "ethtool", iface=iface, label=args.label, rc=code,
             features=parse_ethtool_k(stdout), error=stderr.strip()[:200])
    return rc


_XSLS_RE = re.compile(r'^(?P<path>\S+) = "(?P<value>.*)"(?:\s+\((?P<perms>[^)]*)\))?$')


def cmd_xsdir(args: argparse.Namespace) -> int:
    """Emit every key under a XenStore directory with its value and permissions.

    With --saved FILE, parse what ``xo_xsdir_save`` stored (FILE, FILE.rc) instead of running
    ``xenstore-ls`` now.
    """
    if args.saved:
        try:
            code = int(Path(args.saved + ".rc").read_text().strip() or 1)
            stdout = Path(args.saved).read_text(errors="replace")
        except (OSError, ValueError):
            code, stdout = 1, ""
    else:
        import subprocess

        proc = subprocess.run(
            ["xenstore-ls", "-f", "-p", args.path], capture_output=True, text=True, timeout=30,
            check=False,
        )
        code, stdout = proc.returncode, proc.stdout
    keys: dict[str, list[str]] = {}
    prefix = args.path.rstrip("/") + "/"
    for line in stdout.splitlines():
        match = _XSLS_RE.match(line.strip())
        if match and match["path"].startswith(prefix):
            keys[match["path"][len(prefix):]] = [match["value"], match["perms"] or ""]
    emit(args.scenario, "xsdir", path=args.path, label=args.label, rc=code, keys=keys)
    return 0 if code == 0 else 1


def cmd_pyinfo(args: argparse.Namespace) -> int:
    """Emit whether the required stdlib modules and the xenoffload package import here."""
    import importlib

    failed: dict[str, str] = {}
    started = time.monotonic()
    for name in (*REQUIRED_STDLIB, "attrs", "pyxs", "xenoffload"):
        try:
            importlib.import_module(name)
        except Exception as exc:  # any failure is a finding to report, not to raise
            failed[name] = f"{type(exc).__name__}: {exc}"[:200]
    import_secs = round(time.monotonic() - started, 3)
    versions: dict[str, str] = {}
    for name in ("pyxs", "xenoffload"):  # attrs.__version__ would need importlib.metadata
        module = sys.modules.get(name)
        versions[name] = str(getattr(module, "__version__", "?")) if module else "missing"
    xo_file = getattr(sys.modules.get("xenoffload"), "__file__", None)
    emit(args.scenario, "python", version=sys.version.split()[0], executable=sys.executable,
         failed=failed, versions=versions, import_secs=import_secs,
         xenoffload_file=xo_file or "")
    return 1 if failed else 0


def payload(nbytes: int, seed: int) -> bytes:
    """Return the deterministic test payload of ``nbytes`` bytes for ``seed``."""
    import random

    return random.Random(seed).randbytes(nbytes)


def cmd_tcp_send(args: argparse.Namespace) -> int:
    """Connect (retrying until the deadline) and send the payload; emit what was sent."""
    import hashlib
    import socket

    data = payload(args.bytes, args.seed)
    deadline = time.monotonic() + args.timeout
    error = ""
    started = time.monotonic()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((args.host, args.port), timeout=5) as conn:
                conn.settimeout(max(1.0, deadline - time.monotonic()))
                conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)  # wait for the receiver to close: everything was delivered
            error = ""
            break
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.3)
    emit(args.scenario, "tcp-send", label=args.label, host=args.host, port=args.port,
         bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), ok=not error, error=error,
         secs=round(time.monotonic() - started, 3))
    return 0 if not error else 1


def write_result(path: str, record: dict[str, Any], args: argparse.Namespace,
                 fact: str) -> None:
    """Write a receiver's result atomically: PATH (the record) and PATH.fact (the fact line the
    shell prints with ``xo_results``, without starting Python again)."""
    line = fact_line(args.scenario, fact, label=args.label, ok=not record.get("error"), **record)
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(record, sort_keys=True))
    tmp.rename(path)
    tmp.write_text(line + "\n")
    tmp.rename(path + ".fact")


def cmd_tcp_recv(args: argparse.Namespace) -> int:
    """Accept one connection, read until EOF; write bytes and sha256 to --out."""
    import hashlib
    import socket

    digest = hashlib.sha256()
    total = 0
    error = ""
    started = time.monotonic()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind((args.bind, args.port))
            srv.listen(1)
            srv.settimeout(args.timeout)
            Path(args.out + ".listening").touch()
            conn, _peer = srv.accept()
            with conn:
                conn.settimeout(args.timeout)
                while chunk := conn.recv(65536):
                    digest.update(chunk)
                    total += len(chunk)
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    write_result(args.out, {"bytes": total, "sha256": digest.hexdigest(), "error": error,
                            "secs": round(time.monotonic() - started, 3), "port": args.port},
                 args, "tcp-recv")
    return 0 if not error else 1


def cmd_udp_send(args: argparse.Namespace) -> int:
    """Send --count datagrams of --size bytes; emit how many went out."""
    import socket

    sent = 0
    error = ""
    data = payload(args.size, args.seed)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(args.count):
            try:
                sock.sendto(data, (args.host, args.port))
                sent += 1
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
            if sent == 1 and args.started:
                Path(args.started).touch()  # the stream runs: a caller may now act on it
            time.sleep(args.interval)
    emit(args.scenario, "udp-send", label=args.label, host=args.host, port=args.port,
         datagrams=sent, size=args.size, error=error)
    return 0 if not error else 1


def cmd_udp_recv(args: argparse.Namespace) -> int:
    """Receive datagrams until --count arrived or --timeout passed; write the count to --out."""
    import socket

    received = 0
    intact = 0
    expected = payload(args.size, args.seed)
    deadline = time.monotonic() + args.timeout
    error = ""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((args.bind, args.port))
            Path(args.out + ".listening").touch()
            while received < args.count and time.monotonic() < deadline:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    break
                received += 1
                intact += data == expected
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    write_result(args.out, {"datagrams": received, "intact": intact, "port": args.port,
                            "error": error}, args, "udp-recv")
    return 0


def cmd_recv(args: argparse.Namespace) -> int:
    """Run several receivers at once in one process (one thread each; one Python start).

    Items are ``tcp|udp:BIND:PORT:LABEL:OUT``; each behaves as tcp-recv / udp-recv with that
    --bind, --port, --label and --out (and this command's --timeout, --count, --size, --seed).
    """
    import threading

    threads = []
    results: list[int] = []
    for item in args.items:
        proto, bind, port, label, out = item.split(":", 4)
        sub = argparse.Namespace(**{**vars(args), "bind": bind, "port": int(port),
                                    "label": label, "out": out})
        func = {"tcp": cmd_tcp_recv, "udp": cmd_udp_recv}[proto]
        thread = threading.Thread(target=lambda f=func, a=sub: results.append(f(a)), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(args.timeout + 10)
    return 0 if len(results) == len(threads) and not any(results) else 1


_TS_RE = re.compile(r"^(?:\d\d:\d\d:\d\d\.\d+|\d{9,}\.\d+) ")
_IP_RE = re.compile(r"proto (TCP|UDP|ICMP) \(\d+\)")
_IPLEN_RE = re.compile(r"proto \w+ \(\d+\), length (\d+)\)")
_FLOW_RE = re.compile(r"(\d+\.\d+\.\d+\.\d+)\.(\d+) > (\d+\.\d+\.\d+\.\d+)\.(\d+):")
_ICMP_RE = re.compile(r"(\d+\.\d+\.\d+\.\d+) > (\d+\.\d+\.\d+\.\d+): ICMP echo request")
#: An IP packet longer than this went out as one GSO/TSO packet (the lab's MTU is 1500).
MTU = 1500


def tcpdump_packets(text: str) -> list[str]:
    """Return tcpdump -vv's packets, each its timestamp line plus its indented continuation
    lines joined into one line."""
    packets: list[str] = []
    for line in text.splitlines():
        if _TS_RE.match(line):
            packets.append(line)
        elif packets and line[:1].isspace():
            packets[-1] += " " + line.strip()
    return packets


def packet_verdict(packet: str) -> tuple[str, str, str, int, str] | None:
    """Return (proto, dst, dst port, IP length, verdict) of one TCP/UDP packet of tcpdump -vv,
    verdict ``correct``, ``incorrect`` or ``unverified``; None for anything else."""
    proto_match = _IP_RE.search(packet)
    flow = _FLOW_RE.search(packet)
    if not proto_match or not flow or proto_match.group(1) == "ICMP":
        return None
    proto = proto_match.group(1).lower()
    length = _IPLEN_RE.search(packet)
    if proto == "tcp":
        verdict_ok, verdict_bad = "(correct)" in packet, "(incorrect" in packet
    else:
        verdict_ok, verdict_bad = "udp sum ok" in packet, "bad udp cksum" in packet
    verdict = "incorrect" if verdict_bad else "correct" if verdict_ok else "unverified"
    return proto, flow.group(3), flow.group(4), int(length.group(1)) if length else 0, verdict


def count_tcpdump(text: str, by_port: bool = False) -> dict[str, dict[str, dict[str, int]]]:
    """Count TCP/UDP packets per destination (``DST`` or, with ``by_port``, ``DST:PORT``) by
    tcpdump -vv's checksum verdict.

    Returns ``{dst: {"tcp"|"udp": {"correct", "incorrect", "unverified", "ip_bad", "large",
    "incorrect_large"}}}``; ``large`` counts packets longer than the MTU (GSO/TSO packets seen
    whole), ``incorrect_large`` those of them whose checksum was not complete.
    A packet is a timestamp line plus its indented continuation lines.
    """
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for packet in tcpdump_packets(text):
        found = packet_verdict(packet)
        if found is None:
            continue
        proto, dst, port, length, verdict = found
        bucket = counts.setdefault(f"{dst}:{port}" if by_port else dst, {}).setdefault(
            proto, {"correct": 0, "incorrect": 0, "unverified": 0, "ip_bad": 0, "large": 0,
                    "incorrect_large": 0})
        if ", bad cksum " in packet.split(")", 1)[0]:
            bucket["ip_bad"] += 1
        bucket[verdict] += 1
        if length > MTU:
            bucket["large"] += 1
            bucket["incorrect_large"] += verdict == "incorrect"
    return counts


def cmd_tcpdump_count(args: argparse.Namespace) -> int:
    """Emit the checksum verdict counts of tcpdump -vv capture files (items POINT:FILE)."""
    for item in args.items:
        point, _, file = item.partition(":")
        path = Path(file)
        text = path.read_text(errors="replace") if path.exists() else ""
        emit(args.scenario, "csum-capture", label=f"{args.mode}-{point}", point=point,
             mode=args.mode, counts=count_tcpdump(text, args.by_port),
             lines=len(text.splitlines()))
    return 0


def timeline(text: str, marks: dict[str, int], stream_port: str) -> dict[str, Any]:
    """Return when things happened in one tcpdump -tt -vv capture, relative to marker pings:
    ``marks`` names ICMP echo requests by their length (``ping -s N`` shows as N+8); the
    stream is the UDP packets to ``stream_port``. For each marker: its time; then the first
    stream packet with a correct checksum after the last incorrect one, and counts."""
    when: dict[str, float] = {}
    stream: list[tuple[float, str]] = []
    for packet in tcpdump_packets(text):
        stamp = float(packet.split(" ", 1)[0]) if packet[:1].isdigit() and \
            ":" not in packet.split(" ", 1)[0] else None
        if stamp is None:
            continue
        if _ICMP_RE.search(packet):
            length = re.search(r"ICMP echo request, id \d+, seq \d+, length (\d+)", packet)
            for name, size in marks.items():
                if length and int(length.group(1)) == size + 8 and name not in when:
                    when[name] = stamp
            continue
        found = packet_verdict(packet)
        if found and found[0] == "udp" and found[2] == stream_port:
            stream.append((stamp, found[4]))
    result: dict[str, Any] = {"marks": {k: round(v, 6) for k, v in when.items()},
                              "stream_packets": len(stream)}
    bad = [s for s, v in stream if v == "incorrect"]
    good = [s for s, v in stream if v == "correct"]
    last_bad = max(bad, default=None)
    first_good = min((s for s in good if last_bad is None or s > last_bad), default=None)
    result["incorrect"] = len(bad)
    result["correct"] = len(good)
    result["correct_before_last_incorrect"] = sum(1 for s in good if last_bad and s < last_bad)
    result["stream_first"] = round(stream[0][0], 6) if stream else None
    result["stream_last"] = round(stream[-1][0], 6) if stream else None
    result["last_incorrect"] = round(last_bad, 6) if last_bad is not None else None
    result["first_correct"] = round(first_good, 6) if first_good is not None else None
    for name, stamp in when.items():
        if first_good is not None:
            result[f"first_correct_after_{name}"] = round(first_good - stamp, 3)
        if last_bad is not None:
            result[f"last_incorrect_after_{name}"] = round(last_bad - stamp, 3)
    return result


def cmd_timeline(args: argparse.Namespace) -> int:
    """Emit :func:`timeline` of a capture file."""
    path = Path(args.capture)
    text = path.read_text(errors="replace") if path.exists() else ""
    marks = {name: int(size) for name, _, size in (m.partition("=") for m in args.mark)}
    emit(args.scenario, "timeline", label=args.label, point=args.point,
         **timeline(text, marks, str(args.stream_port)))
    return 0


def cmd_emit(args: argparse.Namespace) -> int:
    """Emit a fact from KEY=VALUE pairs (VALUE parsed as JSON when it is valid JSON); each
    --file KEY=PATH adds PATH's content (parsed the same way; a missing file gives "")."""
    fields: dict[str, Any] = {}
    pairs = [(key, raw) for key, _, raw in (pair.partition("=") for pair in args.pairs)]
    for spec in args.file:
        key, _, name = spec.partition("=")
        try:
            pairs.append((key, Path(name).read_text(errors="replace")))
        except OSError:
            pairs.append((key, ""))
    for key, raw in pairs:
        try:
            fields[key] = json.loads(raw)
        except ValueError:
            fields[key] = raw
    emit(args.scenario, args.fact, **fields)
    return 0


#: The first 10 bytes of every xenoffload tc action cookie ("xenoffload", docs/toggles.md).
XO_COOKIE = "78656e6f66666c6f6164"


def _json_file(path: Path) -> Any:
    try:
        text = path.read_text(errors="replace").strip()
        return json.loads(text) if text else []
    except (OSError, ValueError):
        return None


def tc_summary(qdiscs: Any, filters: dict[str, Any], link: Any) -> dict[str, Any]:
    """Return a compact view of one device's tc state (``tc -j qdisc show``, ``tc -s -j filter
    show ... ingress|egress``, ``ip -d -j link show``): qdisc kinds, per hook the filters that
    carry actions (pref, protocol, classifier, handle, action kind and csum flags, control,
    cookie, whether the cookie is xenoffload's, packets), and gso_max_segs."""
    summary: dict[str, Any] = {
        "qdiscs": sorted(str(q.get("kind")) for q in qdiscs or [] if q.get("kind") not in
                         ("noqueue", "pfifo_fast", "mq", "noop")),
    }
    for hook, shown in filters.items():
        rules = []
        for entry in shown or []:
            actions = (entry.get("options") or {}).get("actions")
            if not actions:
                continue
            for action in actions:
                cookie = str(action.get("cookie", ""))
                stats = action.get("stats") or {}
                rules.append({
                    "pref": entry.get("pref"), "protocol": entry.get("protocol"),
                    "kind": entry.get("kind"),
                    "handle": (entry.get("options") or {}).get("fh", entry.get("handle")),
                    "action": action.get("kind"), "csum": action.get("csum"),
                    "control": (action.get("control_action") or {}).get("type"),
                    "cookie": cookie, "ours": cookie.startswith(XO_COOKIE),
                    "packets": stats.get("packets")})
        summary[hook] = rules
    links = link or [{}]
    summary["gso_max_segs"] = links[0].get("gso_max_segs") if links else None
    return summary


def cmd_tc(args: argparse.Namespace) -> int:
    """Emit the tc state of each interface as ``xo_tc_save`` stored it in --saved DIR
    (IFACE.qdisc, IFACE.ingress, IFACE.egress, IFACE.link)."""
    for iface in args.ifaces:
        base = Path(args.saved)
        qdiscs = _json_file(base / f"{iface}.qdisc")
        summary = tc_summary(qdiscs, {hook: _json_file(base / f"{iface}.{hook}")
                                      for hook in ("ingress", "egress")},
                             _json_file(base / f"{iface}.link"))
        emit(args.scenario, "tc", iface=iface, label=args.label, ok=qdiscs is not None,
             **summary)
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    """Accept TCP connections on every --port of --bind and read each to EOF (a discard
    server), until --timeout passes or SIGTERM; write --out.listening once listening and
    --out (JSON: bytes per port) at the end."""
    import selectors
    import signal
    import socket

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    sel = selectors.DefaultSelector()
    received: dict[str, int] = {}
    socks: dict[int, tuple[socket.socket, str, int]] = {}
    for port in args.port:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((args.bind, port))
        srv.listen(8)
        srv.setblocking(False)
        sel.register(srv, selectors.EVENT_READ)
        socks[srv.fileno()] = (srv, "listen", port)
    Path(args.out + ".listening").touch()
    deadline = time.monotonic() + args.timeout
    while not stop and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            sock, what, port = socks[key.fd]
            if what == "listen":
                try:
                    conn, _peer = sock.accept()
                except OSError:
                    continue
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ)
                socks[conn.fileno()] = (conn, "conn", port)
                continue
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                received[str(port)] = received.get(str(port), 0) + len(chunk)
            else:
                sel.unregister(sock)
                del socks[key.fd]
                sock.close()
    Path(args.out).write_text(json.dumps(received, sort_keys=True))
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    """After --delay seconds (a capture's drain), send --signal to the pid in each PIDFILE and
    wait (bounded) until it exits."""
    import signal

    time.sleep(args.delay)
    for pidfile in args.pidfiles:
        try:
            pid = int(Path(pidfile).read_text().strip())
            os.kill(pid, getattr(signal, f"SIG{args.signal}"))
        except (OSError, ValueError):
            continue
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.05)
    return 0


def cmd_locks(args: argparse.Namespace) -> int:
    """Emit each lock file of DIR (xenoffload's /run/xenoffload): its holder record and
    whether a process holds it now (a non-blocking flock attempt)."""
    import fcntl

    locks = {}
    directory = Path(args.dir)
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            locks[path.name] = {"error": str(exc)}
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = False
                fcntl.flock(fd, fcntl.LOCK_UN)
            except OSError:
                held = True
            record = os.read(fd, 300).decode(errors="replace").strip()
        finally:
            os.close(fd)
        locks[path.name] = {"held": held, "record": record}
    emit(args.scenario, "locks", label=args.label, dir=args.dir, locks=locks)
    return 0


def cmd_xsvalues(args: argparse.Namespace) -> int:
    """Emit the XenStore values ``xo_xs_values`` stored in --saved FILE (PATH=VALUE lines)."""
    values: dict[str, str] = {}
    try:
        lines = Path(args.saved).read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        path, sep, value = line.partition("=")
        if sep:
            values[path] = value
    emit(args.scenario, "xsvalues", label=args.label, values=values)
    return 0


def cmd_logtime(args: argparse.Namespace) -> int:
    """Emit, for each PATTERN, every line of --file containing it (at most 40) with its time
    (seconds since the epoch: the log's asctime, UTC)."""
    from datetime import UTC, datetime

    try:
        lines = Path(args.file).read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    found: dict[str, list[dict[str, Any]]] = {}
    for pattern in args.pattern:
        hits: list[dict[str, Any]] = []
        for line in lines:
            if pattern not in line:
                continue
            try:
                stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").replace(
                    tzinfo=UTC).timestamp()
            except ValueError:
                continue
            hits.append({"at": round(stamp, 3), "line": line[24:260]})
        found[pattern] = hits[:40]
    emit(args.scenario, "logtime", label=args.label, file=args.file, found=found)
    return 0


_TRACE_WRITE_RE = re.compile(r"^IN \S+ \S+ \S+ WRITE \((\S+) (.*)\)\s*$")


def trace_states(lines: Sequence[str], mark: str, paths: Sequence[str]) -> dict[str, list[int]]:
    """Return the values written to each state node after the last line containing ``mark``.

    ``paths`` are absolute; a kernel writes them relative to its domain's home
    (``backend/vif/1/0/state``), so the part after ``/local/domain/N/`` matches too. Repeated
    writes of the same value (a retried xenbus transaction) count once.
    """
    start = max((i for i, line in enumerate(lines) if mark in line), default=-1) + 1
    wanted: dict[str, str] = {}
    for path in paths:
        wanted[path] = path
        rel = re.sub(r"^/local/domain/\d+/", "", path)
        wanted[rel] = path
    states: dict[str, list[int]] = {path: [] for path in paths}
    for line in lines[start:]:
        match = _TRACE_WRITE_RE.match(line)
        if not match or match[1] not in wanted:
            continue
        try:
            value = int(match[2].strip())
        except ValueError:
            value = -1
        seq = states[wanted[match[1]]]
        if not seq or seq[-1] != value:
            seq.append(value)
    return states


def cmd_trace_states(args: argparse.Namespace) -> int:
    """Emit, per LABEL=PATH item, the XenbusState values written to PATH after --mark in the
    xenstored trace (``xenstored -T``)."""
    try:
        lines = Path(args.trace).read_text(errors="replace").splitlines()
    except OSError as exc:
        emit(args.scenario, "xenbus-states", label="", error=str(exc))
        return 1
    found = any(args.mark in line for line in lines)
    items = [item.partition("=")[::2] for item in args.items]
    states = trace_states(lines, args.mark, [path for _, path in items])
    for label, path in items:
        emit(args.scenario, "xenbus-states", label=label, path=path, states=states[path],
             mark_found=found)
    return 0 if found else 1


def cmd_batch(args: argparse.Namespace) -> int:
    """Run several subcommands in this one process (each argument is one command line, split
    like a shell would); return the first non-zero status. Saves a Python start per command."""
    import shlex
    import traceback

    status = 0
    for line in args.commands:
        try:
            rc = main(shlex.split(line))
        except SystemExit as exc:  # argparse error
            rc = exc.code if isinstance(exc.code, int) else 2
        except Exception:  # report, and go on with the next command
            traceback.print_exc()
            rc = 1
        status = status or rc
    return status


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name)
        p.add_argument("--scenario", default="run")
        p.add_argument("--label", default="")
        p.set_defaults(func=func)
        return p

    p = add("ethtool", cmd_ethtool)
    p.add_argument("--saved", metavar="DIR", help="report what xo_ethtool_save stored in DIR")
    p.add_argument("ifaces", nargs="+")
    p = add("xsdir", cmd_xsdir)
    p.add_argument("--saved", metavar="FILE", help="parse what xo_xsdir_save stored in FILE")
    p.add_argument("path")
    add("pyinfo", cmd_pyinfo)
    p = add("tcp-send", cmd_tcp_send)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bytes", type=int, default=1 << 20)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=60)
    p = add("tcp-recv", cmd_tcp_recv)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--out", required=True)
    p = add("udp-send", cmd_udp_send)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--started", default="",
                   help="a file created once the first datagram went out")
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--interval", type=float, default=0.02, help="seconds between datagrams")
    p = add("udp-recv", cmd_udp_recv)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--out", required=True)
    p = add("recv", cmd_recv)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("items", nargs="+", metavar="tcp|udp:BIND:PORT:LABEL:OUT")
    p = add("tcpdump-count", cmd_tcpdump_count)
    p.add_argument("--mode", required=True)
    p.add_argument("--by-port", action="store_true", help="count per destination port")
    p.add_argument("items", nargs="+", metavar="POINT:FILE")
    p = add("timeline", cmd_timeline)
    p.add_argument("--capture", required=True)
    p.add_argument("--point", required=True)
    p.add_argument("--mark", action="append", default=[], metavar="NAME=PINGSIZE")
    p.add_argument("--stream-port", type=int, required=True)
    p = add("tc", cmd_tc)
    p.add_argument("--saved", required=True, metavar="DIR")
    p.add_argument("ifaces", nargs="+")
    p = add("sink", cmd_sink)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--port", type=int, action="append", required=True)
    p.add_argument("--timeout", type=float, default=400)
    p.add_argument("--out", required=True)
    p = add("kill", cmd_kill)
    p.add_argument("--signal", default="INT")
    p.add_argument("--delay", type=float, default=0.5)
    p.add_argument("--wait", type=float, default=5)
    p.add_argument("pidfiles", nargs="+")
    p = add("locks", cmd_locks)
    p.add_argument("dir")
    p = add("xsvalues", cmd_xsvalues)
    p.add_argument("--saved", required=True, metavar="FILE")
    p = add("logtime", cmd_logtime)
    p.add_argument("--file", required=True)
    p.add_argument("pattern", nargs="+")
    p = add("emit", cmd_emit)
    p.add_argument("--file", action="append", default=[], metavar="KEY=PATH")
    p.add_argument("fact")
    p.add_argument("pairs", nargs="*")
    p = add("trace-states", cmd_trace_states)
    p.add_argument("--trace", required=True)
    p.add_argument("--mark", required=True)
    p.add_argument("items", nargs="+", metavar="LABEL=PATH")
    p = add("batch", cmd_batch)
    p.add_argument("commands", nargs="+", metavar="'SUBCOMMAND ARGS...'")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; return its exit status."""
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
