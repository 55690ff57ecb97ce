"""Which kernel device carries a vif's end: the rules for naming it, and the guest's lookup.

Backend end (driver domain): the name the toolstack chose (xl's ``vifname=``, recorded by
libxl in the backend's ``vifname`` key), else ``--device-pattern`` (default
``vif{domid}.{devid}``, netback's own name). Frontend end (guest): the netfront device sysfs
lists for the vif (``/sys/bus/xen/devices/vif-<devid>/net/``), else ``--device-pattern``; with
neither, no device is guessed: the end reports ``no-device`` and touches nothing (a guest agent
run on a machine without Xen vifs must never switch a real NIC's features).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from xenoffload.endpoint import Enforcement
from xenoffload.negotiation import LinkResult
from xenoffload.policy import VifIdentity
from xenoffload.schema import Role
from xenoffload.toggles.base import DeviceRef

if TYPE_CHECKING:
    from xenoffload.enforce import Enforcers

__all__ = ["DevicePattern", "PatternError", "backend_device", "netback_name", "sysfs_netfront",
           "GuestDeviceEnforcer", "SYSFS_XEN_DEVICES"]

SYSFS_XEN_DEVICES = Path("/sys/bus/xen/devices")

#: Placeholders a pattern may use, per end.
_FIELDS = {Role.BACKEND: ("domid", "devid"), Role.FRONTEND: ("devid",)}


class PatternError(ValueError):
    """A ``--device-pattern`` that cannot name a device; the message says why."""


@attrs.frozen
class DevicePattern:
    """A device name pattern such as ``vif{domid}.{devid}``, checked when it is made: only the
    end's placeholders, and every name it yields is a valid Linux device name."""

    role: Role
    text: str = attrs.field()

    @text.validator
    def _check(self, _attribute: object, value: str) -> None:
        fields = _FIELDS[self.role]
        try:
            sample = value.format(**dict.fromkeys(fields, 32751))
            value.format(**dict.fromkeys(fields, 0))
        except (KeyError, IndexError) as error:
            raise PatternError(f"device pattern {value!r}: unknown placeholder {error}; "
                               f"use {', '.join('{' + f + '}' for f in fields)}") from None
        except ValueError as error:
            raise PatternError(f"device pattern {value!r}: {error}") from None
        try:
            DeviceRef(sample)
        except ValueError:
            raise PatternError(f"device pattern {value!r} gives {sample!r}, not a network "
                               f"device name (1-15 bytes, no '/', ':' or white space)") from None

    def name(self, vif: VifIdentity) -> str:
        fields = {"domid": vif.domid, "devid": vif.devid}
        return self.text.format(**{f: fields[f] for f in _FIELDS[self.role]})


def backend_device(vif: VifIdentity, pattern: DevicePattern | None,
                   netns: str | None) -> DeviceRef:
    """Return the driver domain's device of ``vif``: an explicit pattern, else the
    toolstack's ``vifname``, else ``vif<domid>.<devid>``. Raises ValueError for a
    ``vifname`` that is not a device name."""
    if pattern is not None:
        return DeviceRef(pattern.name(vif), netns)
    if vif.vifname:
        return DeviceRef(vif.vifname, netns)
    return DeviceRef(netback_name(vif.domid, vif.devid), netns)


def netback_name(domid: int, devid: int) -> str:
    """The name netback gives the device of guest ``domid``'s vif ``devid``."""
    return f"vif{domid}.{devid}"


def sysfs_netfront(devid: int, root: Path = SYSFS_XEN_DEVICES) -> str | None:
    """Return the name of the netfront device of vif ``devid`` as sysfs lists it, or None when
    sysfs shows no such Xen vif."""
    try:
        names = sorted(p.name for p in (root / f"vif-{devid}" / "net").iterdir())
    except OSError:
        return None
    return names[0] if names else None


@attrs.define
class GuestDeviceEnforcer:
    """The guest end's enforcer when no pattern names the device: looks the netfront device up
    in sysfs at every apply (a vif hot-plugged later is found then). While sysfs shows none it
    applies nothing and reports ``no-device`` (retried), never a guessed ``eth<devid>``."""

    enforcers: Enforcers
    devid: int
    netns: str | None = None
    root: Path = SYSFS_XEN_DEVICES

    def enforce(self, role: Role, result: LinkResult) -> Enforcement:
        name = sysfs_netfront(self.devid, self.root)
        if name is None:
            where = self.root / f"vif-{self.devid}" / "net"
            return Enforcement(f"no-device: no Xen vif {self.devid} in sysfs", retry=True,
                               details=(f"{where} lists no device; name it with "
                                        f"--device-pattern",))
        return self.enforcers.for_device(DeviceRef(name, self.netns)).enforce(role, result)
