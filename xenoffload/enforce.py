"""Enforcement through kernel toggles: a negotiated result → the device's checksum features.

:class:`TogglesEnforcer` is the :class:`~xenoffload.endpoint.Enforcer` of a vif end that has a
kernel device (netback's ``vifD.N`` in the driver domain, netfront's ``ethN`` in a guest). It
maps the result with :func:`~xenoffload.toggles.mapping.wanted_features`, applies it, and
turns the verified outcome into a status: ``ok``; ``unenforced: ...`` when a feature that must
be off (checksums computed) stays on; ``no-device: ...`` / ``error: ...`` when the device could
not be reached (the caller retries).
"""

from __future__ import annotations

import logging

import attrs

from xenoffload.endpoint import Enforcement
from xenoffload.negotiation import LinkResult
from xenoffload.schema import Role
from xenoffload.toggles.base import DeviceGone, DeviceRef, ToggleError, Toggles
from xenoffload.toggles.mapping import wanted_features

__all__ = ["TogglesEnforcer"]

log = logging.getLogger("xenoffload.enforce")


@attrs.define
class TogglesEnforcer:
    """Applies results to one kernel device through a :class:`Toggles` implementation."""

    toggles: Toggles
    device: DeviceRef

    def enforce(self, role: Role, result: LinkResult) -> Enforcement:
        """Apply ``result`` to the device; return what was achieved (never raises for device
        or toggle faults: they come back as a status with ``retry=True``)."""
        sends, receives = result.sends(role), result.receives(role)
        try:
            available = self.toggles.read(self.device)
            wanted = wanted_features(role.value, sends.ipv4, sends.ipv6, receives.ipv4,
                                     receives.ipv6, available)
            applied = self.toggles.apply(self.device, wanted)
        except DeviceGone as error:
            return Enforcement(f"no-device: {self.device}", retry=True, details=(str(error),))
        except ToggleError as error:
            return Enforcement(f"error: {type(error).__name__}", retry=True,
                               details=(str(error),))
        changes = " ".join(f"{o.feature}={'on' if o.requested else 'off'}"
                           for o in applied.outcomes)
        log.info("%s %s: %s (%s)", self.device, role.value, changes or "nothing to set",
                 "changed" if applied.set_issued else "already so")
        unsafe = applied.unsafe
        if unsafe:
            what = "; ".join(f"{o.feature} stays on ({o.refused_reason})" for o in unsafe)
            return Enforcement(f"unenforced: {what}", unsafe=True,
                               details=tuple(f"{o.feature}: {o.refused_reason}"
                                             for o in unsafe))
        kept_off = tuple(f"{o.feature} stays off ({o.refused_reason})" for o in applied.refused)
        return Enforcement("ok", details=kept_off)
