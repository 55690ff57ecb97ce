"""Where a vif lives in XenStore: every path xenoffload uses is built here and nowhere else."""

from __future__ import annotations

import re

import attrs

__all__ = ["VifPaths", "domain_path", "parse_backend_dir", "parse_frontend_dir",
           "backend_vif_root", "frontend_vif_root", "backend_device_name", "OVERRIDES_ROOT"]

_BACKEND_RE = re.compile(r"\A/local/domain/(\d{1,10})/backend/vif/(\d{1,10})/(\d{1,10})\Z")
_FRONTEND_RE = re.compile(r"\A/local/domain/(\d{1,10})/device/vif/(\d{1,10})\Z")

#: Run-time policy overrides written by ``xenoffload set`` (dom0-only node).
OVERRIDES_ROOT = "/local/domain/0/xenoffload/policy"


def domain_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def backend_vif_root(backend_domid: int) -> str:
    """The directory under which a driver domain's vif backends appear, one per guest."""
    return f"{domain_path(backend_domid)}/backend/vif"


def frontend_vif_root(guest_domid: int) -> str:
    return f"{domain_path(guest_domid)}/device/vif"


def backend_device_name(guest_domid: int, devid: int) -> str:
    """The name netback gives the vif's kernel device in the driver domain."""
    return f"vif{guest_domid}.{devid}"


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

    def key(self, directory: str, name: str) -> str:
        return f"{directory}/{name}"

    @property
    def override(self) -> str:
        return f"{OVERRIDES_ROOT}/{self.guest_domid}/{self.devid}"


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
