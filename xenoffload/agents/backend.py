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
from collections.abc import Callable

import attrs

from xenoffload.agents.fleet import EnforcerFactory, Fairness, Fleet
from xenoffload.endpoint import VifEndpoint
from xenoffload.machine import Mode
from xenoffload.paths import XAPI_ROOT, Route, route_backend_event
from xenoffload.policy import Policy
from xenoffload.schema import Role
from xenoffload.store.base import Store

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

    def peer_watch(self, endpoint: VifEndpoint) -> str | None:
        return None  # /local/domain covers every frontend


class BackendAgent(Fleet):
    """Negotiates every vif whose backend lives in domain ``domid``."""

    def __init__(self, policy: Policy, domid: int = 0, mode: Mode = Mode.COMPANION,
                 enforcer_factory: EnforcerFactory = lambda identity: None,
                 token: str = "xenoffload-backend",
                 clock: Callable[[], float] = time.monotonic,
                 fairness: Fairness | None = None) -> None:
        super().__init__(BackendRouter(domid), policy, mode, enforcer_factory, token, clock,
                         fairness or Fairness())
