"""What only tests do to the simulated kernel (:class:`~xenoffload.toggles.simulated.
SimulatedKernel`): act as another program on its devices (remove a device or a namespace,
make a device vanish inside the next apply, change features or tc as an administrator's
ethtool or tc would) and read back what it holds and how often it was asked to change.
A dry run needs none of it, so it lives here, reaching into the kernel's state."""

from __future__ import annotations

from collections.abc import Mapping

from xenoffload.toggles.base import DeviceRef
from xenoffload.toggles.nl_codec import Answer, ErrorAnswer, Request
from xenoffload.toggles.simulated import SimulatedKernel, _SimulatedFilter, _SimulatedRtnetlink

__all__ = ["remove_device", "remove_namespace", "request_as_other_writer", "sets_sent",
           "tc_changes", "tc_request", "tc_state", "vanish_during_next_apply"]


def sets_sent(kernel: SimulatedKernel) -> int:
    """How many ethtool change requests were sent so far."""
    return sum(1 for recorded in kernel.applies if recorded.sent)


def tc_changes(kernel: SimulatedKernel) -> int:
    """How many modifying rtnetlink requests reached the kernel."""
    return sum(1 for _netns, label, _refusal in kernel.tc_requests if not label.startswith("GET"))


def remove_device(kernel: SimulatedKernel, device: DeviceRef) -> None:
    """Delete ``device``; later calls naming it raise DeviceGone."""
    with kernel._lock:
        kernel._devices.pop(device, None)
        kernel._by_index = None
        kernel._vanishing.discard(device)


def remove_namespace(kernel: SimulatedKernel, netns: str) -> None:
    """Delete the namespace and its devices; later calls naming it raise TogglesUnavailable."""
    with kernel._lock:
        kernel._namespaces.discard(netns)
        for device in [device for device in kernel._devices if device.netns == netns]:
            del kernel._devices[device]
        kernel._by_index = None


def vanish_during_next_apply(kernel: SimulatedKernel, device: DeviceRef) -> None:
    """Make the device disappear inside the next apply naming it, after its state was read and
    before a change request is sent: that apply raises DeviceGone if it has a change to send
    (one that has none returns normally, as the real one would); the device is gone afterwards
    either way."""
    with kernel._lock:
        kernel._vanishing.add(device)


def request_as_other_writer(kernel: SimulatedKernel, device: DeviceRef,
                            changes: Mapping[str, bool]) -> None:
    """Change requested features as another program (an administrator's ethtool) would,
    without recording an apply."""
    with kernel._lock:
        kernel._device(device).request(changes)


def tc_request(kernel: SimulatedKernel, device: DeviceRef, request: Request
               ) -> Answer | ErrorAnswer:
    """Send ``request`` to the kernel as another program (``tc``, an administrator) would, e.g.
    to put a filter of its own at xenoffload's priority."""
    return _SimulatedRtnetlink(kernel, device.netns).exchange(request, "OTHER-WRITER")


def tc_state(kernel: SimulatedKernel, device: DeviceRef
             ) -> tuple[str | None, int, tuple[_SimulatedFilter, ...]]:
    """The device's ingress-slot qdisc kind, gso_max_segs and filters."""
    with kernel._lock:
        simulated = kernel._device(device)
        return simulated.slot, simulated.gso_max_segs, tuple(simulated.filters)
