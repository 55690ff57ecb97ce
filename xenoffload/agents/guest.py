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
from collections.abc import Callable

import attrs

from xenoffload.agents.fleet import EnforcerFactory, Fairness, Fleet
from xenoffload.endpoint import VifEndpoint
from xenoffload.machine import Mode
from xenoffload.paths import Route, frontend_vif_root, override_root, route_guest_event
from xenoffload.policy import Policy
from xenoffload.schema import Role
from xenoffload.store.base import Store, read_own_domid

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

    def peer_watch(self, endpoint: VifEndpoint) -> str | None:
        return endpoint.peer_dir


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
