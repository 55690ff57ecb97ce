"""The agent core both agents share: every vif end of one domain, kept negotiated.

A :class:`Fleet` holds the endpoints, the policy (the configuration file, xapi's per-VIF
settings, run-time overrides), the retries and the per-guest fairness; a small role-specific
:class:`Router` says what to watch and what a watch event means
(:mod:`xenoffload.agents.backend`, :mod:`xenoffload.agents.guest`). Which vifs exist, what is
read of one, its identity, its policy and its end are :mod:`xenoffload.vifends`'s, as for
every other face.

One batch of watch events is handled in one pass: events are routed (pure functions of the
path, :mod:`xenoffload.paths`), echoes of the agent's own writes are recognised and dropped,
every vif they name is marked once, and all marked vifs are stepped together
(:func:`xenoffload.endpoint.run_steps`: a few pipelined round trips for the whole batch). A
policy change re-decides the vifs it changes without re-reading what the agent already knows.
A guest whose vifs need more steps than its share (a guest flapping its own state) is served
after the others, at a bounded rate; its vifs still converge to the safe result.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import attrs

from xenoffload.endpoint import (
    Enforcer,
    Notice,
    PeerLinkError,
    StepKind,
    VifEndpoint,
    run_steps,
)
from xenoffload.machine import Mode
from xenoffload.override_store import refresh_overrides
from xenoffload.overrides import OverrideSetting
from xenoffload.paths import XAPI_ROOT, Route, RouteKind, domain_path
from xenoffload.policy import Policy, PolicyError, VifIdentity
from xenoffload.schema import Role
from xenoffload.store.base import Store, WatchEvent, XenStoreError, ensure_watch
from xenoffload.vifends import VifEnds, VifKey, effective_policy, read_fields
from xenoffload.xapi import XapiSetting

__all__ = ["EnforcerFactory", "Fleet", "Router", "VifKey", "Fairness"]

log = logging.getLogger("xenoffload.agent")

#: Builds the enforcer of a vif from what is known of it (domid, devid, ``vifname``...);
#: None = no kernel device to enforce on.
EnforcerFactory = Callable[[VifIdentity], Enforcer | None]

#: Most vifs stepped in one pipelined call (bounds the requests in flight).
CHUNK = 256
#: Retry delays for a vif whose device could not be reached or whose step kept failing.
RETRY_FIRST, RETRY_MAX = 0.05, 30.0
DEVICE_RETRY_FIRST = 1.0
#: Longest wait in :meth:`Fleet.attach` for the events that registering its watches causes.
REGISTRATION_WAIT = 1.0


class Router(Protocol):
    """What differs between the backend and the guest agent."""

    @property
    def role(self) -> Role:
        """The end this agent plays."""
        ...

    @property
    def domid(self) -> int:
        """The agent's own domain (the driver domain, or the guest)."""
        ...

    def watches(self) -> list[str]:
        """Paths watched for the agent's whole life on a connection."""
        ...

    def route(self, path: str) -> Route:
        """What a watch event on ``path`` means."""
        ...

    def follow(self, store: Store) -> Router | None:
        """The router for this agent's domain when it is no longer :attr:`domid` (a guest
        restored or migrated is a new domain), else None."""
        ...

    def peer_watch(self, endpoint: VifEndpoint) -> str | None:
        """A path to watch while the end exists (the guest watches each backend directory),
        or None."""
        ...


@attrs.define
class Fairness:
    """Per guest, a token bucket of steps: ``burst`` at once, ``rate`` per second after.
    A guest whose events keep its vifs busy past that waits its turn; other guests' vifs are
    stepped first."""

    rate: float = 50.0
    burst: float = 200.0
    _tokens: dict[int, tuple[float, float]] = attrs.field(factory=dict)
    throttled: set[int] = attrs.field(factory=set)

    def take(self, guest: int, now: float) -> float:
        """Take a token for one step of a vif of ``guest``; return 0 if granted, else the
        seconds until one is."""
        tokens, since = self._tokens.get(guest, (self.burst, now))
        tokens = min(self.burst, tokens + (now - since) * self.rate)
        if tokens >= 1.0:
            self._tokens[guest] = (tokens - 1.0, now)
            if guest in self.throttled and tokens >= self.burst / 2:
                self.throttled.discard(guest)
                log.info("domid=%d no longer throttled", guest)
            return 0.0
        self._tokens[guest] = (tokens, now)
        if guest not in self.throttled:
            self.throttled.add(guest)
            log.warning("domid=%d throttled: its vifs needed more than %d steps at once and "
                        "%.0f per second; served after other guests", guest, self.burst,
                        self.rate)
        return (1.0 - tokens) / self.rate

    def forget(self, guest: int) -> None:
        self._tokens.pop(guest, None)
        self.throttled.discard(guest)


@attrs.define
class _Marks:
    """What one batch of events (or a rescan, a tick, a policy change) asks for."""

    observe: set[VifKey] = attrs.field(factory=set)
    recompute: set[VifKey] = attrs.field(factory=set)
    candidates: set[VifKey] = attrs.field(factory=set)
    renew: set[VifKey] = attrs.field(factory=set)
    guests: set[int] = attrs.field(factory=set)
    discover: bool = False
    overrides: bool = False
    xapi: set[VifKey | None] = attrs.field(factory=set)
    renamed: set[int] = attrs.field(factory=set)


@attrs.define
class Fleet:
    """Negotiates every vif end of one domain, in one role, on one connection at a time."""

    router: Router
    policy: Policy
    mode: Mode = Mode.COMPANION
    enforcer_factory: EnforcerFactory = lambda identity: None
    token: str = "xenoffload"
    clock: Callable[[], float] = time.monotonic
    fairness: Fairness = attrs.field(factory=Fairness)
    store: Store | None = None
    endpoints: dict[VifKey, VifEndpoint] = attrs.field(factory=dict)
    identities: dict[VifKey, VifIdentity] = attrs.field(factory=dict)
    refused: dict[VifKey, str] = attrs.field(factory=dict)
    overrides: dict[str, OverrideSetting] = attrs.field(factory=dict)
    xapi: dict[VifKey, XapiSetting] = attrs.field(factory=dict)
    #: Vifs to step again at a time (retries, guests over their share).
    due: dict[VifKey, float] = attrs.field(factory=dict)
    _backoff: dict[VifKey, float] = attrs.field(factory=dict)
    _peer_watches: dict[VifKey, str] = attrs.field(factory=dict)
    _xapi_present: bool = False
    #: The policy's match fields the ends' identities were read with (a source starting to
    #: match on another field has them read again).
    _selectors: frozenset[str] = frozenset()
    _xapi_refusals: dict[VifKey, str] = attrs.field(factory=dict)

    @property
    def domid(self) -> int:
        return self.router.domid

    @property
    def ends(self) -> VifEnds:
        """The vif ends this agent opens (its role, its domain)."""
        return VifEnds(self.router.role, self.router.domid)

    # ---------------------------------------------------------------- AgentLogic

    def attach(self, store: Store) -> None:
        """A (new) connection: watch, restore overrides a restarted XenStore lost, rescan
        and step every vif."""
        self.store = store
        self._peer_watches.clear()
        moved = self.router.follow(store)
        if moved is not None:
            self._leave_domain(moved)
        registered = {path for path in self.router.watches() if self._watch(path)}
        for key, endpoint in self.endpoints.items():
            endpoint.rebind(store)
            self._watch_peer(key, endpoint)
        marks = _Marks(discover=True, overrides=True, xapi={None})
        self._await_registrations(registered, marks)
        self._reload_overrides(restore=True, marks=marks)
        marks.overrides = False
        marks.observe.update(self.endpoints)
        self._process(marks)

    def handle(self, events: Sequence[WatchEvent]) -> None:
        """Process one batch of watch events."""
        marks = _Marks()
        for event in events:
            if event.token == self.token:
                self._mark(self.router.route(event.path), event.path, marks)
        self._process(marks)

    def tick(self) -> None:
        """Step the vifs whose retry is due."""
        now = self.clock()
        ready = [key for key, when in self.due.items() if when <= now]
        for key in ready:
            del self.due[key]
        if ready:
            self._process(_Marks(observe=set(ready)))

    def next_due(self) -> float | None:
        """When :meth:`tick` has work next (the fleet's clock), or None."""
        return min(self.due.values(), default=None)

    # ---------------------------------------------------------------- policy

    def set_policy(self, policy: Policy) -> None:
        """Replace the configured policy (SIGHUP reload); re-decide the vifs it changes."""
        self.policy = policy
        self._process(self._policy_marks(_Marks()))

    def effective_policy(self) -> Policy:
        """The policy in force: the file's rules, then xapi's, then the overrides'."""
        return effective_policy(self.policy, self.ends, self.xapi, self.overrides)

    # ---------------------------------------------------------------- routing

    def _mark(self, route: Route, path: str, marks: _Marks) -> None:
        kind = route.kind
        if kind is RouteKind.VIF:
            key = route.vif
            endpoint = self.endpoints.get(key)
            if endpoint is None:
                if route.own or key in self.refused:
                    marks.candidates.add(key)
                return
            notice = endpoint.notice(path)
            if notice is Notice.STEP:
                marks.observe.add(key)
            elif notice is Notice.RENEW:
                marks.renew.add(key)
        elif kind is RouteKind.GUEST:
            assert route.guest_domid is not None
            marks.guests.add(route.guest_domid)
        elif kind is RouteKind.DISCOVER:
            marks.discover = marks.overrides = True
        elif kind is RouteKind.OVERRIDES:
            marks.overrides = True
        elif kind is RouteKind.NAME:
            if "domain" in self._selectors:  # else no rule reads names: nothing to re-match
                assert route.guest_domid is not None
                marks.renamed.add(route.guest_domid)
        elif kind is RouteKind.XAPI:
            if route.devid is not None and self._xapi_present:
                marks.xapi.add(route.vif)
            else:
                # A parent of other-config nodes, or the first node of a /xapi tree that did
                # not exist when it was last looked for (xapi creates it with a domain's
                # private data, after the agent started): whether /xapi exists, then every
                # vif's settings.
                marks.xapi.add(None)

    # ---------------------------------------------------------------- the pass

    def _process(self, marks: _Marks) -> None:
        store = self.store
        assert store is not None
        if marks.discover or marks.overrides:
            moved = self.router.follow(store)
            if moved is not None:
                self._leave_domain(moved)
                for path in moved.watches():
                    self._watch(path)
                self._reload_overrides(restore=True, marks=marks)
                marks.overrides = False
        if marks.overrides:
            self._reload_overrides(restore=False, marks=marks)
        if marks.xapi:
            self._reload_xapi(marks.xapi, marks)
        if marks.renamed:
            self._rematch_renamed(marks.renamed, marks)
        if marks.discover or marks.guests:
            guests = None if marks.discover else marks.guests
            present = self.ends.list(store, guests)
            scope = [key for key in (*self.endpoints, *self.refused)
                     if guests is None or key[0] in guests]
            marks.observe.update(key for key in scope if key in self.endpoints)
            for key in scope:
                if key in self.refused and key not in present:
                    del self.refused[key]
            marks.candidates.update(present - set(self.endpoints))
        renewed = {key: self.endpoints[key] for key in marks.renew if key in self.endpoints}
        for key in renewed:
            self._forget(key)
            marks.candidates.add(key)
        marks.candidates -= set(self.endpoints)
        if marks.candidates:
            marks.observe.update(self._build(sorted(marks.candidates)))
        for key, old in renewed.items():
            if key not in self.endpoints:
                log.info("%s device removed: %s gone", old.label, old.own_dir)
        work = {key: StepKind.OBSERVE for key in marks.observe if key in self.endpoints}
        work.update({key: StepKind.RECOMPUTE for key in marks.recompute
                     if key in self.endpoints and key not in work})
        self._step(work)

    def _step(self, work: dict[VifKey, StepKind]) -> None:
        store = self.store
        assert store is not None
        now = self.clock()
        granted: dict[VifEndpoint, StepKind] = {}
        for key, kind in sorted(work.items()):
            wait = self.fairness.take(key[0], now)
            if wait:
                self.due[key] = min(self.due.get(key, math.inf), now + wait)
                continue
            self.due.pop(key, None)
            granted[self.endpoints[key]] = kind
        items = list(granted.items())
        left: list[VifEndpoint] = []
        for start in range(0, len(items), CHUNK):
            left += run_steps(store, dict(items[start:start + CHUNK]))
        failed = {id(endpoint) for endpoint in left}
        for endpoint in granted:
            key = (endpoint.paths.guest_domid, endpoint.paths.devid)
            if endpoint.gone:
                self._forget(key)
            elif id(endpoint) in failed:
                self._retry_later(key, RETRY_FIRST)
            elif endpoint.needs_retry:
                self._retry_later(key, DEVICE_RETRY_FIRST)
            else:
                self._backoff.pop(key, None)

    def _retry_later(self, key: VifKey, first: float) -> None:
        delay = min(self._backoff.get(key, first / 2) * 2, RETRY_MAX)
        self._backoff[key] = delay
        self.due[key] = self.clock() + delay

    # ---------------------------------------------------------------- ends

    def _build(self, keys: Sequence[VifKey]) -> set[VifKey]:
        """Build the ends of ``keys`` (one pipelined read of what they need); return those
        built. A vif whose peer link is not its own is refused and logged once."""
        store = self.store
        assert store is not None
        ends, xapi = self.ends, self._xapi_present
        # xapi's rules match on domid and devid only: the fields to read are known before.
        self._selectors |= self.effective_policy().selectors()
        fields = read_fields(store, [ends.paths(key, self._selectors, xapi) for key in keys])
        if xapi:
            self._take_xapi(keys, fields)
        effective = self.effective_policy()
        built: set[VifKey] = set()
        for key, found in zip(keys, fields, strict=True):
            if not ends.present(found):
                self.refused.pop(key, None)
                continue  # nothing there (any more)
            identity = ends.identity(key, found)
            try:
                endpoint = ends.build(store, key, found, effective.for_vif(identity), self.mode)
            except PeerLinkError as error:
                if self.refused.get(key) != str(error):
                    log.warning("domid=%d devid=%d refused: %s", key[0], key[1], error)
                self.refused[key] = str(error)
                continue
            self.refused.pop(key, None)
            enforcer = self.enforcer_factory(identity)
            if enforcer is not None:
                endpoint.enforcer = enforcer
            self.endpoints[key] = endpoint
            self.identities[key] = identity
            self._watch_peer(key, endpoint)
            if log.isEnabledFor(logging.INFO):
                log.info("domid=%d devid=%d found (%s)", key[0], key[1], ", ".join(
                    f"{name}={value}" for name, value in attrs.asdict(identity).items()
                    if value is not None and name not in ("domid", "devid")))
            built.add(key)
        return built

    def _watch(self, path: str) -> bool:
        """Watch ``path``; return False if this connection already watched it."""
        assert self.store is not None
        return ensure_watch(self.store, path, self.token)

    def _await_registrations(self, watches: set[str], marks: _Marks) -> None:
        """Take the events XenStore sends when ``watches`` are registered (one each, naming
        the watched path), before the rescan that follows, and mark every other event taken
        meanwhile. Such an event, received before the rescan, tells nothing the rescan will
        not read; on ``/local/domain`` it would otherwise cost a second rescan of every vif.
        Waits at most :data:`REGISTRATION_WAIT` seconds (a registration event never comes
        when the server drops it: the rescan then goes ahead, and nothing is skipped
        later)."""
        assert self.store is not None
        left = REGISTRATION_WAIT
        while watches and left > 0:
            wait = min(left, 0.05)
            left -= wait
            for event in self.store.next_events(wait, 1 << 16):
                if event.token != self.token:
                    continue
                if event.path in watches:
                    watches.discard(event.path)
                    continue
                # A watch whose first event names something below it lost its registration.
                watches -= {path for path in watches if event.path.startswith(path + "/")}
                self._mark(self.router.route(event.path), event.path, marks)

    def _watch_peer(self, key: VifKey, endpoint: VifEndpoint) -> None:
        watch = self.router.peer_watch(endpoint)
        if watch is not None:
            self._watch(watch)
            self._peer_watches[key] = watch

    def _forget(self, key: VifKey) -> None:
        self.endpoints.pop(key, None)
        self.identities.pop(key, None)
        self.due.pop(key, None)
        self._backoff.pop(key, None)
        self.xapi.pop(key, None)
        watch = self._peer_watches.pop(key, None)
        if watch is not None and self.store is not None:
            with contextlib.suppress(XenStoreError):
                self.store.unwatch(watch, self.token)
        if not any(other[0] == key[0] for other in self.endpoints):
            self.fairness.forget(key[0])

    def _leave_domain(self, moved: Router) -> None:
        """This agent's domain is now ``moved.domid`` (a guest restored or migrated): forget
        the old domain's vifs and watches and act for the new one. The overrides known are
        kept, to be written under the new home if it has none (:meth:`_reload_overrides`)."""
        log.warning("this domain is now domid %d (was %d: restored or migrated); acting for "
                    "it", moved.domid, self.domid)
        assert self.store is not None
        for path in self.router.watches():
            with contextlib.suppress(XenStoreError):
                self.store.unwatch(path, self.token)
        for key in [*self.endpoints, *self.refused]:
            self._forget(key)
        self.refused.clear()
        self.due.clear()
        self._backoff.clear()
        self.router = moved

    def _reread_identities(self, keys: Sequence[VifKey]) -> None:
        """Read what the policy matches on again (a source started using a new field)."""
        assert self.store is not None
        ends = self.ends
        fields = read_fields(self.store, [ends.paths(key, self._selectors) for key in keys])
        for key, found in zip(keys, fields, strict=True):
            if key in self.endpoints:
                self.identities[key] = ends.identity(key, found)

    def _rematch_renamed(self, guests: set[int], marks: _Marks) -> None:
        """Read the names of ``guests``' vifs again and re-decide those whose policy changed:
        a rule on the domain name matches a migrated domain only once libxl has renamed it
        from ``<name>--incoming`` (and no longer matches the source's ``--migratedaway``)."""
        keys = sorted(key for key in self.endpoints if key[0] in guests)
        if not keys:
            return
        before = {key: self.identities[key].domain for key in keys}
        self._reread_identities(keys)
        for guest in sorted({key[0] for key in keys if self.identities[key].domain
                             != before[key]}):
            log.info("domid=%d is now named %s: its vifs matched again", guest,
                     next(self.identities[key].domain for key in keys if key[0] == guest))
        self._policy_marks(marks, keys)

    # ---------------------------------------------------------------- policy sources

    def _policy_marks(self, marks: _Marks, keys: Iterable[VifKey] | None = None) -> _Marks:
        """Mark for re-deciding every vif (of ``keys``) whose resolved policy changed."""
        effective = self.effective_policy()
        wanted = self._selectors | effective.selectors()
        if wanted != self._selectors:
            # Read again only when the new match fields need nodes not read yet (a bridge
            # override needs nothing new; the first override keyed by a VM's UUID does).
            sample = (0, 0)
            needed = set(self.ends.paths(sample, wanted)) - \
                set(self.ends.paths(sample, self._selectors))
            self._selectors = wanted
            if needed and self.store is not None:
                self._reread_identities(list(self.identities))
        for key in (self.endpoints if keys is None else keys):
            endpoint = self.endpoints.get(key)
            if endpoint is not None and endpoint.set_policy(
                    effective.for_vif(self.identities[key])):
                marks.recompute.add(key)
        return marks

    def _reload_overrides(self, restore: bool, marks: _Marks) -> None:
        assert self.store is not None
        found = refresh_overrides(self.store, self.domid, self.router.role, self.overrides,
                                  restore)
        if not found and self.overrides and not self._home_exists():
            return  # this domain's home is gone (a guest saved or migrating): keep them
        if found != self.overrides:
            self.overrides = found
            self._policy_marks(marks)

    def _home_exists(self) -> bool:
        assert self.store is not None
        try:
            return self.store.try_read(domain_path(self.domid)) is not None
        except XenStoreError:
            return False  # a guest may not read what is not there any more (EACCES)

    def _reload_xapi(self, which: set[VifKey | None], marks: _Marks) -> None:
        assert self.store is not None
        if None in which:
            self._xapi_present = self.ends.reads_xapi and self._xapi_readable()
            keys = list(self.endpoints)
        else:
            keys = [key for key in which if key is not None and key in self.endpoints]
        before = {key: self.xapi.get(key) for key in keys}
        if self._xapi_present:
            self._read_xapi(keys)
        else:
            for key in keys:
                self.xapi.pop(key, None)
        changed = [key for key in keys if self.xapi.get(key) != before[key]]
        if changed:
            self._policy_marks(marks, changed)

    def _xapi_readable(self) -> bool:
        """Whether xapi's tree is there for this agent to read. A driver domain may not read
        ``/xapi`` (EACCES: where it does not exist, its nearest existing parent is ``/``,
        which only dom0 reads); xapi's settings are then not this agent's to read."""
        assert self.store is not None
        try:
            return self.store.try_read(XAPI_ROOT) is not None
        except XenStoreError as error:
            if error.errno_name != "EACCES":
                raise
            return False

    def _read_xapi(self, keys: Sequence[VifKey]) -> None:
        assert self.store is not None
        self._take_xapi(keys, read_fields(self.store, [self.ends.xapi_paths(key)
                                                       for key in keys]))

    def _take_xapi(self, keys: Sequence[VifKey],
                   fields: Sequence[Mapping[str, bytes | None]]) -> None:
        """Keep xapi's settings of ``keys`` from ``fields`` (read with their xapi paths)."""
        for key, found in zip(keys, fields, strict=True):
            try:
                setting = self.ends.xapi_setting(key, found)
            except PolicyError as error:
                if self._xapi_refusals.get(key) != str(error):
                    log.warning("xapi setting refused, ignored: %s", error)
                self._xapi_refusals[key] = str(error)
                setting = XapiSetting()
            else:
                self._xapi_refusals.pop(key, None)
            if setting == XapiSetting():
                self.xapi.pop(key, None)
            else:
                self.xapi[key] = setting
