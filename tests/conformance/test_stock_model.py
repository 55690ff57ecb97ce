"""The suite's stock netback/netfront models write what the real Linux drivers wrote.

Both sides are compared as the sequence of visible changes each driver made to its vif
directory up to its Connected: which keys (with their values, ring references and event
channels aside) changed together in one transaction, and which were plain writes. The real
sequences come from xenstored traces of Xen 4.17 with Linux 6.1 (tests/conformance/fixtures,
and tests/fixtures/stock-linux-two-vifs.trace when present: every vif of it is checked).
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from xenoffload.conformance.lab import VIF, Lab
from xenoffload.conformance.observe import Effect, effects, parse_trace, wire_ops
from xenoffload.conformance.peer import Actor, PeerContext, linux_netback, linux_netfront
from xenoffload.machine import Mode
from xenoffload.schema import Role
from xenoffload.toggles.simulated import SimulatedKernel

HERE = Path(__file__).parent
TRACES = [HERE / "fixtures" / "real-xen-vif-negotiation.trace",
          HERE.parent / "fixtures" / "stock-linux-two-vifs.trace"]
_BACKEND = re.compile(r"\A/local/domain/0/backend/vif/(\d+)/(\d+)/([^/]+)\Z")
_FRONTEND = re.compile(r"\A/local/domain/(\d+)/device/vif/(\d+)/([^/]+)\Z")
_OPAQUE = re.compile(r"(ring-ref|event-channel)")

Change = tuple[bool, tuple[tuple[str, bytes | None], ...]]


def _key(path: str) -> tuple[str, tuple[int, int], str] | None:
    for side, pattern in (("backend", _BACKEND), ("frontend", _FRONTEND)):
        match = pattern.match(path)
        if match:
            return side, (int(match.group(1)), int(match.group(2))), match.group(3)
    return None


def driver_changes(found: list[Effect], conn_id: int, side: str) -> dict[tuple[int, int],
                                                                          list[Change]]:
    """Per vif: the changes ``conn_id`` made to the ``side`` directory, up to Connected."""
    per_vif: dict[tuple[int, int], list[Change]] = {}
    done: set[tuple[int, int]] = set()
    for effect in found:
        if effect.conn_id != conn_id:
            continue
        by_vif: dict[tuple[int, int], list[tuple[str, bytes | None]]] = {}
        for path, value in effect.writes:
            parsed = _key(path)
            if parsed is None or parsed[0] != side or parsed[1] in done:
                continue
            shown = None if value is None or _OPAQUE.search(parsed[2]) else value
            by_vif.setdefault(parsed[1], []).append((parsed[2], shown))
        for vif, writes in by_vif.items():
            per_vif.setdefault(vif, []).append((bool(effect.tx_id), tuple(writes)))
            if ("state", b"4") in writes:
                done.add(vif)
    return per_vif


def real_drivers(trace: Path) -> tuple[dict[tuple[int, int], list[Change]],
                                       dict[tuple[int, int], list[Change]]]:
    """Netback's and netfront's changes per vif in a real trace. The kernels are the
    connections writing ``state`` relative to their domain; the guest kernel's paths are
    resolved with the guest's domid (the frontend's ``backend`` link names it)."""
    with trace.open(errors="replace") as lines:
        text = lines.readlines()
    records = parse_trace(text)
    netback = next(r.conn_id for r in records
                   if r.op == "WRITE" and re.match(rb"backend/vif/\d+/\d+/state\0", r.payload))
    netfront = next(r.conn_id for r in records
                    if r.op == "WRITE" and re.match(rb"device/vif/\d+/state\0", r.payload))
    guest = next(int(m.group(1)) for line in text
                 if (m := re.search(r"/local/domain/(\d+)/device/vif/\d+/backend ", line)))
    records = parse_trace(text, {netback: 0, netfront: guest})
    found = effects(wire_ops(enumerate(records)))
    return driver_changes(found, netback, "backend"), driver_changes(found, netfront,
                                                                         "frontend")


@attrs.frozen
class _NoSubject:
    """The stock models alone: nothing under test."""

    toggles: SimulatedKernel | None = None
    device: None = None

    def gone(self) -> str | None:
        return None

    def stop(self) -> str:
        return ""


def modelled_drivers() -> tuple[list[Change], list[Change]]:
    """The models' changes: stock netback in dom0 and stock netfront in the guest."""
    with Lab(Role.BACKEND, Mode.COMPANION) as lab:
        lab.layout()
        ctx = PeerContext(lab, _NoSubject())
        probe, connect = linux_netback(Actor.KERNEL)
        for step in (*probe, *linux_netfront(Actor.PEER), *connect):
            step.perform(ctx)
        records = [(i, r) for i, r in enumerate(lab.server.request_log)]
        found = effects(wire_ops(records))
        netback = driver_changes(found, lab.conn_id(ctx.store(Actor.KERNEL)), "backend")
        netfront = driver_changes(found, lab.conn_id(ctx.store(Actor.PEER)), "frontend")
    vif = (VIF.guest_domid, VIF.devid)
    return netback[vif], netfront[vif]


@pytest.fixture(scope="module")
def models() -> tuple[list[Change], list[Change]]:
    return modelled_drivers()


@pytest.mark.parametrize("trace", TRACES, ids=[t.name for t in TRACES])
def test_stock_models_write_what_the_real_drivers_wrote(
        trace: Path, models: tuple[list[Change], list[Change]]) -> None:
    assert trace.exists(), f"{trace}: the committed fixture is missing"
    real_back, real_front = real_drivers(trace)
    assert real_back and real_back.keys() == real_front.keys()
    model_back, model_front = models
    for vif in real_back:
        assert model_back == real_back[vif], f"netback, vif {vif}"
        assert model_front == real_front[vif], f"netfront, vif {vif}"


def test_the_comparison_notices_a_different_sequence(
        models: tuple[list[Change], list[Change]]) -> None:
    real_back, _ = real_drivers(TRACES[0])
    model_back, _ = models
    reordered = [model_back[1], model_back[0], *model_back[2:]]
    assert reordered != next(iter(real_back.values()))
