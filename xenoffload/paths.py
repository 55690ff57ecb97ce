"""Where a vif lives in XenStore: every path xenoffload builds or parses is here and nowhere else.

Builders (:class:`VifPaths`, :func:`domain_path`, :func:`override_path`, ...) and parsers
(:func:`parse_backend_dir`, :func:`route_backend_event`, ...) are pure functions: which vif a
watch event concerns is protocol knowledge, decided here from the path alone.
"""

from __future__ import annotations

import enum
import re

import attrs

from xenoffload.schema import Role

__all__ = [
    "VifPaths",
    "Route",
    "RouteKind",
    "domain_path",
    "domain_name_path",
    "backend_vif_root",
    "frontend_vif_root",
    "override_root",
    "domain_vm_path",
    "vm_dir",
    "override_path",
    "xapi_vif_config_root",
    "parse_backend_dir",
    "parse_frontend_dir",
    "route_backend_event",
    "route_guest_event",
]

_ID = r"(\d{1,10})"
_BACKEND_RE = re.compile(rf"\A/local/domain/{_ID}/backend/vif/{_ID}/{_ID}\Z")
_FRONTEND_RE = re.compile(rf"\A/local/domain/{_ID}/device/vif/{_ID}\Z")
#: A backend vif directory or a node below it: (backend domid, guest domid, devid).
_BACKEND_TREE_RE = re.compile(rf"\A/local/domain/{_ID}/backend/vif/{_ID}/{_ID}(?:/|\Z)")
#: A frontend vif directory or a node below it: (guest domid, devid).
_FRONTEND_TREE_RE = re.compile(rf"\A/local/domain/{_ID}/device/vif/{_ID}(?:/|\Z)")
#: A guest's home, its ``device`` or its ``device/vif`` directory: (guest domid).
_GUEST_VIFS_OR_ABOVE_RE = re.compile(rf"\A/local/domain/{_ID}(?:/device(?:/vif)?)?\Z")
#: A domain's name node, which libxl_domain_rename rewrites: (domid).
_NAME_RE = re.compile(rf"\A/local/domain/{_ID}/name\Z")
#: A backend's per-guest vif directory: (backend domid, guest domid).
_BACKEND_GUEST_RE = re.compile(rf"\A/local/domain/{_ID}/backend/vif/{_ID}\Z")
#: xapi's per-VIF other-config of a guest, or a node below it: (guest domid, devid).
_XAPI_TREE_RE = re.compile(rf"\A/xapi/{_ID}/private/vif/{_ID}/other-config(?:/|\Z)")

#: xapi's tree down to one VIF (a parent of its other-config): (guest domid, devid), optional.
_XAPI_ABOVE_RE = re.compile(rf"\A/xapi(?:/{_ID}(?:/private(?:/vif(?:/{_ID})?)?)?)?\Z")

#: Where xapi keeps its private per-domain data (XenServer / XCP-ng dom0).
XAPI_ROOT = "/xapi"


def domain_path(domid: int) -> str:
    """``/local/domain/<domid>``: a domain's home."""
    return f"/local/domain/{domid}"


def domain_name_path(domid: int) -> str:
    """The node holding a domain's name (written by the toolstack)."""
    return f"{domain_path(domid)}/name"


def domain_vm_path(domid: int) -> str:
    """The node naming a domain's VM directory, ``/vm/<uuid>`` (written by libxl): the
    domain's UUID, which a restored, migrated or rebooted domain keeps."""
    return f"{domain_path(domid)}/vm"


def vm_dir(uuid: str) -> str:
    """``/vm/<uuid>``: the toolstack's directory of the VM with that UUID."""
    return f"/vm/{uuid}"


def backend_vif_root(backend_domid: int) -> str:
    """The directory under which a driver domain's vif backends appear, one per guest."""
    return f"{domain_path(backend_domid)}/backend/vif"


def frontend_vif_root(guest_domid: int) -> str:
    """The directory holding a guest's vif frontends, one per devid."""
    return f"{domain_path(guest_domid)}/device/vif"


def override_root(home_domid: int, role: Role) -> str:
    """The directory of run-time policy overrides steering the ``role`` agent of domain
    ``home_domid``: for a driver domain's backend agent ``<home>/xenoffload/policy`` (written
    by dom0's tools: libxl leaves a domain's home read-only to the domain), for a guest's own
    agent ``<home>/data/xenoffload/policy`` (``data`` is the one directory libxl lets a
    guest write)."""
    if role is Role.BACKEND:
        return f"{domain_path(home_domid)}/xenoffload/policy"
    return f"{domain_path(home_domid)}/data/xenoffload/policy"


def override_path(home_domid: int, role: Role, key: str) -> str:
    """One override node, ``key`` relative to :func:`override_root` (``vif/1/0``,
    ``bridge/xenbr0``, or in a guest ``vif/0``)."""
    return f"{override_root(home_domid, role)}/{key}"


def xapi_vif_config_root(guest_domid: int, devid: int) -> str:
    """xapi's copy of a VIF's ``other-config`` map (``ethtool-tx``, ``ethtool-rx``, ...)."""
    return f"{XAPI_ROOT}/{guest_domid}/private/vif/{devid}/other-config"


@attrs.frozen
class VifPaths:
    """The two directories of one vif, in libxl's layout."""

    backend_domid: int
    guest_domid: int
    devid: int

    @property
    def backend_dir(self) -> str:
        return f"{backend_vif_root(self.backend_domid)}/{self.guest_domid}/{self.devid}"

    @property
    def frontend_dir(self) -> str:
        return f"{frontend_vif_root(self.guest_domid)}/{self.devid}"

    def backend_key(self, name: str) -> str:
        """A node of the backend directory."""
        return f"{self.backend_dir}/{name}"

    def frontend_key(self, name: str) -> str:
        """A node of the frontend directory."""
        return f"{self.frontend_dir}/{name}"


def parse_backend_dir(path: str) -> tuple[int, int, int] | None:
    """Return (backend domid, guest domid, devid) of a canonical backend directory path, or
    None if ``path`` is not one."""
    match = _BACKEND_RE.match(path)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def parse_frontend_dir(path: str) -> tuple[int, int] | None:
    """Return (guest domid, devid) of a canonical frontend directory path, or None."""
    match = _FRONTEND_RE.match(path)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


# ---------------------------------------------------------------------------- routing events


class RouteKind(enum.Enum):
    """What a watch event concerns, for an agent."""

    VIF = "vif"              # one vif: a node in or below its backend or frontend directory
    GUEST = "guest"          # a guest's whole vif tree (or more) changed: all its vifs
    DISCOVER = "discover"    # the agent's vif root or above: list the vifs again
    OVERRIDES = "overrides"  # the agent's run-time policy overrides
    XAPI = "xapi"            # xapi's other-config of one vif
    NAME = "name"            # a guest's name (libxl_domain_rename: a migration's, xl rename)
    IGNORE = "ignore"        # nothing an agent acts on


@attrs.frozen
class Route:
    """Where a watch event goes: its kind and the vif or guest it names."""

    kind: RouteKind
    guest_domid: int | None = None
    devid: int | None = None
    #: For a VIF route: the path is in the agent's own directory of the vif (else its peer's).
    own: bool = False

    @property
    def vif(self) -> tuple[int, int]:
        """(guest domid, devid) of a VIF or XAPI route."""
        assert self.guest_domid is not None and self.devid is not None
        return self.guest_domid, self.devid


_IGNORE = Route(RouteKind.IGNORE)
_DISCOVER = Route(RouteKind.DISCOVER)
_OVERRIDES = Route(RouteKind.OVERRIDES)


def _is_at_or_above(path: str, node: str) -> bool:
    return path == node or node.startswith(path + "/")


def route_backend_event(backend_domid: int, path: str) -> Route:
    """Return what an event on ``path`` means for the backend agent of ``backend_domid``
    (which watches ``/local/domain`` and :data:`XAPI_ROOT`): its vifs' directories, guests'
    vif trees and names, its overrides, xapi's other-config."""
    root = backend_vif_root(backend_domid)
    if _is_at_or_above(path, root):
        return _DISCOVER  # the vif root or a parent: vifs may have come or gone wholesale
    if (match := _BACKEND_TREE_RE.match(path)) is not None:
        if int(match.group(1)) != backend_domid:
            return _IGNORE
        return Route(RouteKind.VIF, int(match.group(2)), int(match.group(3)), own=True)
    if (match := _BACKEND_GUEST_RE.match(path)) is not None:
        if int(match.group(1)) != backend_domid:
            return _IGNORE
        return Route(RouteKind.GUEST, int(match.group(2)))
    overrides = override_root(backend_domid, Role.BACKEND)
    if path.startswith(overrides + "/") or _is_at_or_above(path, overrides):
        return _OVERRIDES
    if (match := _FRONTEND_TREE_RE.match(path)) is not None:
        return Route(RouteKind.VIF, int(match.group(1)), int(match.group(2)))
    if (match := _GUEST_VIFS_OR_ABOVE_RE.match(path)) is not None:
        return Route(RouteKind.GUEST, int(match.group(1)))
    if (match := _NAME_RE.match(path)) is not None:
        # libxl renames a migrating domain: it arrives as "<name>--incoming", is renamed
        # "<name>" once it runs (and the source's "<name>--migratedaway"); xl rename too.
        return Route(RouteKind.NAME, int(match.group(1)))
    if (match := _XAPI_TREE_RE.match(path)) is not None:
        return Route(RouteKind.XAPI, int(match.group(1)), int(match.group(2)))
    if (match := _XAPI_ABOVE_RE.match(path)) is not None:
        # A parent of other-config nodes: re-read every vif's beneath it.
        guest, devid = match.group(1), match.group(2)
        return Route(RouteKind.XAPI, int(guest) if guest else None,
                     int(devid) if devid else None)
    return _IGNORE


def route_guest_event(guest_domid: int, path: str) -> Route:
    """Return what an event on ``path`` means for the guest agent of ``guest_domid`` (which
    watches its own ``device/vif``, its overrides and each vif's backend directory)."""
    root = frontend_vif_root(guest_domid)
    if _is_at_or_above(path, root):
        return _DISCOVER
    if (match := _FRONTEND_TREE_RE.match(path)) is not None:
        if int(match.group(1)) != guest_domid:
            return _IGNORE
        return Route(RouteKind.VIF, guest_domid, int(match.group(2)), own=True)
    overrides = override_root(guest_domid, Role.FRONTEND)
    if path.startswith(overrides + "/") or _is_at_or_above(path, overrides):
        return _OVERRIDES
    if (match := _BACKEND_TREE_RE.match(path)) is not None:
        if int(match.group(2)) != guest_domid:
            return _IGNORE
        return Route(RouteKind.VIF, guest_domid, int(match.group(3)))
    return _IGNORE
