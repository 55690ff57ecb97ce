"""``xenoffload show``: per vif, both ends' keys, states, the negotiated result, enforcement.

Reads each vif's two directories in one transaction and recomputes the result exactly as the
ends do (:func:`~xenoffload.negotiation.decide`), so what it prints is what both ends agree on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from xenoffload.negotiation import LinkResult, decide
from xenoffload.paths import VifPaths, backend_vif_root
from xenoffload.schema import (
    READ_KEYS,
    STATUS_KEY,
    Advertisement,
    FamilyFlags,
    ParsedAdvertisement,
    Role,
    parse_advertisement,
)
from xenoffload.store.base import Store, Transaction, XenStoreError, run_transaction
from xenoffload.xenbus import XenbusState, parse_state

__all__ = ["VifReport", "collect", "render_table", "render_json", "list_vifs"]


@attrs.frozen
class VifReport:
    """One vif as both directories show it now."""

    guest_domid: int
    devid: int
    backend_state: XenbusState | None
    frontend_state: XenbusState | None
    backend: ParsedAdvertisement
    frontend: ParsedAdvertisement
    result: LinkResult
    backend_status: str | None
    frontend_status: str | None
    bridge: str | None
    kernel: Mapping[str, Mapping[str, bool]] = attrs.field(factory=dict)

    def as_json(self) -> dict[str, Any]:
        def adv(parsed: ParsedAdvertisement) -> dict[str, Any]:
            return {"source": parsed.source,
                    "tx": attrs.asdict(parsed.advertisement.tx),
                    "rx": attrs.asdict(parsed.advertisement.rx),
                    "problems": [str(p) for p in parsed.problems]}

        return {
            "vif": f"{self.guest_domid}/{self.devid}",
            "bridge": self.bridge,
            "backend_state": str(self.backend_state) if self.backend_state is not None
            else None,
            "frontend_state": str(self.frontend_state) if self.frontend_state is not None
            else None,
            "connected": self.backend_state is XenbusState.CONNECTED
            and self.frontend_state is XenbusState.CONNECTED,
            "backend": adv(self.backend),
            "frontend": adv(self.frontend),
            "negotiated": {"to_guest": attrs.asdict(self.result.to_guest),
                           "from_guest": attrs.asdict(self.result.from_guest)},
            "backend_status": self.backend_status,
            "frontend_status": self.frontend_status,
            "kernel": {device: dict(features) for device, features in self.kernel.items()},
        }


def list_vifs(store: Store, backend_domid: int, guest: int | None = None) -> list[VifPaths]:
    """Return every vif with a backend in ``backend_domid`` (optionally of one guest)."""
    root = backend_vif_root(backend_domid)
    found: list[VifPaths] = []
    try:
        guests = [guest] if guest is not None else [
            int(d) for d in store.directory(root) if d.isdigit()]
    except XenStoreError:
        return []
    for domid in sorted(guests):
        try:
            devids = sorted(int(d) for d in store.directory(f"{root}/{domid}") if d.isdigit())
        except XenStoreError:
            continue
        found.extend(VifPaths(backend_domid, domid, devid) for devid in devids)
    return found


def _opt(txn: Transaction, path: str) -> bytes | None:
    try:
        return txn.read(path)
    except XenStoreError:
        return None


def _text(raw: bytes | None) -> str | None:
    return raw.decode("ascii", "replace")[:200] if raw is not None else None


def collect(store: Store, vifs: Iterable[VifPaths]) -> list[VifReport]:
    """Return a report for each vif (one transaction each)."""
    reports = []
    for paths in vifs:
        def read(txn: Transaction, paths: VifPaths = paths) -> VifReport:
            back = {k: _opt(txn, f"{paths.backend_dir}/{k}") for k in READ_KEYS}
            front = {k: _opt(txn, f"{paths.frontend_dir}/{k}") for k in READ_KEYS}
            backend = parse_advertisement(Role.BACKEND, paths.backend_dir, back)
            frontend = parse_advertisement(Role.FRONTEND, paths.frontend_dir, front)
            return VifReport(
                paths.guest_domid, paths.devid,
                parse_state(_opt(txn, f"{paths.backend_dir}/state")),
                parse_state(_opt(txn, f"{paths.frontend_dir}/state")),
                backend, frontend,
                decide(backend.advertisement, frontend.advertisement),
                _text(_opt(txn, f"{paths.backend_dir}/{STATUS_KEY}")),
                _text(_opt(txn, f"{paths.frontend_dir}/{STATUS_KEY}")),
                _text(_opt(txn, f"{paths.backend_dir}/bridge")),
            )

        reports.append(run_transaction(store, read))
    return reports


def _flags(flags: FamilyFlags) -> str:
    return {(True, True): "4+6", (True, False): "4", (False, True): "6",
            (False, False): "-"}[(flags.ipv4, flags.ipv6)]


def _adv(parsed: ParsedAdvertisement) -> str:
    advertisement: Advertisement = parsed.advertisement
    mark = {"xenoffload": "", "legacy": " (legacy)", "safe": " (REFUSED)"}[parsed.source]
    return f"tx {_flags(advertisement.tx)} rx {_flags(advertisement.rx)}{mark}"


def render_table(reports: list[VifReport]) -> str:
    """Return a fixed-width table: one line per vif. In the result columns ``4+6`` means blank
    checksums may cross for both families, ``-`` that every checksum is computed."""
    header = ("VIF", "BRIDGE", "STATE B/F", "BACKEND ADVERTISES", "FRONTEND ADVERTISES",
              "TO-GUEST", "FROM-GUEST", "BACKEND STATUS", "FRONTEND STATUS")
    rows = [header]
    for r in reports:
        rows.append((
            f"{r.guest_domid}/{r.devid}", r.bridge or "?",
            f"{r.backend_state or '?'}/{r.frontend_state or '?'}",
            _adv(r.backend), _adv(r.frontend),
            _flags(r.result.to_guest), _flags(r.result.from_guest),
            r.backend_status or "-", r.frontend_status or "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
             for row in rows]
    for r in reports:
        for device, features in r.kernel.items():
            shown = " ".join(f"{name}={'on' if on else 'off'}"
                             for name, on in sorted(features.items()))
            lines.append(f"  {r.guest_domid}/{r.devid} kernel {device}: {shown}")
    return "\n".join(lines)


def render_json(reports: list[VifReport]) -> str:
    return json.dumps([report.as_json() for report in reports], indent=2, sort_keys=True)
