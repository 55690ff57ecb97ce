#!/usr/bin/env python3
"""A third party's implementation of docs/protocol.md, either end, written from the documents
alone: it imports neither xenoffload nor pyxs and speaks the XenStore wire protocol itself over
the socket in $XENSTORED_PATH. The conformance tests run it as a command.

    xsimpl.py --role backend|frontend [--mode full|companion] [--config FILE]
              [--device-log FILE] [--domid 1] [--devid 0] [--react-delay SECONDS]
              [--no-result] [--bug NAME]

``--bug NAME`` adds one realistic bug (the table of issue 16); without it the implementation
is meant to be correct. ``--react-delay`` makes it slow (it waits that long after each batch of
watch events before reacting) without making it wrong.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import struct
import sys
import time
import tomllib

BUGS = {
    "lenient": "reads the peer's feature values leniently (1\\n, ' 1', 1x, yes are 1)",
    "no-reapply": "never re-applies while both ends stay Connected",
    "snapshot-alone": "takes the snapshot, then acts on the peer's state read again alone",
    "write-per-key": "writes each key with its own WRITE, then state, no transaction",
    "legacy-second-txn": "writes the legacy keys in a second transaction",
    "rewrite-state": "rewrites its keys and state=Connected when it re-applies",
    "poll": "polls XenStore in a tight loop instead of watching",
    "rearm-watches": "registers its watches again (new tokens) after every event",
    "blank-always": "advertises and applies blank checksums whatever policy and peer say",
}

# XenStore wire protocol (xs_wire.h)
DIRECTORY, READ, WATCH, TRANSACTION_START, TRANSACTION_END, WRITE = 1, 2, 4, 6, 7, 11
WATCH_EVENT, ERROR = 15, 16
HEADER = struct.Struct("<IIII")

CONNECTED = 4
STATES = tuple(str(n).encode() for n in range(9))
OWN = ("feature-csum-tx", "feature-csum-tx-ipv6", "feature-csum-rx", "feature-csum-rx-ipv6")
NO_CSUM, IPV6_CSUM = "feature-no-csum-offload", "feature-ipv6-csum-offload"
STATUS, RESULT = "xenoffload-csum-status", "xenoffload-csum-result"
# Full mode: own state -> peer state -> next own state (docs/protocol.md's tables).
BACKEND_NEXT = {1: dict.fromkeys(range(9), 2), 2: {4: 4, 5: 5, 6: 5},
                4: {1: 5, 5: 5, 6: 5, 0: 5}, 5: {1: 6, 5: 6, 6: 6, 0: 6}, 6: {1: 2}}
FRONTEND_NEXT = {1: {2: 4, 5: 6, 6: 6}, 4: {5: 6, 6: 6, 0: 6}, 5: {5: 6, 6: 6, 0: 6},
                 6: {2: 1}}


class XsError(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class Gone(Exception):
    """The own directory was removed."""


class Client:
    """A minimal XenStore client: one request at a time, watch events queued."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.next_id = 0
        self.events: list[bytes] = []

    def _exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise SystemExit("xenstored closed the connection")
            data += chunk
        return data

    def _message(self) -> tuple[int, int, bytes]:
        kind, req_id, _tx, length = HEADER.unpack(self._exact(HEADER.size))
        return kind, req_id, self._exact(length)

    def request(self, op: int, payload: bytes, tx: int = 0) -> bytes:
        self.next_id += 1
        self.sock.sendall(HEADER.pack(op, self.next_id, tx, len(payload)) + payload)
        while True:
            kind, req_id, data = self._message()
            if kind == WATCH_EVENT:
                self.events.append(data)
            elif req_id == self.next_id:
                if kind == ERROR:
                    raise XsError(data.rstrip(b"\0").decode())
                return data

    def read(self, path: str, tx: int = 0) -> bytes | None:
        try:
            return self.request(READ, path.encode() + b"\0", tx)
        except XsError as error:
            if error.name in ("ENOENT", "EACCES"):
                return None
            raise

    def write(self, path: str, value: bytes, tx: int = 0) -> None:
        self.request(WRITE, path.encode() + b"\0" + value, tx)

    def watch(self, path: str, token: str) -> None:
        self.request(WATCH, f"{path}\0{token}\0".encode())

    def transaction(self, body):  # type: ignore[no-untyped-def]
        """Run body(tx) in a transaction, again while the commit says EAGAIN."""
        while True:
            tx = int(self.request(TRANSACTION_START, b"\0").rstrip(b"\0"))
            try:
                value = body(tx)
            except BaseException:
                self.request(TRANSACTION_END, b"F\0", tx)
                raise
            try:
                self.request(TRANSACTION_END, b"T\0", tx)
            except XsError as error:
                if error.name == "EAGAIN":
                    continue
                raise
            return value

    def wait(self, timeout: float) -> bool:
        """Wait for watch events; return whether there are some (queued ones are dropped:
        a step re-reads everything)."""
        if not self.events:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if ready:
                kind, _, data = self._message()
                if kind == WATCH_EVENT:
                    self.events.append(data)
            while select.select([self.sock], [], [], 0)[0]:
                kind, _, data = self._message()
                if kind == WATCH_EVENT:
                    self.events.append(data)
        seen = bool(self.events)
        self.events.clear()
        return seen


def load_policy(path: str | None, role: str) -> tuple[tuple[bool, bool], tuple[bool, bool]]:
    """(to-guest, from-guest), each (ipv4, ipv6): the [default] of the policy file; without
    one the built-in default (R7): a backend allows nothing, a guest accepts what is offered."""
    builtin = role == "frontend"
    default = {"to-guest": (builtin, builtin), "from-guest": (builtin, builtin)}
    if path:
        with open(path, "rb") as file:
            table = tomllib.load(file).get("default", {})
        for name in default:
            value = table.get(name)
            if isinstance(value, bool):
                default[name] = (value, value)
            elif isinstance(value, dict):
                default[name] = (value.get("ipv4", False), value.get("ipv6", False))
    return default["to-guest"], default["from-guest"]


def parse_state(raw: bytes | None) -> int:
    """A state node's value: absent is Unknown (0); anything but "0".."8" is read as Closed."""
    if raw is None:
        return 0
    return int(raw) if raw in STATES else 6


def both(a: tuple[bool, bool], b: tuple[bool, bool]) -> tuple[bool, bool]:
    return a[0] and b[0], a[1] and b[1]


def families(flags: tuple[bool, bool]) -> str:
    names = [name for name, on in zip(("ipv4", "ipv6"), flags, strict=True) if on]
    return "+".join(names) or "none"


class End:
    """One end of one vif."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.role = args.role
        self.bug = args.bug
        backend = f"/local/domain/0/backend/vif/{args.domid}/{args.devid}"
        frontend = f"/local/domain/{args.domid}/device/vif/{args.devid}"
        self.own_dir, self.peer_dir = (backend, frontend) if self.role == "backend" else \
            (frontend, backend)
        self.client = Client(os.environ["XENSTORED_PATH"])
        self.policy = load_policy(args.config, self.role)
        self.own_state: int | None = None
        self.applied: str | None = None
        self.gone = False
        self.reload = False

    # ------------------------------------------------------------------ reading

    def flag(self, raw: bytes | None, absent: bool, bad: list[bool]) -> bool:
        if raw is None:
            return absent
        if self.bug == "lenient":
            text = raw.decode("latin-1").strip().lower()
            if text in ("yes", "true", "on"):
                return True
            digits = ""
            for char in text:
                if not char.isdigit():
                    break
                digits += char
            return int(digits) != 0 if digits else absent
        if raw in (b"0", b"1"):
            return raw == b"1"
        bad.append(True)
        return False

    def peer_advertisement(self, keys: dict[str, bytes | None]) -> tuple[tuple[bool, bool], ...]:
        """(tx, rx) of the peer, as R2-R4 say."""
        bad: list[bool] = []  # any malformed value: the whole advertisement is the safe one
        no_csum = self.flag(keys[NO_CSUM], False, bad)
        ipv6 = self.flag(keys[IPV6_CSUM], False, bad)
        legacy_rx = (not no_csum, ipv6)
        if keys["feature-csum-tx"] is not None or keys["feature-csum-rx"] is not None:
            tx = (self.flag(keys["feature-csum-tx"], False, bad),
                  self.flag(keys["feature-csum-tx-ipv6"], False, bad))
            rx = (self.flag(keys["feature-csum-rx"], False, bad),
                  self.flag(keys["feature-csum-rx-ipv6"], False, bad))
            cap = (legacy_rx[0] or keys[NO_CSUM] is None, legacy_rx[1] or keys[IPV6_CSUM] is None)
            rx = both(rx, cap)
        else:
            tx, rx = (True, True), legacy_rx
        if bad:
            return (False, False), (False, False)
        return tx, rx

    def advertisement(self) -> tuple[tuple[bool, bool], tuple[bool, bool]]:
        to_guest, from_guest = self.policy
        if self.bug == "blank-always":
            return (True, True), (True, True)
        return (to_guest, from_guest) if self.role == "backend" else (from_guest, to_guest)

    def announcement(self) -> dict[str, bytes]:
        tx, rx = self.advertisement()
        keys = {name: b"1" if flag else b"0"
                for name, flag in zip(OWN, (*tx, *rx), strict=True)}
        keys[IPV6_CSUM] = keys["feature-csum-rx-ipv6"]
        if self.role == "frontend":
            keys[NO_CSUM] = b"0" if rx[0] else b"1"
        return keys

    def snapshot(self) -> tuple[bytes | None, bytes | None, dict[str, bytes | None],
                                dict[str, bytes | None]]:
        names = (*OWN, NO_CSUM, IPV6_CSUM)

        def read(tx: int):  # type: ignore[no-untyped-def]
            if self.client.read(self.own_dir, tx) is None:
                raise Gone
            own_state = self.client.read(f"{self.own_dir}/state", tx)
            peer_state = self.client.read(f"{self.peer_dir}/state", tx)
            own = {name: self.client.read(f"{self.own_dir}/{name}", tx)
                   for name in (*names, STATUS, RESULT)}
            peer = {name: None for name in names}
            if peer_state == b"4":
                peer = {name: self.client.read(f"{self.peer_dir}/{name}", tx)
                        for name in names}
            return own_state, peer_state, own, peer

        return self.client.transaction(read)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ writing

    def write(self, values: dict[str, bytes], state: int | None) -> None:
        items = list(values.items()) + ([("state", str(state).encode())]
                                        if state is not None else [])
        if self.bug == "write-per-key":
            for name, value in items:
                self.client.write(f"{self.own_dir}/{name}", value)
            return
        later: list[tuple[str, bytes]] = []
        if self.bug == "legacy-second-txn":
            later = [item for item in items if item[0] in (NO_CSUM, IPV6_CSUM)]
            items = [item for item in items if item not in later]
        for batch in (items, later):
            if not batch:
                continue

            def body(tx: int, batch: list[tuple[str, bytes]] = batch) -> None:
                if self.client.read(self.own_dir, tx) is None:
                    raise Gone  # a WRITE would re-create the removed device
                for name, value in batch:
                    self.client.write(f"{self.own_dir}/{name}", value, tx)

            self.client.transaction(body)

    def tell_device(self, result: str) -> None:
        if self.args.device_log:
            line = f"{time.time():.6f} {self.role} {self.args.domid}/{self.args.devid} {result}\n"
            with open(self.args.device_log, "a") as log:
                log.write(line)

    # ------------------------------------------------------------------ reacting

    def step(self) -> None:
        if self.gone:
            return
        try:
            self._step()
        except Gone:
            self.gone = True

    def _step(self) -> None:
        own_raw, peer_raw, own_keys, peer_keys = self.snapshot()
        if self.bug == "snapshot-alone":
            peer_raw = self.client.read(f"{self.peer_dir}/state")
        peer = parse_state(peer_raw)
        if self.args.mode == "companion":
            path = [parse_state(own_raw)]
        else:
            if self.own_state is None:
                self.own_state = int(own_raw) if own_raw else 1
            path = [self.own_state]
            table = BACKEND_NEXT if self.role == "backend" else FRONTEND_NEXT
            while table.get(path[-1], {}).get(peer, path[-1]) != path[-1] and len(path) < 9:
                path.append(table[path[-1]][peer])
        own = path[-1]
        for between in path[1:-1]:
            self.write({}, between)
        values: dict[str, bytes] = {}
        if self.role == "backend":
            window = own in (2, 3, 4)
        else:
            window = (own in (1, 2, 3) and peer in (2, 4)) or own == CONNECTED
        if window:
            values = {name: value for name, value in self.announcement().items()
                      if own_keys.get(name) != value}
        rewrite = False
        if own == CONNECTED and peer == CONNECTED:
            if not (self.bug == "no-reapply" and self.applied is not None):
                mine = self.advertisement()
                theirs = self.peer_advertisement(peer_keys)
                if self.role == "backend":
                    to_guest, from_guest = both(mine[0], theirs[1]), both(theirs[0], mine[1])
                else:
                    to_guest, from_guest = both(theirs[0], mine[1]), both(mine[0], theirs[1])
                if self.bug == "blank-always":
                    to_guest = from_guest = (True, True)
                result = f"to-guest={families(to_guest)} from-guest={families(from_guest)}"
                if result != self.applied:
                    rewrite = self.applied is not None and self.bug == "rewrite-state"
                    self.tell_device(result)
                    self.applied = result
                    values[STATUS] = b"ok"
                    if not self.args.no_result:
                        values[RESULT] = result.encode()
        else:
            self.applied = None
        state = own if self.args.mode == "full" and own != path[0] else None
        if rewrite:
            values.update(self.announcement())
            state = CONNECTED
        if values or state is not None:
            self.write(values, state)
        if self.args.mode == "full":
            self.own_state = own

    def run(self) -> None:
        def on_hup(_signum: int, _frame: object) -> None:
            self.reload = True

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        if self.bug != "poll":
            self.client.watch(self.own_dir, "xsimpl")
            self.client.watch(self.peer_dir, "xsimpl")
        rearms = 0
        while True:
            if self.bug == "poll":
                self.step()
                time.sleep(0.001)
                continue
            events = self.client.wait(0.05)
            if self.reload:
                self.reload = False
                self.policy = load_policy(self.args.config, self.role)
                events = True
            if not events:
                continue
            if self.args.react_delay:
                time.sleep(self.args.react_delay)
                self.client.wait(0)
            self.step()
            if self.bug == "rearm-watches":
                rearms += 1
                self.client.watch(self.own_dir, f"xsimpl-{rearms}")
                self.client.watch(self.peer_dir, f"xsimpl-{rearms}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("backend", "frontend"), required=True)
    parser.add_argument("--mode", choices=("full", "companion"), default="full")
    parser.add_argument("--config")
    parser.add_argument("--device-log")
    parser.add_argument("--domid", type=int, default=1)
    parser.add_argument("--devid", type=int, default=0)
    parser.add_argument("--react-delay", type=float, default=0.0)
    parser.add_argument("--no-result", action="store_true",
                        help=f"do not publish {RESULT} (it is optional, R6)")
    parser.add_argument("--bug", choices=sorted(BUGS))
    End(parser.parse_args()).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
