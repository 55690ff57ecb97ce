"""A simulated kernel for ``--toggles dry-run`` (and tests): devices with ethtool features,
and tc answered over a simulated rtnetlink; every apply is recorded.

Devices are created from a :class:`FeatureProfile`. The profiles provided are modelled on
real devices: :data:`NETBACK_VIF` and :data:`NETFRONT_ETH` on ``ethtool -k`` of a netback
``vif1.0`` and a netfront ``eth0`` captured on a Xen 4.17 lab (Linux 6.1), :data:`VETH` on a
veth of the development machine. The simulation follows the kernel's rules: a request only
moves a changeable feature's requested ("wanted") bit; the active state is the requested one,
minus what a driver limit forbids (:meth:`SimulatedKernel.limit`, e.g. netback capping tx
checksum by the frontend's keys) and minus what a dependency drops (TSO goes off when the
transmit checksum of its family goes off, and returns when it comes back). Outcomes are
decided by the same rules as the netlink implementation (:mod:`xenoffload.toggles.plan`).

Traffic control is simulated one level lower, as a kernel answering rtnetlink requests
(:meth:`SimulatedKernel.rtnetlink`): a dry run's :class:`~xenoffload.toggles.tc_netlink.NetlinkTc`
sends the very requests it would send to the real kernel and gets the answers, refusals and
extended-ACK texts the real kernel gives (recorded in tests/toggles/fixtures/). What a
profile's kernel has is its :class:`TcSupport`: Debian's dom0 and guest kernels
(:data:`DEBIAN_TC`: clsact, u32, matchall, act_csum) for the netback and netfront profiles,
this development machine's kernel (:data:`MINIMAL_TC`: clsact and u32, no act_csum, no
matchall) for the veth one, and :data:`NETFRONT_ETH_NO_ACT_CSUM` for a guest kernel without
act_csum.
"""

from __future__ import annotations

import errno
import re
import socket
import struct
import threading
from collections.abc import Callable, Mapping

import attrs

from xenoffload.toggles import tc_codec
from xenoffload.toggles.base import (
    ApplyResult,
    DeviceGone,
    DeviceRef,
    FeatureState,
    TogglePermissionDenied,
    TogglesUnavailable,
)
from xenoffload.toggles.nl_codec import (
    Answer,
    ErrorAnswer,
    Message,
    NetlinkDecodeError,
    NetlinkTransport,
    Request,
    attribute_map,
    decode_string,
    decode_u32,
    encode_attribute,
    nested,
    string,
    u32,
)
from xenoffload.toggles.plan import judge_after, plan_apply, side_effects

__all__ = [
    "ProfileFeature",
    "FeatureProfile",
    "TcSupport",
    "DEBIAN_TC",
    "MINIMAL_TC",
    "NETBACK_VIF",
    "NETFRONT_ETH",
    "NETFRONT_ETH_NO_ACT_CSUM",
    "VETH",
    "DEPENDENCIES",
    "RecordedApply",
    "SimulatedKernel",
    "profile_for_name",
]


@attrs.frozen
class ProfileFeature:
    """A feature's initial state and whether the driver lets it change."""

    on: bool
    changeable: bool


@attrs.frozen
class TcSupport:
    """What a simulated kernel's traffic control has: the clsact qdisc, the classifiers and
    the actions (by kind), built in or as loadable modules."""

    clsact: bool = True
    classifiers: frozenset[str] = frozenset({"u32", "matchall"})
    actions: frozenset[str] = frozenset({"csum"})


#: Debian 12's dom0 and guest kernels: sch_ingress, cls_u32, cls_matchall, act_csum (modules).
DEBIAN_TC = TcSupport()
#: This development machine's kernel: clsact and u32 built in; no act_csum, no matchall.
MINIMAL_TC = TcSupport(classifiers=frozenset({"u32"}), actions=frozenset({"mirred"}))


@attrs.frozen
class FeatureProfile:
    """A kind of device: its features (kernel names) with initial state and changeability,
    its kernel's traffic control, and its GSO limits (``gso_max_segs`` starts at
    ``tso_max_segs``, as the kernel sets it)."""

    name: str
    features: Mapping[str, ProfileFeature]
    tc: TcSupport = DEBIAN_TC
    tso_max_segs: int = 65535


def _profile(name: str, spec: Mapping[str, str], tc: TcSupport = DEBIAN_TC) -> FeatureProfile:
    # spec values as ethtool -k prints them: "on", "off", "on [fixed]", "off [fixed]".
    return FeatureProfile(
        name,
        {
            feature: ProfileFeature(on=text.startswith("on"), changeable="fixed" not in text)
            for feature, text in spec.items()
        },
        tc,
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
    MINIMAL_TC,
)

#: Netfront in a guest whose kernel lacks act_csum: the tc enforcement must say so.
NETFRONT_ETH_NO_ACT_CSUM = attrs.evolve(NETFRONT_ETH, name="netfront-eth-no-act-csum",
                                        tc=TcSupport(actions=frozenset()))

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


@attrs.define
class _SimulatedFilter:
    """One filter on a simulated tc block, as its creation request described it."""

    block: str  # "ingress" or "egress"
    priority: int
    protocol: int
    kind: str
    handle: int
    options: bytes  # the TCA_OPTIONS payload, dumped back as sent


class _SimulatedDevice:
    def __init__(self, profile: FeatureProfile, ifindex: int) -> None:
        self.profile = profile
        self.ifindex = ifindex
        self.changeable = {name for name, spec in profile.features.items() if spec.changeable}
        self.requested = {name: spec.on for name, spec in profile.features.items()}
        self.forbidden: set[str] = set()
        self.active = self._compute()
        self.gso_max_segs = profile.tso_max_segs
        self.slot: str | None = None  # the ingress slot's qdisc kind
        self.filters: list[_SimulatedFilter] = []

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


class SimulatedKernel:
    """:class:`~xenoffload.toggles.base.Toggles` over simulated devices.

    ``auto_profile``: when given, a device not added beforehand is created on first use with
    the profile it returns (a dry run uses :func:`profile_for_name`); otherwise an unknown
    device is :class:`DeviceGone`. ``privileged=False`` plays an unprivileged caller: reading
    works, a change request raises TogglePermissionDenied. ``applies`` records every apply
    call in order (tests/toggles/simkernel.py has what only tests do to it).
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
        self._next_ifindex = 2
        #: (namespace, ifindex) -> device, rebuilt after any device came or went.
        self._by_index: dict[tuple[str | None, int], _SimulatedDevice] | None = None
        self.applies: list[RecordedApply] = []
        #: Every rtnetlink request the simulated kernel answered: (device's namespace, label,
        #: refusal or None), reads included.
        self.tc_requests: list[tuple[str | None, str, ErrorAnswer | None]] = []

    # --- the simulated world ---------------------------------------------------------------

    def add_device(self, device: DeviceRef, profile: FeatureProfile) -> None:
        """Create ``device`` (and its namespace) with the profile's initial state."""
        with self._lock:
            if device.netns is not None:
                self._namespaces.add(device.netns)
            self._put(device, self._new_device(profile))

    def limit(self, device: DeviceRef, feature: str, allowed: bool) -> None:
        """Let the driver forbid (``allowed=False``) or allow again a changeable feature being
        active, as netback does for checksum offload the frontend did not agree to."""
        with self._lock:
            self._device(device).limit(feature, allowed)

    def rtnetlink(self, device: DeviceRef) -> NetlinkTransport:
        """Return the simulated kernel's rtnetlink for the device's namespace (the
        ``transport_for`` of a dry run's NetlinkTc). Raises TogglesUnavailable if the
        namespace does not exist (unless devices are created on first use)."""
        with self._lock:
            if (device.netns is not None and device.netns not in self._namespaces
                    and self._auto_profile is None):
                raise TogglesUnavailable(f"network namespace {device.netns!r} does not exist",
                                         device)
        return _SimulatedRtnetlink(self, device.netns)

    def device_by_index(self, netns: str | None, ifindex: int) -> _SimulatedDevice | None:
        """Return the simulated device of ``ifindex`` in ``netns``, or None."""
        index = self._by_index
        if index is None:
            index = self._by_index = {(device.netns, simulated.ifindex): simulated
                                      for device, simulated in self._devices.items()}
        return index.get((netns, ifindex))

    def _put(self, device: DeviceRef, simulated: _SimulatedDevice) -> None:
        """Make ``simulated`` the device ``device`` names, keeping the ifindex index current
        (a new device used to drop the index, rebuilt over every device on the next lookup:
        quadratic when a dry run creates its devices one by one)."""
        old = self._devices.get(device)
        self._devices[device] = simulated
        index = self._by_index
        if index is not None:
            if old is not None:
                index.pop((device.netns, old.ifindex), None)
            index[(device.netns, simulated.ifindex)] = simulated

    def _new_device(self, profile: FeatureProfile) -> _SimulatedDevice:
        simulated = _SimulatedDevice(profile, self._next_ifindex)
        self._next_ifindex += 1
        return simulated

    # --- Toggles -----------------------------------------------------------------------------

    def read(self, device: DeviceRef) -> Mapping[str, FeatureState]:
        """Return the device's features; see :meth:`xenoffload.toggles.base.Toggles.read`."""
        with self._lock:
            return self._device(device).state()

    def apply(self, device: DeviceRef, wanted: Mapping[str, bool],
              before: Mapping[str, FeatureState] | None = None) -> ApplyResult:
        """Request ``wanted`` and return the verified outcomes; see
        :meth:`xenoffload.toggles.base.Toggles.apply` (``before``: planned from, not read
        again)."""
        wanted = dict(wanted)
        with self._lock:
            simulated = self._device(device)
            if before is None:
                before = simulated.state()
            plan = plan_apply(before, wanted)
            if device in self._vanishing:
                self._vanishing.discard(device)
                del self._devices[device]
                self._by_index = None
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
            simulated = self._new_device(self._auto_profile(device))
            self._put(device, simulated)
            return simulated
        if device.netns is not None and device.netns not in self._namespaces:
            raise TogglesUnavailable(f"network namespace {device.netns!r} does not exist", device)
        raise DeviceGone("no such device", device)


# --- the simulated rtnetlink kernel ----------------------------------------------------------

#: The kernel's extended-ACK texts for the refusals simulated here; the first three are the
#: ones recorded from a real kernel in tests/toggles/fixtures/tc-replies.json (checked there).
ACTION_MISSING = "Failed to load TC action module"
CLASSIFIER_MISSING = "TC classifier not found"
QDISC_EXISTS = "Exclusivity flag on, cannot modify"
QDISC_KIND_MISSING = "Specified qdisc kind is unknown"
NO_PARENT_QDISC = "Parent Qdisc doesn't exists"
PROTOCOL_MISMATCH = "Protocol mismatch for filter with specified priority"
KIND_MISMATCH = "Specified filter kind does not match existing one"
NO_FILTER = "Filter with specified priority/protocol not found"
NO_CHAIN = "Cannot find specified filter chain"
QDISC_NAME_MISMATCH = "Invalid qdisc name: must match existing qdisc"
NO_QDISC = "Invalid handle"
_INGRESS_PARENT = 0xFFFFFFF2
_EGRESS_PARENT = 0xFFFFFFF3
_U32_HASH_TABLE = 0x80000000
_U32_FIRST_NODE = 0x80000800


class _SimulatedRtnetlink:
    """The simulated kernel's rtnetlink in one namespace: answers the requests the tc
    enforcement sends as Linux does (an :class:`~xenoffload.toggles.nl_codec.NetlinkTransport`)."""

    def __init__(self, world: SimulatedKernel, netns: str | None) -> None:
        self._world = world
        self._netns = netns

    def close(self) -> None:
        """Nothing to release."""

    def exchange(self, request: Request, label: str) -> Answer | ErrorAnswer:
        """Answer ``request`` from the simulated devices of this namespace."""
        with self._world._lock:
            try:
                outcome = self._answer(Message(request.kind, request.flags, 0, 0,
                                               request.payload))
            except (NetlinkDecodeError, struct.error, KeyError):
                outcome = ErrorAnswer(errno.EINVAL, "malformed request")
            self._world.tc_requests.append(
                (self._netns, label, outcome if isinstance(outcome, ErrorAnswer) else None))
            return outcome

    def _device_by_index(self, ifindex: int) -> _SimulatedDevice | None:
        return self._world.device_by_index(self._netns, ifindex)

    def _answer(self, message: Message) -> Answer | ErrorAnswer:
        kind = message.kind
        modifying = kind in (tc_codec.RTM_NEWLINK, tc_codec.RTM_NEWQDISC, tc_codec.RTM_DELQDISC,
                             tc_codec.RTM_NEWTFILTER, tc_codec.RTM_DELTFILTER)
        if modifying and not self._world.privileged:
            return ErrorAnswer(errno.EPERM)
        if kind == tc_codec.RTM_GETLINK:
            return self._getlink(message)
        if kind == tc_codec.RTM_NEWLINK:
            _family, _type, ifindex, _flags, _change = tc_codec.IFINFOMSG.unpack_from(
                message.payload)
            simulated = self._device_by_index(ifindex)
            if simulated is None:
                return ErrorAnswer(errno.ENODEV)
            attributes = attribute_map(message.payload[tc_codec.IFINFOMSG.size :])
            value = decode_u32(attributes[tc_codec.IFLA_GSO_MAX_SEGS])
            if value > simulated.profile.tso_max_segs:
                return ErrorAnswer(errno.EINVAL, "too big gso_max_segs")
            simulated.gso_max_segs = value
            return Answer()
        header = tc_codec.decode_tc_header(message)
        simulated = self._device_by_index(header.ifindex)
        if simulated is None:
            return ErrorAnswer(errno.ENODEV)
        if kind == tc_codec.RTM_GETQDISC:
            return Answer(() if simulated.slot is None else (_tc_message(
                tc_codec.RTM_NEWQDISC, simulated.ifindex, tc_codec.CLSACT_HANDLE,
                tc_codec.TC_H_CLSACT, 0, string(tc_codec.TCA_KIND, simulated.slot)),))
        if kind == tc_codec.RTM_NEWQDISC:
            qdisc = tc_codec.decode_qdisc(message).kind
            if simulated.slot is not None:
                return ErrorAnswer(errno.EEXIST, QDISC_EXISTS)
            if qdisc not in ("clsact", "ingress") or not simulated.profile.tc.clsact:
                return ErrorAnswer(errno.ENOENT, QDISC_KIND_MISSING)
            simulated.slot = qdisc
            return Answer()
        if kind == tc_codec.RTM_DELQDISC:
            if simulated.slot is None:
                return ErrorAnswer(errno.EINVAL, NO_QDISC)
            if simulated.slot != tc_codec.decode_qdisc(message).kind:
                return ErrorAnswer(errno.EINVAL, QDISC_NAME_MISMATCH)
            simulated.slot = None
            simulated.filters.clear()
            return Answer()
        block = _block(simulated, header.parent)
        if kind == tc_codec.RTM_GETTFILTER:
            return Answer(() if block is None else _dump(simulated, block, header.parent))
        if block is None:
            return ErrorAnswer(errno.EINVAL, NO_PARENT_QDISC)
        if kind == tc_codec.RTM_NEWTFILTER:
            return _new_filter(simulated, block, tc_codec.decode_filter(message),
                               attribute_map(message.payload[tc_codec.TCMSG.size :]))
        if kind == tc_codec.RTM_DELTFILTER:
            group = [entry for entry in simulated.filters if entry.block == block
                     and (entry.priority, entry.protocol) == (header.priority, header.protocol)]
            if not group:
                return ErrorAnswer(errno.ENOENT, NO_FILTER if any(
                    entry.block == block for entry in simulated.filters) else NO_CHAIN)
            simulated.filters = [entry for entry in simulated.filters if entry not in group]
            return Answer()
        return ErrorAnswer(errno.EOPNOTSUPP, f"request type {kind} is not simulated")

    def _getlink(self, message: Message) -> Answer | ErrorAnswer:
        attributes = attribute_map(message.payload[tc_codec.IFINFOMSG.size :])
        name = decode_string(attributes.get(tc_codec.IFLA_IFNAME, b""))
        try:
            device = DeviceRef(name, self._netns)
        except ValueError:
            return ErrorAnswer(errno.EINVAL, "invalid name")
        simulated = self._world._devices.get(device)
        if simulated is None and self._world._auto_profile is not None:
            simulated = self._world._device(device)
        if simulated is None:
            return ErrorAnswer(errno.ENODEV)
        payload = (tc_codec.IFINFOMSG.pack(socket.AF_UNSPEC, 1, simulated.ifindex, 0, 0)
                   + string(tc_codec.IFLA_IFNAME, name)
                   + u32(tc_codec.IFLA_GSO_MAX_SEGS, simulated.gso_max_segs)
                   + u32(tc_codec.IFLA_TSO_MAX_SEGS, simulated.profile.tso_max_segs))
        return Answer((Message(tc_codec.RTM_NEWLINK, 0, 0, 0, payload),))


def _block(simulated: _SimulatedDevice, parent: int) -> str | None:
    """Return the tc block a filter parent reaches: an ingress qdisc has one block for any
    parent (so an "egress" filter lands on ingress, as on Linux); clsact has two."""
    if simulated.slot == "ingress":
        return "ingress"
    if simulated.slot == "clsact" and parent in (_INGRESS_PARENT, _EGRESS_PARENT):
        return "ingress" if parent == _INGRESS_PARENT else "egress"
    return None


def _tc_message(kind: int, ifindex: int, handle: int, parent: int, info: int,
                attributes: bytes) -> Message:
    return Message(kind, 0, 0, 0, tc_codec.TCMSG.pack(socket.AF_UNSPEC, ifindex, handle,
                                                      parent, info) + attributes)


def _dump(simulated: _SimulatedDevice, block: str, parent: int) -> tuple[Message, ...]:
    """Return a filter dump as Linux writes it: per classifier instance a header entry, for
    u32 its hash table, then the filters."""
    messages = []
    seen: set[tuple[int, int]] = set()
    for entry in sorted((entry for entry in simulated.filters if entry.block == block),
                        key=lambda entry: (entry.priority, entry.handle)):
        info = tc_codec.filter_info(entry.priority, entry.protocol)
        kind = string(tc_codec.TCA_KIND, entry.kind) + u32(tc_codec.TCA_CHAIN, 0)
        if (entry.priority, entry.protocol) not in seen:
            seen.add((entry.priority, entry.protocol))
            messages.append(_tc_message(tc_codec.RTM_NEWTFILTER, simulated.ifindex, 0, parent,
                                        info, kind))
            if entry.kind == "u32":
                messages.append(_tc_message(
                    tc_codec.RTM_NEWTFILTER, simulated.ifindex, _U32_HASH_TABLE, parent, info,
                    kind + nested(tc_codec.TCA_OPTIONS, u32(tc_codec.TCA_U32_DIVISOR, 1),
                                  flagged=False)))
        messages.append(_tc_message(tc_codec.RTM_NEWTFILTER, simulated.ifindex, entry.handle,
                                    parent, info, kind + encode_attribute(tc_codec.TCA_OPTIONS,
                                                                          entry.options)))
    return tuple(messages)


def _new_filter(simulated: _SimulatedDevice, block: str, spec: tc_codec.FilterInfo,
                attributes: dict[int, bytes]) -> Answer | ErrorAnswer:
    support = simulated.profile.tc
    same_priority = [entry for entry in simulated.filters
                     if entry.block == block and entry.priority == spec.priority]
    if any(entry.protocol != spec.protocol for entry in same_priority):
        return ErrorAnswer(errno.EINVAL, PROTOCOL_MISMATCH)
    if spec.kind not in support.classifiers:
        return ErrorAnswer(errno.ENOENT, CLASSIFIER_MISSING)
    if any(entry.kind != spec.kind for entry in same_priority):
        return ErrorAnswer(errno.EINVAL, KIND_MISMATCH)
    if any(action.kind not in support.actions for action in spec.actions):
        return ErrorAnswer(errno.ENOENT, ACTION_MISSING)
    if spec.kind == "matchall" and same_priority:
        return ErrorAnswer(errno.EEXIST)
    handle = (_U32_FIRST_NODE + len(same_priority)) if spec.kind == "u32" else 1
    simulated.filters.append(_SimulatedFilter(block, spec.priority, spec.protocol, spec.kind,
                                              handle, attributes.get(tc_codec.TCA_OPTIONS, b"")))
    return Answer()
