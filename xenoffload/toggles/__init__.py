"""Drive a network device's checksum offload: ethtool features, and tc where those are fixed.

``make_toggles("netlink")`` talks to the kernel (ethtool generic netlink); ``make_toggles(
"dry-run")`` simulates devices in memory and records what would be done. Both implement
:class:`~xenoffload.toggles.base.Toggles`; :func:`~xenoffload.toggles.mapping.wanted_features`
turns a negotiated result into the features to apply. Where ethtool cannot,
:class:`~xenoffload.toggles.tc_netlink.NetlinkTc` (a
:class:`~xenoffload.toggles.tc_base.TcChecksum`) computes checksums with a tc ``csum`` action
for the rules
:func:`~xenoffload.toggles.mapping.csum_rules` gives. :func:`xenoffload.enforce.make_enforcers`
builds both for an agent; docs/toggles.md describes them.
"""

from __future__ import annotations

from typing import Literal

from xenoffload.toggles.base import (
    ApplyResult,
    DeviceGone,
    DeviceRef,
    FeatureOutcome,
    FeatureState,
    ToggleError,
    TogglePermissionDenied,
    Toggles,
    TogglesUnavailable,
)
from xenoffload.toggles.mapping import wanted_features

__all__ = [
    "ApplyResult",
    "DeviceGone",
    "DeviceRef",
    "FeatureOutcome",
    "FeatureState",
    "ToggleError",
    "TogglePermissionDenied",
    "Toggles",
    "TogglesUnavailable",
    "make_toggles",
    "wanted_features",
]


def make_toggles(kind: Literal["netlink", "dry-run"]) -> Toggles:
    """Return the Toggles for the CLI's mode.

    ``"netlink"``: :class:`~xenoffload.toggles.netlink.NetlinkToggles` (the real kernel).
    ``"dry-run"``: :class:`~xenoffload.toggles.simulated.SimulatedKernel` whose devices are
    created on first use from :func:`~xenoffload.toggles.simulated.profile_for_name`.
    Raises ValueError for another kind.
    """
    if kind == "netlink":
        from xenoffload.toggles.netlink import NetlinkToggles

        return NetlinkToggles()
    if kind == "dry-run":
        from xenoffload.toggles.simulated import SimulatedKernel, profile_for_name

        return SimulatedKernel(auto_profile=profile_for_name)
    raise ValueError(f"unknown toggles kind {kind!r}: expected 'netlink' or 'dry-run'")
