"""In-memory Toggles for tests and ``--dry-run``: simulated devices that record every apply.

Devices are created from a :class:`FeatureProfile`. The profiles provided are modelled on
real devices: :data:`NETBACK_VIF` and :data:`NETFRONT_ETH` on ``ethtool -k`` of a netback
``vif1.0`` and a netfront ``eth0`` captured on a Xen 4.17 lab (Linux 6.1), :data:`VETH` on a
veth of the development machine. The simulation follows the kernel's rules: a request only
moves a changeable feature's requested ("wanted") bit; the active state is the requested one,
minus what a driver limit forbids (:meth:`RecordingToggles.limit`, e.g. netback capping tx
checksum by the frontend's keys) and minus what a dependency drops (TSO goes off when the
transmit checksum of its family goes off, and returns when it comes back). Outcomes are
decided by the same rules as the netlink implementation (:mod:`xenoffload.toggles.plan`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping

import attrs

from xenoffload.toggles.base import (
    ApplyResult,
    DeviceGone,
    DeviceRef,
    FeatureState,
    TogglePermissionDenied,
    TogglesUnavailable,
)
from xenoffload.toggles.plan import judge_after, plan_apply, side_effects

__all__ = [
    "ProfileFeature",
    "FeatureProfile",
    "NETBACK_VIF",
    "NETFRONT_ETH",
    "VETH",
    "DEPENDENCIES",
    "RecordedApply",
    "RecordingToggles",
    "profile_for_name",
]


@attrs.frozen
class ProfileFeature:
    """A feature's initial state and whether the driver lets it change."""

    on: bool
    changeable: bool


@attrs.frozen
class FeatureProfile:
    """A kind of device: its features (kernel names) with initial state and changeability."""

    name: str
    features: Mapping[str, ProfileFeature]


def _profile(name: str, spec: Mapping[str, str]) -> FeatureProfile:
    # spec values as ethtool -k prints them: "on", "off", "on [fixed]", "off [fixed]".
    return FeatureProfile(
        name,
        {
            feature: ProfileFeature(on=text.startswith("on"), changeable="fixed" not in text)
            for feature, text in spec.items()
        },
    )


#: Netback ``vifD.N`` in dom0 (fixture: ``ethtool -k vif1.0``; the fixture shows the checksum,
#: SG and TSO umbrella lines; per the netback sources its changeable features are SG, IPv4 and
#: IPv6 checksum, TSO/TSO6 and fraglist, rx-checksum is fixed on).
NETBACK_VIF = _profile(
    "netback-vif",
    {
        "rx-checksum": "on [fixed]",
        "tx-checksum-ipv4": "on",
        "tx-checksum-ip-generic": "off [fixed]",
        "tx-checksum-ipv6": "on",
        "tx-checksum-fcoe-crc": "off [fixed]",
        "tx-checksum-sctp": "off [fixed]",
        "tx-scatter-gather": "on",
        "tx-scatter-gather-fraglist": "on",
        "tx-tcp-segmentation": "on",
        "tx-tcp6-segmentation": "on",
        "tx-generic-segmentation": "on",
        "rx-gro": "on",
    },
)

#: Netfront ``ethN`` in a Linux guest (fixture: ``ethtool -k eth0``): IPv4 transmit checksum
#: and rx-checksum fixed on, IPv6 checksum, SG and TSO changeable.
NETFRONT_ETH = _profile(
    "netfront-eth",
    {
        "rx-checksum": "on [fixed]",
        "tx-checksum-ipv4": "on [fixed]",
        "tx-checksum-ip-generic": "off [fixed]",
        "tx-checksum-ipv6": "on",
        "tx-checksum-fcoe-crc": "off [fixed]",
        "tx-checksum-sctp": "off [fixed]",
        "tx-scatter-gather": "on",
        "tx-scatter-gather-fraglist": "off [fixed]",
        "tx-tcp-segmentation": "on",
        "tx-tcp-ecn-segmentation": "off [fixed]",
        "tx-tcp-mangleid-segmentation": "off",
        "tx-tcp6-segmentation": "on",
        "tx-generic-segmentation": "on",
        "rx-gro": "on",
        "tx-gso-robust": "on [fixed]",
    },
)

#: veth (``ethtool -k`` of a fresh veth, Linux 6.x): one family-agnostic transmit checksum
#: feature, per-family ones fixed off, rx-checksum changeable.
VETH = _profile(
    "veth",
    {
        "rx-checksum": "on",
        "tx-checksum-ipv4": "off [fixed]",
        "tx-checksum-ip-generic": "on",
        "tx-checksum-ipv6": "off [fixed]",
        "tx-checksum-fcoe-crc": "off [fixed]",
        "tx-checksum-sctp": "on",
        "tx-scatter-gather": "on",
        "tx-scatter-gather-fraglist": "on",
        "tx-tcp-segmentation": "on",
        "tx-tcp-ecn-segmentation": "on",
        "tx-tcp-mangleid-segmentation": "on",
        "tx-tcp6-segmentation": "on",
        "tx-udp-segmentation": "on",
        "tx-generic-segmentation": "on",
        "rx-gro": "off",
    },
)

_V4_CSUM = ("tx-checksum-ipv4", "tx-checksum-ip-generic")
_V6_CSUM = ("tx-checksum-ipv6", "tx-checksum-ip-generic")
_SG = ("tx-scatter-gather",)

#: The kernel's feature dependencies (netdev_fix_features) for the features modelled here:
#: feature -> groups; the feature stays active only if every group has an active member.
DEPENDENCIES: Mapping[str, tuple[tuple[str, ...], ...]] = {
    "tx-tcp-segmentation": (_V4_CSUM, _SG),
    "tx-tcp-ecn-segmentation": (_V4_CSUM, _SG),
    "tx-tcp-mangleid-segmentation": (("tx-tcp-segmentation",),),
    "tx-tcp6-segmentation": (_V6_CSUM, _SG),
    "tx-udp-segmentation": ((*_V4_CSUM, "tx-checksum-ipv6"), _SG),
    "tx-generic-segmentation": (_SG,),
}


def profile_for_name(device: DeviceRef) -> FeatureProfile:
    """Return the profile a dry run assumes for a device it has not been told about: netback's
    for ``vifD.N``, netfront's for ``ethN``, veth's for anything else."""
    if re.fullmatch(r"vif\d+\.\d+", device.name):
        return NETBACK_VIF
    if re.fullmatch(r"eth\d+", device.name):
        return NETFRONT_ETH
    return VETH


@attrs.frozen
class RecordedApply:
    """One apply call: what was wanted, what change request was sent (empty: none), which
    features' active state changed, and the result (None when the call raised)."""

    device: DeviceRef
    wanted: Mapping[str, bool]
    sent: Mapping[str, bool]
    changed: Mapping[str, bool]
    result: ApplyResult | None


class _SimulatedDevice:
    def __init__(self, profile: FeatureProfile) -> None:
        self.profile = profile
        self.changeable = {name for name, spec in profile.features.items() if spec.changeable}
        self.requested = {name: spec.on for name, spec in profile.features.items()}
        self.forbidden: set[str] = set()
        self.active = self._compute()

    def request(self, changes: Mapping[str, bool]) -> None:
        for name, value in changes.items():
            if name in self.changeable:
                self.requested[name] = value
        self.active = self._compute()

    def limit(self, feature: str, allowed: bool) -> None:
        (self.forbidden.discard if allowed else self.forbidden.add)(feature)
        self.active = self._compute()

    def _compute(self) -> dict[str, bool]:
        active = {
            name: self.requested[name] and name not in self.forbidden
            if name in self.changeable
            else spec.on
            for name, spec in self.profile.features.items()
        }
        changed = True
        while changed:
            changed = False
            for name, groups in DEPENDENCIES.items():
                if (
                    name in self.changeable
                    and active.get(name)
                    and not all(any(active.get(member) for member in group) for group in groups)
                ):
                    active[name] = False
                    changed = True
        return active

    def state(self) -> dict[str, FeatureState]:
        return {
            name: FeatureState(
                active=self.active[name],
                requested=self.requested[name] if name in self.changeable else self.active[name],
                fixed=name not in self.changeable,
            )
            for name in self.profile.features
        }


class RecordingToggles:
    """:class:`~xenoffload.toggles.base.Toggles` over simulated devices.

    ``auto_profile``: when given, a device not added beforehand is created on first use with
    the profile it returns (a dry run uses :func:`profile_for_name`); otherwise an unknown
    device is :class:`DeviceGone`. ``privileged=False`` plays an unprivileged caller: reading
    works, a change request raises TogglePermissionDenied. ``applies`` records every apply
    call in order; ``sets_sent`` counts the change requests.
    """

    def __init__(
        self,
        auto_profile: Callable[[DeviceRef], FeatureProfile] | None = None,
        *,
        privileged: bool = True,
    ) -> None:
        self._auto_profile = auto_profile
        self.privileged = privileged
        self._lock = threading.Lock()
        self._devices: dict[DeviceRef, _SimulatedDevice] = {}
        self._namespaces: set[str] = set()
        self._vanishing: set[DeviceRef] = set()
        self.applies: list[RecordedApply] = []

    @property
    def sets_sent(self) -> int:
        """Return how many change requests were sent so far."""
        return sum(1 for recorded in self.applies if recorded.sent)

    # --- the simulated world ---------------------------------------------------------------

    def add_device(self, device: DeviceRef, profile: FeatureProfile) -> None:
        """Create ``device`` (and its namespace) with the profile's initial state."""
        with self._lock:
            if device.netns is not None:
                self._namespaces.add(device.netns)
            self._devices[device] = _SimulatedDevice(profile)

    def remove_device(self, device: DeviceRef) -> None:
        """Delete ``device``; later calls naming it raise DeviceGone."""
        with self._lock:
            self._devices.pop(device, None)
            self._vanishing.discard(device)

    def remove_namespace(self, netns: str) -> None:
        """Delete the namespace and its devices; later calls naming it raise TogglesUnavailable."""
        with self._lock:
            self._namespaces.discard(netns)
            for device in [device for device in self._devices if device.netns == netns]:
                del self._devices[device]

    def vanish_during_next_apply(self, device: DeviceRef) -> None:
        """Make the device disappear inside the next apply naming it, after its state was read
        and before a change request is sent: that apply raises DeviceGone if it has a change to
        send (one that has none returns normally, as the real one would), and the device is
        gone afterwards either way."""
        with self._lock:
            self._vanishing.add(device)

    def limit(self, device: DeviceRef, feature: str, allowed: bool) -> None:
        """Let the driver forbid (``allowed=False``) or allow again a changeable feature being
        active, as netback does for checksum offload the frontend did not agree to."""
        with self._lock:
            self._device(device).limit(feature, allowed)

    def request_as_other_writer(self, device: DeviceRef, changes: Mapping[str, bool]) -> None:
        """Change requested features as another program (an administrator's ethtool) would,
        without recording an apply."""
        with self._lock:
            self._device(device).request(changes)

    # --- Toggles -----------------------------------------------------------------------------

    def read(self, device: DeviceRef) -> Mapping[str, FeatureState]:
        """Return the device's features; see :meth:`xenoffload.toggles.base.Toggles.read`."""
        with self._lock:
            return self._device(device).state()

    def apply(self, device: DeviceRef, wanted: Mapping[str, bool]) -> ApplyResult:
        """Request ``wanted`` and return the verified outcomes; see
        :meth:`xenoffload.toggles.base.Toggles.apply`."""
        wanted = dict(wanted)
        with self._lock:
            simulated = self._device(device)
            before = simulated.state()
            plan = plan_apply(before, wanted)
            if device in self._vanishing:
                self._vanishing.discard(device)
                del self._devices[device]
                if plan.to_send:
                    self.applies.append(RecordedApply(device, wanted, {}, {}, None))
                    raise DeviceGone("device vanished during apply", device)
            if not plan.to_send:
                result = ApplyResult(device, plan.settled, set_issued=False)
                self.applies.append(RecordedApply(device, wanted, {}, {}, result))
                return result
            if not self.privileged:
                self.applies.append(RecordedApply(device, wanted, {}, {}, None))
                raise TogglePermissionDenied(
                    "operation not permitted (changing features needs CAP_NET_ADMIN)", device
                )
            simulated.request(plan.to_send)
            after = simulated.state()
            outcomes = judge_after(wanted, plan.to_send, after)
            result = ApplyResult(
                device,
                outcomes,
                set_issued=True,
                side_effects=side_effects(before, after, wanted),
            )
            changed = {
                name: state.active
                for name, state in after.items()
                if before[name].active != state.active
            }
            self.applies.append(RecordedApply(device, wanted, dict(plan.to_send), changed, result))
            return result

    def _device(self, device: DeviceRef) -> _SimulatedDevice:
        simulated = self._devices.get(device)
        if simulated is not None:
            return simulated
        if self._auto_profile is not None:
            if device.netns is not None:
                self._namespaces.add(device.netns)
            simulated = self._devices[device] = _SimulatedDevice(self._auto_profile(device))
            return simulated
        if device.netns is not None and device.netns not in self._namespaces:
            raise TogglesUnavailable(f"network namespace {device.netns!r} does not exist", device)
        raise DeviceGone("no such device", device)
