"""The backend (driver domain / dom0 toolstack) agent: every vif of this domain, negotiated.

One XenStore connection and one watch, on ``/local/domain``: events under
``<home>/backend/vif`` find vifs as the toolstack creates them; events under a guest's
``device/vif/<devid>`` are its frontend moving; events under ``<home>/xenoffload/policy`` are
run-time overrides. A batch of events marks vifs dirty; each dirty vif is snapshotted once.
Everything else a guest writes is dropped after one path check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from xenoffload.endpoint import (
    Enforcer,
    PeerLinkError,
    VifEndpoint,
    backend_endpoint,
)
from xenoffload.machine import Mode
from xenoffload.overrides import (
    OverrideSetting,
    refresh_overrides,
    rules_from_overrides,
)
from xenoffload.paths import backend_vif_root, domain_path
from xenoffload.policy import Policy, VifIdentity, node_text
from xenoffload.schema import OWN_KEYS, RESULT_KEY, STATUS_KEY
from xenoffload.store.base import Store, WatchEvent, XenStoreError, ensure_watch

__all__ = ["BackendAgent", "EnforcerFactory"]

log = logging.getLogger("xenoffload.backend")

#: Builds the enforcer of a vif from what is known of it (domid, devid, ``vifname``...);
#: None = no kernel device to enforce on.
EnforcerFactory = Callable[[VifIdentity], Enforcer | None]

_WATCH_PATH = "/local/domain"
_OWN_WRITES = frozenset((*OWN_KEYS.values(), STATUS_KEY, RESULT_KEY))


@attrs.define
class BackendAgent:
    """Negotiates every vif whose backend lives in domain ``domid``."""

    policy: Policy
    domid: int = 0
    mode: Mode = Mode.COMPANION
    enforcer_factory: EnforcerFactory = lambda identity: None
    token: str = "xenoffload-backend"
    store: Store | None = None
    endpoints: dict[tuple[int, int], VifEndpoint] = attrs.field(factory=dict)
    identities: dict[tuple[int, int], VifIdentity] = attrs.field(factory=dict)
    refused: dict[tuple[int, int], str] = attrs.field(factory=dict)
    overrides: dict[str, OverrideSetting] = attrs.field(factory=dict)
    _home: str = ""
    _root: str = ""
    _policy_root: str = ""

    def __attrs_post_init__(self) -> None:
        self._home = domain_path(self.domid)
        self._root = backend_vif_root(self.domid)
        self._policy_root = f"{self._home}/xenoffload/policy"

    # ---------------------------------------------------------------------- AgentLogic

    def attach(self, store: Store) -> None:
        """New connection: watch, restore overrides lost with a restarted daemon, rescan."""
        self.store = store
        for endpoint in self.endpoints.values():
            endpoint.rebind(store)
        ensure_watch(store, _WATCH_PATH, self.token)
        self._reload_overrides(restore=True)
        self._rescan()

    def handle(self, events: list[WatchEvent]) -> None:
        # Per dirty vif, the paths that changed (None: re-read everything).
        dirty: dict[tuple[int, int], set[str] | None] = {}
        rescan = overrides = False
        for event in events:
            if event.token != self.token:
                continue
            kind, key = self._route(event.path)
            if kind == "vif" and key is not None:
                changed = dirty.setdefault(key, set())
                if changed is not None:
                    changed.add(event.path)
            elif kind == "guest" and key is not None:
                dirty.update((known, None) for known in self.endpoints if known[0] == key[0])
            elif kind == "rescan":
                rescan = True
            elif kind == "overrides":
                overrides = True
        if overrides:
            self._reload_overrides(restore=False)
        if rescan:
            self._rescan()
        for key, changed in sorted(dirty.items()):
            self._step(key, changed)

    def tick(self) -> None:
        for key, endpoint in list(self.endpoints.items()):
            if endpoint.needs_retry:
                self._step(key)

    # ---------------------------------------------------------------------- policy

    def set_policy(self, policy: Policy) -> None:
        """Replace the configured policy (SIGHUP reload); re-apply where it changes a vif."""
        reread = not policy.selectors() <= self.policy.selectors()
        self.policy = policy
        if reread and self.store is not None:
            for key in list(self.identities):
                self.identities[key] = self._identity(*key)
        self._apply_policy()

    def effective_policy(self) -> Policy:
        return self.policy.with_rules(rules_from_overrides(self.overrides))

    def _apply_policy(self) -> None:
        effective = self.effective_policy()
        for key, endpoint in list(self.endpoints.items()):
            if endpoint.gone:
                continue
            endpoint.set_policy(effective.for_vif(self.identities[key]))
            if endpoint.gone:
                self._forget(key)

    def _reload_overrides(self, restore: bool) -> None:
        assert self.store is not None
        found = refresh_overrides(self.store, self._home, self.overrides, restore)
        if found != self.overrides:
            self.overrides = found
            self._apply_policy()

    # ---------------------------------------------------------------------- vifs

    def _route(self, path: str) -> tuple[str, tuple[int, int] | None]:
        if path == _WATCH_PATH:
            return "rescan", None
        if path.startswith(self._root + "/"):
            parts = path[len(self._root) + 1:].split("/")
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                if len(parts) == 3 and parts[2] in _OWN_WRITES:
                    return "ignore", None  # our own write echoing back
                return "vif", (int(parts[0]), int(parts[1]))
            return "rescan", None
        if (self._root + "/").startswith(path + "/"):
            return "rescan", None  # backend/vif or above: changes reported as one event
        if path.startswith(self._policy_root):
            return "overrides", None
        if path.startswith("/local/domain/"):
            parts = path.split("/")
            if len(parts) <= 6 and parts[3].isdigit() and \
                    f"/local/domain/{parts[3]}/device/vif/".startswith(path + "/"):
                # A guest's device/vif or above: every known vif of that guest may have moved.
                return "guest", (int(parts[3]), -1)
            # /local/domain/<d>/device/vif/<n>[/...]
            if len(parts) >= 7 and parts[4] == "device" and parts[5] == "vif" and \
                    parts[3].isdigit() and parts[6].isdigit():
                key = (int(parts[3]), int(parts[6]))
                if key in self.endpoints:
                    return "vif", key
        return "ignore", None

    def _rescan(self) -> None:
        assert self.store is not None
        seen: set[tuple[int, int]] = set()
        try:
            guests = self.store.directory(self._root)
        except XenStoreError:
            guests = []
        for guest in guests:
            if not guest.isdigit():
                continue
            try:
                devids = self.store.directory(f"{self._root}/{guest}")
            except XenStoreError:
                continue
            seen.update((int(guest), int(devid)) for devid in devids if devid.isdigit())
        for key in sorted(seen | set(self.endpoints)):
            self._step(key)

    def _identity(self, guest: int, devid: int) -> VifIdentity:
        """Read what the policy can match this vif on. The bridge always (run-time overrides
        may name one at any time); the domain name and MAC only if a configured rule uses
        them (a reload that starts using them re-reads every vif's)."""
        store = self.store
        assert store is not None
        backend_dir = f"{self._root}/{guest}/{devid}"
        wanted = self.policy.selectors()

        def text(field: str, path: str) -> str | None:
            return node_text(store.try_read(path)) if field in wanted else None

        return VifIdentity(
            domid=guest, devid=devid,
            domain=text("domain", f"{domain_path(guest)}/name"),
            bridge=node_text(store.try_read(f"{backend_dir}/bridge")),
            mac=text("mac", f"{backend_dir}/mac"),
            vifname=node_text(store.try_read(f"{backend_dir}/vifname")),
        )

    def _step(self, key: tuple[int, int], changed: set[str] | None = None) -> None:
        assert self.store is not None
        endpoint = self.endpoints.get(key)
        if endpoint is None:
            if key in self.refused:
                if self.store.try_read(f"{self._root}/{key[0]}/{key[1]}") is None:
                    self.refused.pop(key, None)  # the refused vif is gone
                return
            # A vif that does not exist (any more) is forgotten by its first step.
            identity = self._identity(*key)
            try:
                endpoint = backend_endpoint(
                    self.store, self.domid, key[0], key[1],
                    self.effective_policy().for_vif(identity),
                    self.enforcer_factory(identity), self.mode)
            except PeerLinkError as error:
                self.refused[key] = str(error)
                log.warning("domid=%d devid=%d refused: %s", key[0], key[1], error)
                return
            self.endpoints[key] = endpoint
            self.identities[key] = identity
            log.info("domid=%d devid=%d found (%s)", key[0], key[1],
                     ", ".join(f"{k}={v}" for k, v in attrs.asdict(identity).items()
                               if v is not None and k not in ("domid", "devid")))
        endpoint.step(changed)
        if endpoint.gone:
            self._forget(key)

    def _forget(self, key: tuple[int, int]) -> None:
        self.endpoints.pop(key, None)
        self.identities.pop(key, None)
        self.refused.pop(key, None)
