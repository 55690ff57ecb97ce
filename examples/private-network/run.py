"""The private-network example, end to end on one machine, through the real commands.

Two guests (nfs-server, domid 1; nfs-client, domid 2), each with eth0 on the public bridge
xenbr0 and eth1 on xenpriv0, a bridge with no uplink. dom0's policy (xenoffload-dom0.toml)
lets xenpriv0 skip checksums; everything else computes them.

What runs: `xenoffload xenstored` (dom0 socket + one socket per guest), the toolstack part
(vif layout as libxl writes it, from the Python API), `xenoffload backend-agent` and one
`xenoffload guest-agent` per guest (full mode: there is no kernel netback here), each a real
process. As root the vifs are veth pairs between network namespaces (dom0 with the two bridges,
one namespace per guest), the agents apply toggles with netlink, and the client sends the server
1 MiB over TCP on each network; otherwise toggles are a dry run. Ends with
`xenoffload show` and a clean teardown.

    .venv/bin/python examples/private-network/run.py   # as root: real veths; else a dry run

Exit 0 when every vif negotiated as expected and every device enforces it, 7 when negotiated
but not enforced (e.g. a kernel without act_csum), 1 otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xenoffload.netns import Namespaces, netns_available
from xenoffload.show import enforced_status
from xenoffload.store.pyxs_store import connect_store
from xenoffload.toolstack import VifSpec, create_domain, create_vif

HERE = Path(__file__).resolve().parent
GUESTS = {1: "nfs-server", 2: "nfs-client"}
BRIDGES = ("xenbr0", "xenpriv0")  # devid 0 and 1


def xenoffload(*args: str) -> list[str]:
    return [sys.executable, "-m", "xenoffload", *args]


def wait_for(path: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear")
        time.sleep(0.05)


SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 2049)); s.listen(1); s.settimeout(10)
c, _ = s.accept(); total = 0
while (chunk := c.recv(65536)):
    total += len(chunk)
print(total)
"""
CLIENT = """
import socket, sys, time
for _ in range(50):
    try:
        c = socket.create_connection((sys.argv[1], 2049), timeout=5); break
    except OSError:
        time.sleep(0.1)
c.sendall(b"x" * (1 << 20)); c.close()
"""


def transfer(server_ns: str, client_ns: str, address: str) -> bool:
    """Send 1 MiB over TCP from a process in ``client_ns`` to one in ``server_ns``."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, sys.executable, "-c", SERVER,
                               address], stdout=subprocess.PIPE, text=True)
    subprocess.run(["ip", "netns", "exec", client_ns, sys.executable, "-c", CLIENT, address],
                   check=False, timeout=30)
    received, _ = server.communicate(timeout=30)
    return received.strip() == str(1 << 20)


def main() -> int:
    real = netns_available()
    toggles = "netlink" if real else "dry-run"
    print(f"devices: {'veth pairs in network namespaces' if real else 'DRY RUN (not root)'}")
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="xo-private-") as tmp, \
            Namespaces(f"xo-priv-{os.getpid()}") as spaces:
        sock = f"{tmp}/xenstored.sock"
        domain_args = [arg for domid in GUESTS
                       for arg in ("--domain", f"{domid}:{tmp}/dom{domid}.sock")]
        procs.append(subprocess.Popen(xenoffload("xenstored", "--socket", sock, *domain_args)))
        wait_for(sock)
        dom0_ns = spaces.add("dom0") if real else None
        guest_ns = {domid: spaces.add(f"dom{domid}") if real else None for domid in GUESTS}
        if real:
            assert dom0_ns is not None
            for bridge in BRIDGES:
                subprocess.run(["ip", "-n", dom0_ns, "link", "add", bridge, "type", "bridge"],
                               check=True)
                subprocess.run(["ip", "-n", dom0_ns, "link", "set", bridge, "up"], check=True)
        store = connect_store(sock)
        create_domain(store, 0, "Domain-0")
        for domid, name in GUESTS.items():
            create_domain(store, domid, name)
            for devid, bridge in enumerate(BRIDGES):
                create_vif(store, VifSpec(domid, devid, f"00:16:3e:{devid:02x}:00:{domid:02x}",
                                          bridge))
                if real:
                    netns = guest_ns[domid]
                    assert dom0_ns is not None and netns is not None
                    vif = f"vif{domid}.{devid}"
                    spaces.veth(dom0_ns, vif, netns, f"eth{devid}")
                    subprocess.run(["ip", "-n", dom0_ns, "link", "set", vif, "master", bridge],
                                   check=True)
                    subprocess.run(["ip", "-n", netns, "addr", "add",
                                    f"10.{devid}.0.{domid}/24", "dev", f"eth{devid}"], check=True)
        backend = ["backend-agent", "--mode", "full", "--toggles", toggles, "--xenstore", sock,
                   "--config", str(HERE / "xenoffload-dom0.toml")]
        if dom0_ns:
            backend += ["--netns", dom0_ns]
        procs.append(subprocess.Popen(xenoffload(*backend)))
        for domid in GUESTS:
            guest = ["guest-agent", "--mode", "full", "--toggles", toggles, "--domid", str(domid),
                     "--xenstore", f"{tmp}/dom{domid}.sock", "--device-pattern", "eth{devid}",
                     "--config", str(HERE / "xenoffload-guest.toml")]
            if guest_ns[domid]:
                guest += ["--netns", str(guest_ns[domid])]
            procs.append(subprocess.Popen(xenoffload(*guest)))
        try:
            ok = False
            for _ in range(200):
                shown = subprocess.run(xenoffload("show", "--json", "--xenstore", sock),
                                       capture_output=True, text=True, check=True)
                vifs = json.loads(shown.stdout)
                if len(vifs) == 4 and all(v["agreed"] and v["backend"]["status"] and
                                          v["frontend"]["status"] for v in vifs):
                    ok = True
                    break
                time.sleep(0.1)
            show = xenoffload("show", "--xenstore", sock)
            if dom0_ns:
                show += ["--kernel", "netlink", "--netns", dom0_ns]
            subprocess.run(show, check=True)
            expected = {f"{d}/{n}": n == 1 for d in GUESTS for n in (0, 1)}
            for vif in vifs:
                suppressed = vif["negotiated"]["to_guest"]["ipv4"]
                name = f"{vif['domid']}/{vif['devid']}"
                if suppressed != expected[name]:
                    print(f"UNEXPECTED: vif {name} suppression={suppressed}")
                    ok = False
            if real and ok:
                for devid in (0, 1):
                    moved = transfer(str(guest_ns[1]), str(guest_ns[2]), f"10.{devid}.0.1")
                    print(f"nfs-client -> nfs-server over eth{devid} ({BRIDGES[devid]}): "
                          f"{'1 MiB over TCP ok' if moved else 'TRANSFER FAILED'}")
                    ok = ok and moved
            # OK only when every end's device does what was negotiated (docs/cli.md, exit 7).
            unenforced = [f"vif {v['domid']}/{v['devid']} {end}: {v[end]['status']}"
                          for v in vifs for end in ("backend", "frontend")
                          if not enforced_status(v[end]["status"])]
            for line in unenforced:
                print(f"NOT ENFORCED: {line}")
            if not ok:
                print("private network example: FAILED")
                return 1
            print("private network example:",
                  "OK" if not unenforced else "negotiated, NOT ENFORCED")
            return 0 if not unenforced else 7
        finally:
            store.close()
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
