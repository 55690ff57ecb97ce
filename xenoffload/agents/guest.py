"""The guest agent: every ``device/vif/<devid>`` of this guest, negotiated with its backend.

Watches the guest's own ``device/vif`` (vifs appearing and the frontend's state), each vif's
backend directory (the backend's state and keys), and the guest's override directory
(:func:`xenoffload.paths.route_guest_event`). After ``xl restore`` or a migration the guest is
a new domain: its kernel registers the watches again, their events name the old home, and the
agent reads its ``domid`` and moves to the new one (:meth:`GuestRouter.follow`). The guest
administrator's choice (configuration file, ``xenoffload set --local``) caps what this end
advertises; the backend's advertisement caps the rest. The rest is the shared
:class:`~xenoffload.agents.fleet.Fleet`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

import attrs

from xenoffload.agents.fleet import EnforcerFactory, Fairness, Fleet, VifKey
from xenoffload.endpoint import VifEndpoint, make_frontend_endpoint
from xenoffload.machine import Mode
from xenoffload.paths import (
    Route,
    VifPaths,
    frontend_vif_root,
    override_root,
    route_guest_event,
)
from xenoffload.policy import Policy, VifIdentity, node_text
from xenoffload.schema import Role
from xenoffload.store.base import Store, XenStoreError, read_own_domid

__all__ = ["GuestAgent", "GuestRouter"]


@attrs.frozen
class GuestRouter:
    """The guest agent's view: its own ``device/vif``, each vif's backend directory."""

    domid: int
    #: Whether ``domid`` is the connection's own domain (read from XenStore, not given): the
    #: agent then follows it when the guest is restored or migrated as a new domain.
    follows: bool = False

    @property
    def role(self) -> Role:
        return Role.FRONTEND

    def follow(self, store: Store) -> GuestRouter | None:
        domid = read_own_domid(store) if self.follows else None
        return None if domid is None or domid == self.domid else GuestRouter(domid, True)

    def watches(self) -> list[str]:
        return [frontend_vif_root(self.domid), override_root(self.domid, Role.FRONTEND)]

    def route(self, path: str) -> Route:
        return route_guest_event(self.domid, path)

    def list_vifs(self, store: Store, guests: Iterable[int] | None = None) -> set[VifKey]:
        if guests is not None and self.domid not in guests:
            return set()
        try:
            names = store.directory(frontend_vif_root(self.domid))
        except XenStoreError:
            return set()
        return {(self.domid, int(name)) for name in names if name.isdigit()}

    def identity_paths(self, key: VifKey, selectors: frozenset[str]) -> dict[str, str]:
        paths = VifPaths(0, *key)
        return {"state": paths.frontend_key("state"), "backend": paths.frontend_key("backend"),
                "mac": paths.frontend_key("mac")}

    def identity(self, key: VifKey, found: Mapping[str, bytes | None]) -> VifIdentity:
        return VifIdentity(domid=key[0], devid=key[1], mac=node_text(found.get("mac")))

    def build(self, store: Store, key: VifKey, found: Mapping[str, bytes | None],
              mode: Mode) -> VifEndpoint:
        return make_frontend_endpoint(store, key[0], key[1], found.get("backend"),
                                      Policy().default, mode=mode)

    def peer_watch(self, endpoint: VifEndpoint) -> str | None:
        return endpoint.peer_dir

    def xapi_paths(self, key: VifKey) -> dict[str, str]:
        return {}


class GuestAgent(Fleet):
    """Negotiates every vif of guest ``domid`` (as seen from inside the guest). With
    ``follows`` (``domid`` is the connection's own), a guest restored or migrated as a new
    domain is followed: its new home's vifs are negotiated, its overrides carried there."""

    def __init__(self, policy: Policy, domid: int, mode: Mode = Mode.COMPANION,
                 enforcer_factory: EnforcerFactory = lambda identity: None,
                 token: str = "xenoffload-guest",
                 clock: Callable[[], float] = time.monotonic,
                 fairness: Fairness | None = None, follows: bool = False) -> None:
        super().__init__(GuestRouter(domid, follows), policy, mode, enforcer_factory, token, clock,
                         fairness or Fairness())
