"""Run-time policy overrides in XenStore: read, write, clear, and restore after a lost tree.

Every agent and ``xenoffload set`` share them through XenStore (the format is
:mod:`xenoffload.overrides`; the places :func:`xenoffload.paths.override_root`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from xenoffload.overrides import OverrideSetting, format_override, parse_override, vif_key
from xenoffload.paths import domain_vm_path, override_path, override_root
from xenoffload.policy import PolicyError, vm_uuid
from xenoffload.schema import Role
from xenoffload.store.base import Store, XenStoreError

__all__ = ["read_overrides", "write_override", "clear_override", "refresh_overrides",
           "vif_override_key", "vm_vif_override_key"]

log = logging.getLogger("xenoffload.overrides")


def read_overrides(store: Store, home_domid: int, role: Role
                   ) -> tuple[dict[str, OverrideSetting], list[str]]:
    """Return every override steering ``home_domid``'s ``role`` agent (key = path relative to
    the root, e.g. ``vif/1/0``) and the problems found (malformed nodes are skipped, never
    applied)."""
    root = override_root(home_domid, role)
    found: dict[str, OverrideSetting] = {}
    problems: list[str] = []

    def walk(relative: str) -> None:
        path = f"{root}/{relative}" if relative else root
        try:
            children = store.directory(path)
        except XenStoreError:
            return
        for child in children:
            walk(f"{relative}/{child}" if relative else child)
        if relative.count("/") >= 1 and not children:
            raw = store.try_read(path)
            if raw:
                try:
                    found[relative] = parse_override(path, raw)
                except PolicyError as error:
                    problems.append(str(error))

    walk("")
    return found, problems


def refresh_overrides(store: Store, home_domid: int, role: Role,
                      known: Mapping[str, OverrideSetting], restore: bool
                      ) -> dict[str, OverrideSetting]:
    """Return the overrides steering ``home_domid``'s ``role`` agent: what XenStore holds
    (malformed nodes are logged and skipped). With ``restore`` (a new connection), when
    XenStore holds none but ``known`` is not empty and even the override directory is gone,
    XenStore restarted without its tree (or the guest, restored or migrated, is a new domain
    with a new home): ``known`` is written back and returned, so no policy is lost. (Clearing
    the last override leaves the directory: a cleared override is never restored.)"""
    found, problems = read_overrides(store, home_domid, role)
    for problem in problems:
        log.warning("override refused: %s", problem)
    if restore and not found and known and \
            store.try_read(override_root(home_domid, role)) is None:
        for key, setting in known.items():
            write_override(store, home_domid, role, key, setting)
        log.warning("restored %d policy override(s) under %s: XenStore had none (it restarted "
                    "without its tree, or this guest is now a new domain)", len(known),
                    override_root(home_domid, role))
        return dict(known)
    return found


def write_override(store: Store, home_domid: int, role: Role, key: str,
                   setting: OverrideSetting) -> str:
    """Write one override steering ``home_domid``'s ``role`` agent (``key`` like ``vif/1/0``
    or ``bridge/xenbr0``); return its path."""
    path = override_path(home_domid, role, key)
    store.write(path, format_override(setting))
    return path


def clear_override(store: Store, home_domid: int, role: Role, key: str) -> str:
    """Remove one override; return its path."""
    path = override_path(home_domid, role, key)
    store.rm(path)
    return path


def vif_override_key(store: Store, guest_domid: int, devid: int) -> str:
    """Return the key of the override of vif ``guest_domid``/``devid``: by its VM's UUID when
    the toolstack laid the domain out with one (libxl's ``/local/domain/<domid>/vm`` names
    ``/vm/<uuid>``; the override then holds across save/restore and reboot on this host),
    else by the domid."""
    return vif_key(vm_uuid(store.try_read(domain_vm_path(guest_domid))), guest_domid, devid)


def vm_vif_override_key(uuid: str, devid: int) -> str:
    """Return the key of the override of vif ``devid`` of VM ``uuid``, whether it runs or
    not."""
    return vif_key(uuid, 0, devid)
