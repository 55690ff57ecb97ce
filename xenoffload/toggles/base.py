"""The interface for reading and setting a network device's offload features, and its values.

Implementations (:mod:`xenoffload.toggles.netlink` over the kernel's ethtool generic-netlink
family, :mod:`xenoffload.toggles.simulated` in memory) implement :class:`Toggles`. Feature
names are the kernel's (``tx-checksum-ipv4``, ``rx-checksum``, ``tx-tcp-segmentation``...),
never ethtool's umbrella labels (``tx-checksumming``).

An apply sends only the features it means to change, verifies the result by reading back, and
reports every feature it was asked about as a :class:`FeatureOutcome`: a feature the driver
keeps fixed, or one the kernel leaves in the other state, is ``applied=False`` with a reason,
never silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import attrs

__all__ = [
    "DeviceRef",
    "FeatureState",
    "FeatureOutcome",
    "ApplyResult",
    "Toggles",
    "ToggleError",
    "DeviceGone",
    "TogglePermissionDenied",
    "TogglesUnavailable",
    "on_off",
]


def on_off(value: bool) -> str:
    """Return ``"on"`` or ``"off"``, as ethtool prints a feature."""
    return "on" if value else "off"


def _netns_name(_instance: object, _attribute: object, value: str | None) -> None:
    if value is not None and (not value or "/" in value or value in (".", "..")):
        raise ValueError(f"not a network namespace name (a file name under /run/netns): {value!r}")


def _device_name(_instance: object, _attribute: object, value: str) -> None:
    # The kernel's own rule (dev_valid_name): 1..15 bytes, no '/', ':' or whitespace, not . or ..
    if (
        not value
        or len(value.encode()) > 15
        or value in (".", "..")
        or any(char in value for char in "/:")
        or any(char.isspace() for char in value)
    ):
        raise ValueError(f"not a network device name: {value!r}")


@attrs.frozen
class DeviceRef:
    """A network device by name, in a named network namespace (a file under /run/netns) or,
    with ``netns=None``, in the namespace of the calling process."""

    name: str = attrs.field(validator=_device_name)
    netns: str | None = attrs.field(default=None, validator=_netns_name)

    def __str__(self) -> str:
        return self.name if self.netns is None else f"{self.netns}/{self.name}"


@attrs.frozen
class FeatureState:
    """One kernel feature of one device, as ``ethtool -k`` shows it.

    ``active``: in effect now. ``requested``: what the administrator asked for (the kernel's
    "wanted" bit; ethtool prints ``[requested on]`` when it differs from ``active`` on a
    changeable feature). ``fixed``: the driver does not let it be changed (``[fixed]``).
    """

    active: bool
    requested: bool
    fixed: bool

    def __str__(self) -> str:
        if self.fixed:
            return f"{on_off(self.active)} [fixed]"
        if self.requested != self.active:
            return f"{on_off(self.active)} [requested {on_off(self.requested)}]"
        return on_off(self.active)


@attrs.frozen
class FeatureOutcome:
    """What became of one requested feature.

    ``applied``: after the apply the feature is active in the requested state (whether or not
    it had to change). Otherwise ``refused_reason`` says why: the driver keeps it fixed, the
    kernel keeps it in the other state although requested, the kernel refused the request
    (its extended-ACK text), or the feature does not exist on this device.
    """

    feature: str
    requested: bool
    applied: bool
    refused_reason: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.applied != (self.refused_reason is None):
            raise ValueError("an outcome has a refused_reason exactly when it was not applied")


@attrs.frozen
class ApplyResult:
    """The result of one :meth:`Toggles.apply`.

    ``outcomes``: one per requested feature, sorted by name. ``set_issued``: whether a change
    request was sent to the kernel (False when the device already had the wanted state, or
    when nothing wanted could be changed). ``side_effects``: features that were not requested
    but whose active state changed during the apply, with their new state (the kernel drops
    TSO when transmit checksumming goes off, and restores it when it comes back).
    """

    device: DeviceRef
    outcomes: tuple[FeatureOutcome, ...]
    set_issued: bool
    side_effects: Mapping[str, bool] = attrs.field(factory=dict)

    @property
    def refused(self) -> tuple[FeatureOutcome, ...]:
        """Return the outcomes that were not applied."""
        return tuple(outcome for outcome in self.outcomes if not outcome.applied)

    @property
    def ok(self) -> bool:
        """Return True when every requested feature is active in the requested state."""
        return not self.refused

    @property
    def unsafe(self) -> tuple[FeatureOutcome, ...]:
        """Return the outcomes where "off" was requested but the feature stays on.

        For a transmit checksum feature this means the device still hands packets with blank
        checksums to its peer although the negotiation forbids it: the caller reports that
        loudly and reflects it in XenStore.
        """
        return tuple(
            outcome for outcome in self.outcomes if not outcome.requested and not outcome.applied
        )

    def outcome(self, feature: str) -> FeatureOutcome:
        """Return the outcome for ``feature``. Raises KeyError if it was not requested."""
        for candidate in self.outcomes:
            if candidate.feature == feature:
                return candidate
        raise KeyError(feature)


class ToggleError(Exception):
    """Reading or setting a device's features failed; ``device`` names it when known.
    ``status_words`` is what the ``error:`` status of docs/protocol.md says of it."""

    status_words = "toggle failure"

    def __init__(self, message: str, device: DeviceRef | None = None) -> None:
        self.device = device
        super().__init__(f"{device}: {message}" if device is not None else message)


class DeviceGone(ToggleError):
    """The device does not exist (any more): never created, deleted, or deleted mid-apply.

    When raised mid-apply, a change request may already have reached the kernel; the device it
    was sent to is gone, so nothing about a device of the same name is implied."""


class TogglePermissionDenied(ToggleError):
    """The kernel refused for lack of privilege: changing features needs CAP_NET_ADMIN in the
    device's namespace; entering a named namespace needs CAP_SYS_ADMIN."""

    status_words = "permission denied"


class TogglesUnavailable(ToggleError):
    """The means to reach the device are missing: the network namespace does not exist, the
    kernel has no ethtool netlink family, or the netlink socket failed."""

    status_words = "toggles unavailable"


class Toggles(Protocol):
    """Reads and sets a device's offload features."""

    def read(self, device: DeviceRef) -> Mapping[str, FeatureState]:
        """Return every feature of the device by kernel name.

        Raises DeviceGone, TogglesUnavailable, TogglePermissionDenied or ToggleError.
        """
        ...

    def apply(self, device: DeviceRef, wanted: Mapping[str, bool],
              before: Mapping[str, FeatureState] | None = None) -> ApplyResult:
        """Request each feature in ``wanted`` on (True) or off (False) and return the outcome
        of each, verified by reading back.

        ``before``: the device's features as :meth:`read` returned them just now (the caller
        read them to decide ``wanted``); the apply plans from it instead of reading the
        device again, so an apply costs one read when nothing changes. Only features whose
        state differs are sent; when none needs a change no request is sent
        (``set_issued=False``). Features not named in ``wanted`` keep whatever anyone else
        requested. Raises DeviceGone (also when the device vanishes mid-apply),
        TogglesUnavailable, TogglePermissionDenied or ToggleError.
        """
        ...
