"""The backend agent (driver domain / dom0 toolstack): every vif of this domain, negotiated.

One XenStore connection and two watches, ``/local/domain`` and xapi's ``/xapi``: events under
``<home>/backend/vif`` find vifs as the toolstack creates them; events under a guest's
``device/vif/<devid>`` are its frontend moving; events under ``<home>/xenoffload/policy`` are
run-time overrides; events under ``/xapi/<domid>/private/vif/<devid>/other-config`` are a
XenServer / XCP-ng administrator's per-VIF settings. Everything else a guest writes is dropped
after one path check (:func:`xenoffload.paths.route_backend_event`). The rest is the shared
:class:`~xenoffload.agents.fleet.Fleet`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

import attrs

from xenoffload.agents.fleet import EnforcerFactory, Fairness, Fleet, VifKey
from xenoffload.endpoint import VifEndpoint, make_backend_endpoint
from xenoffload.machine import Mode
from xenoffload.paths import (
    XAPI_ROOT,
    Route,
    VifPaths,
    backend_vif_root,
    domain_name_path,
    domain_vm_path,
    route_backend_event,
    xapi_vif_config_root,
)
from xenoffload.policy import Policy, VifIdentity, node_text, vm_uuid
from xenoffload.schema import Role
from xenoffload.store.base import Store, XenStoreError
from xenoffload.xapi import XAPI_KEYS

__all__ = ["BackendAgent", "BackendRouter", "EnforcerFactory"]

_WATCH_PATH = "/local/domain"


@attrs.frozen
class BackendRouter:
    """The backend agent's view: vifs under ``<home>/backend/vif``, peers in guests' trees."""

    domid: int = 0

    @property
    def role(self) -> Role:
        return Role.BACKEND

    def watches(self) -> list[str]:
        return [_WATCH_PATH, XAPI_ROOT]

    def follow(self, store: Store) -> BackendRouter | None:
        return None  # a driver domain is not restored under its agent

    def route(self, path: str) -> Route:
        return route_backend_event(self.domid, path)

    def list_vifs(self, store: Store, guests: Iterable[int] | None = None) -> set[VifKey]:
        root = backend_vif_root(self.domid)
        if guests is None:
            try:
                names = store.directory(root)
            except XenStoreError:
                return set()
            guests = [int(name) for name in names if name.isdigit()]
        guests = sorted(guests)
        listings = store.directory_batch([(None, f"{root}/{guest}") for guest in guests])
        return {(guest, int(devid)) for guest, devids in zip(guests, listings, strict=True)
                for devid in devids or () if devid.isdigit()}

    def identity_paths(self, key: VifKey, selectors: frozenset[str]) -> dict[str, str]:
        paths = VifPaths(self.domid, *key)
        # Not its own ``state``: the end's first step reads it (a guard, in the step's
        # transaction) before anything is written, so reading it here too told nothing more;
        # ``frontend``, ``bridge`` and ``vifname`` (libxl writes all three with the device)
        # say whether the device is there at all.
        wanted = {"frontend": paths.backend_key("frontend"),
                  "bridge": paths.backend_key("bridge"),
                  "vifname": paths.backend_key("vifname")}
        if "mac" in selectors:
            wanted["mac"] = paths.backend_key("mac")
        if "domain" in selectors:
            wanted["domain"] = domain_name_path(key[0])
        if "uuid" in selectors:
            wanted["vm"] = domain_vm_path(key[0])
        return wanted

    def identity(self, key: VifKey, found: Mapping[str, bytes | None]) -> VifIdentity:
        return VifIdentity(domid=key[0], devid=key[1], domain=node_text(found.get("domain")),
                           bridge=node_text(found.get("bridge")),
                           mac=node_text(found.get("mac")),
                           vifname=node_text(found.get("vifname")),
                           uuid=vm_uuid(found.get("vm")))

    def build(self, store: Store, key: VifKey, found: Mapping[str, bytes | None],
              mode: Mode) -> VifEndpoint:
        return make_backend_endpoint(store, VifPaths(self.domid, *key), found.get("frontend"),
                                     Policy().default, mode=mode)

    def peer_watch(self, endpoint: VifEndpoint) -> str | None:
        return None  # /local/domain covers every frontend

    def xapi_paths(self, key: VifKey) -> dict[str, str]:
        root = xapi_vif_config_root(*key)
        return {name: f"{root}/{name}" for name in XAPI_KEYS}


class BackendAgent(Fleet):
    """Negotiates every vif whose backend lives in domain ``domid``."""

    def __init__(self, policy: Policy, domid: int = 0, mode: Mode = Mode.COMPANION,
                 enforcer_factory: EnforcerFactory = lambda identity: None,
                 token: str = "xenoffload-backend",
                 clock: Callable[[], float] = time.monotonic,
                 fairness: Fairness | None = None) -> None:
        super().__init__(BackendRouter(domid), policy, mode, enforcer_factory, token, clock,
                         fairness or Fairness())
