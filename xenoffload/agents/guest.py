"""The guest agent: every ``device/vif/<devid>`` of this guest, negotiated with its backend.

Watches the guest's own ``device/vif`` (vifs appearing and the frontend's state), each vif's
backend directory (the backend's state and keys), and the guest's override directory. The
guest administrator's choice (configuration file, ``xenoffload set --local``) caps what this
end advertises; the backend's advertisement caps the rest.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import attrs

from xenoffload.endpoint import Enforcer, PeerLinkError, VifEndpoint, frontend_endpoint
from xenoffload.machine import Mode
from xenoffload.overrides import OverrideSetting, refresh_overrides, rules_from_overrides
from xenoffload.paths import domain_path, frontend_vif_root
from xenoffload.policy import Policy, VifIdentity
from xenoffload.schema import OWN_KEYS, RESULT_KEY, STATUS_KEY
from xenoffload.store.base import Store, WatchEvent, XenStoreError, ensure_watch

__all__ = ["GuestAgent"]

log = logging.getLogger("xenoffload.guest")

_OWN_WRITES = frozenset((*OWN_KEYS.values(), STATUS_KEY, RESULT_KEY))


@attrs.define
class GuestAgent:
    """Negotiates every vif of guest ``domid`` (as seen from inside the guest)."""

    policy: Policy
    domid: int
    mode: Mode = Mode.COMPANION
    enforcer_factory: Callable[[VifIdentity], Enforcer | None] = lambda identity: None
    token: str = "xenoffload-guest"
    store: Store | None = None
    endpoints: dict[int, VifEndpoint] = attrs.field(factory=dict)
    identities: dict[int, VifIdentity] = attrs.field(factory=dict)
    peer_watches: dict[int, str] = attrs.field(factory=dict)
    refused: dict[int, str] = attrs.field(factory=dict)
    overrides: dict[str, OverrideSetting] = attrs.field(factory=dict)
    _home: str = ""
    _root: str = ""
    _policy_root: str = ""

    def __attrs_post_init__(self) -> None:
        self._home = domain_path(self.domid)
        self._root = frontend_vif_root(self.domid)
        self._policy_root = f"{self._home}/xenoffload/policy"

    # ---------------------------------------------------------------------- AgentLogic

    def attach(self, store: Store) -> None:
        self.store = store
        self.peer_watches.clear()
        for endpoint in self.endpoints.values():
            endpoint.rebind(store)
        ensure_watch(store, self._root, self.token)
        ensure_watch(store, self._policy_root, self.token)
        self._reload_overrides(restore=True)
        self._rescan()

    def handle(self, events: list[WatchEvent]) -> None:
        dirty: set[int] = set()
        rescan = overrides = False
        for event in events:
            if event.token != self.token:
                continue
            path = event.path
            if path == self._root:
                rescan = True
            elif path.startswith(self._root + "/"):
                parts = path[len(self._root) + 1:].split("/")
                if not parts[0].isdigit():
                    continue
                if len(parts) == 2 and parts[1] in _OWN_WRITES:
                    continue
                dirty.add(int(parts[0]))
            elif path.startswith(self._policy_root):
                overrides = True
            else:
                for devid, watched in self.peer_watches.items():
                    if path == watched or path.startswith(watched + "/"):
                        dirty.add(devid)
        if overrides:
            self._reload_overrides(restore=False)
        if rescan:
            self._rescan()
        for devid in sorted(dirty):
            self._step(devid)

    def tick(self) -> None:
        for devid, endpoint in list(self.endpoints.items()):
            if endpoint.needs_retry:
                self._step(devid)

    # ---------------------------------------------------------------------- policy

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        self._apply_policy()

    def effective_policy(self) -> Policy:
        return self.policy.with_rules(rules_from_overrides(self.overrides, self.domid))

    def _apply_policy(self) -> None:
        effective = self.effective_policy()
        for devid, endpoint in list(self.endpoints.items()):
            endpoint.set_policy(effective.for_vif(self.identities[devid]))
            if endpoint.gone:
                self._forget(devid)

    def _reload_overrides(self, restore: bool) -> None:
        assert self.store is not None
        found = refresh_overrides(self.store, self._home, self.overrides, restore)
        if found != self.overrides:
            self.overrides = found
            self._apply_policy()

    # ---------------------------------------------------------------------- vifs

    def _rescan(self) -> None:
        assert self.store is not None
        try:
            devids = {int(d) for d in self.store.directory(self._root) if d.isdigit()}
        except XenStoreError:
            devids = set()
        for devid in sorted(devids | set(self.endpoints)):
            self._step(devid)

    def _step(self, devid: int) -> None:
        assert self.store is not None
        endpoint = self.endpoints.get(devid)
        if endpoint is None:
            if self.store.try_read(f"{self._root}/{devid}") is None:
                self.refused.pop(devid, None)
                return
            if devid in self.refused:
                return
            mac = self.store.try_read(f"{self._root}/{devid}/mac")
            identity = VifIdentity(self.domid, devid,
                                   mac=mac.decode("ascii", "replace") if mac else None)
            try:
                endpoint = frontend_endpoint(
                    self.store, self.domid, devid,
                    self.effective_policy().for_vif(identity),
                    self.enforcer_factory(identity), self.mode)
            except PeerLinkError as error:
                self.refused[devid] = str(error)
                log.warning("domid=%d devid=%d refused: %s", self.domid, devid, error)
                return
            self.endpoints[devid] = endpoint
            self.identities[devid] = identity
        if devid not in self.peer_watches:
            ensure_watch(self.store, endpoint.peer_dir, self.token)
            self.peer_watches[devid] = endpoint.peer_dir
        endpoint.step()
        if endpoint.gone:
            self._forget(devid)

    def _forget(self, devid: int) -> None:
        self.endpoints.pop(devid, None)
        self.identities.pop(devid, None)
        watched = self.peer_watches.pop(devid, None)
        if watched is not None and self.store is not None:
            with contextlib.suppress(XenStoreError):
                self.store.unwatch(watched, self.token)
