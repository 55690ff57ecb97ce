"""Opening vif ends, once for every face: which vifs a domain has, what to read of one, who it
is, the policy in force for it and the end built from it.

The agents (:mod:`xenoffload.agents.fleet`), ``show``, the hotplug hook and
:func:`xenoffload.toolstack.negotiate_vif` all open a vif end here, so they name a vif, match
it against the policy and resolve that policy (the file's rules, then xapi's other-config,
then the run-time overrides: docs/configuration.md, "Precedence") the same way. It is made for
batches: :meth:`VifEnds.paths` says what to read of one vif, :func:`read_fields` reads what
any number of vifs need in one round trip, and :meth:`VifEnds.identity`,
:meth:`VifEnds.xapi_setting` and :meth:`VifEnds.build` make the rest from the values read,
without I/O.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence

import attrs

from xenoffload.endpoint import (
    Enforcer,
    VifEndpoint,
    backend_endpoint,
    frontend_endpoint,
)
from xenoffload.machine import Mode
from xenoffload.negotiation import SAFE_POLICY, LinkPolicy, LinkResult
from xenoffload.overrides import OverrideSetting, rules_from_overrides
from xenoffload.paths import (
    VifPaths,
    backend_vif_root,
    domain_name_path,
    domain_vm_path,
    frontend_vif_root,
    xapi_vif_config_root,
)
from xenoffload.policy import Policy, VifIdentity, node_text, vm_uuid
from xenoffload.schema import Role
from xenoffload.store.base import (
    DEFAULT_TRANSACTION_ATTEMPTS,
    Store,
    StoreUnavailable,
    TransactionAborted,
    XenStoreError,
)
from xenoffload.xapi import XAPI_KEYS, XapiSetting, parse_xapi_config, rules_from_xapi
from xenoffload.xenbus import XenbusState

__all__ = ["ALL_SELECTORS", "ATOMIC_CHUNK", "AgentView", "VifEnds", "VifKey", "agent_views",
           "effective_policy", "read_fields"]

#: A vif as every face keys it: (guest domid, devid).
VifKey = tuple[int, int]

#: Every field a policy rule matches on that must be read (domid and devid are in the key).
ALL_SELECTORS = frozenset({"domain", "bridge", "mac", "uuid"})

#: Vifs :func:`read_fields` reads at once with ``atomic``, a transaction each (XenStore lets
#: an unprivileged domain hold 10 transactions).
ATOMIC_CHUNK = 8

#: Field names of xapi's other-config keys in :meth:`VifEnds.paths` (prefix + key name).
_XAPI = "xapi:"


@attrs.frozen
class VifEnds:
    """The vif ends a domain plays in one role: ``domid`` is the domain the ends live in (the
    driver domain for :attr:`Role.BACKEND`, the guest for :attr:`Role.FRONTEND`)."""

    role: Role
    domid: int

    @property
    def reads_xapi(self) -> bool:
        """Whether xapi's per-VIF other-config steers these ends (the backend's, on dom0)."""
        return self.role is Role.BACKEND

    def list(self, store: Store, guests: Iterable[int] | None = None) -> set[VifKey]:
        """Return the vifs present now (of ``guests`` only, when given): the backend's under
        ``<home>/backend/vif``, the guest's under its ``device/vif``."""
        if self.role is Role.FRONTEND:
            if guests is not None and self.domid not in guests:
                return set()
            try:
                names = store.directory(frontend_vif_root(self.domid))
            except XenStoreError:
                return set()
            return {(self.domid, int(name)) for name in names if name.isdigit()}
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

    def paths(self, key: VifKey, selectors: frozenset[str] = ALL_SELECTORS,
              xapi: bool = False) -> dict[str, str]:
        """Return what to read to open vif ``key``'s end: field name -> path. ``selectors``
        are the policy's match fields (the domain's name, MAC and UUID are read only when
        used); ``xapi``: xapi's other-config keys too (:meth:`xapi_setting`)."""
        if self.role is Role.FRONTEND:
            own = VifPaths(0, *key)
            return {"state": own.frontend_key("state"), "backend": own.frontend_key("backend"),
                    "mac": own.frontend_key("mac")}
        paths = VifPaths(self.domid, *key)
        # Not the backend's own ``state``: the end's first step reads it (a guard, in the
        # step's transaction) before anything is written, so reading it here too tells nothing
        # more; ``frontend``, ``bridge`` and ``vifname`` (libxl writes all three with the
        # device) say whether the device is there at all.
        wanted = {"frontend": paths.backend_key("frontend"),
                  "bridge": paths.backend_key("bridge"),
                  "vifname": paths.backend_key("vifname")}
        if "mac" in selectors:
            wanted["mac"] = paths.backend_key("mac")
        if "domain" in selectors:
            wanted["domain"] = domain_name_path(key[0])
        if "uuid" in selectors:
            wanted["vm"] = domain_vm_path(key[0])
        if xapi:
            wanted.update(self.xapi_paths(key))
        return wanted

    def xapi_paths(self, key: VifKey) -> dict[str, str]:
        """xapi's other-config keys of vif ``key`` to read; {} when this role reads none."""
        if not self.reads_xapi:
            return {}
        root = xapi_vif_config_root(*key)
        return {f"{_XAPI}{name}": f"{root}/{name}" for name in XAPI_KEYS}

    @staticmethod
    def present(found: Mapping[str, bytes | None]) -> bool:
        """Whether the vif's own directory showed anything in ``found`` (else it is gone)."""
        return any(value is not None for name, value in found.items()
                   if not name.startswith(_XAPI))

    def identity(self, key: VifKey, found: Mapping[str, bytes | None]) -> VifIdentity:
        """What the policy knows of vif ``key``, from the values of :meth:`paths`."""
        if self.role is Role.FRONTEND:
            return VifIdentity(domid=key[0], devid=key[1], mac=node_text(found.get("mac")))
        return VifIdentity(domid=key[0], devid=key[1], domain=node_text(found.get("domain")),
                           bridge=node_text(found.get("bridge")),
                           mac=node_text(found.get("mac")),
                           vifname=node_text(found.get("vifname")),
                           uuid=vm_uuid(found.get("vm")))

    def xapi_setting(self, key: VifKey, found: Mapping[str, bytes | None]) -> XapiSetting:
        """xapi's setting of vif ``key`` from the values of :meth:`paths` (``xapi=True``);
        raises PolicyError for a value xapi would refuse."""
        if not self.reads_xapi:
            return XapiSetting()
        return parse_xapi_config(xapi_vif_config_root(*key), {
            name: found.get(f"{_XAPI}{name}") for name in XAPI_KEYS})

    def build(self, store: Store, key: VifKey, found: Mapping[str, bytes | None],
              policy: LinkPolicy = SAFE_POLICY, mode: Mode = Mode.COMPANION,
              enforcer: Enforcer | None = None) -> VifEndpoint:
        """Build vif ``key``'s end from the values of :meth:`paths`. Raises PeerLinkError
        when its peer link (the backend's ``frontend``, the frontend's ``backend``) is not the
        vif's own."""
        if self.role is Role.FRONTEND:
            return frontend_endpoint(store, key[0], key[1], found.get("backend"), policy,
                                     enforcer, mode)
        return backend_endpoint(store, VifPaths(self.domid, *key), found.get("frontend"),
                                policy, enforcer, mode)

    def report_paths(self, store: Store, key: VifKey) -> VifPaths:
        """The directories to report vif ``key`` by when its end was refused (its peer link
        is not its own): the guest's is taken from its frontend's ``backend-id``."""
        if self.role is Role.BACKEND:
            return VifPaths(self.domid, *key)
        raw = node_text(store.try_read(VifPaths(0, *key).frontend_key("backend-id")))
        backend = int(raw) if raw is not None and raw.isdigit() and len(raw) <= 5 else 0
        return VifPaths(backend, *key)

    def open(self, store: Store, key: VifKey, policy: LinkPolicy,
             enforcer: Enforcer | None = None, mode: Mode = Mode.COMPANION) -> VifEndpoint:
        """Read what vif ``key``'s end needs and build it (:meth:`build`), policy given."""
        (found,) = read_fields(store, [self.paths(key, frozenset())])
        return self.build(store, key, found, policy, mode, enforcer)


def read_fields(store: Store, wanted: Sequence[Mapping[str, str]], atomic: bool = False
                ) -> list[dict[str, bytes | None]]:
    """Read every path of ``wanted`` (per vif: field -> path) in one round trip; return per
    vif field -> value (None: absent or unreadable). ``atomic``: each vif's fields are read
    in a transaction of their own, read again until it commits (what was read did not change
    meanwhile), :data:`ATOMIC_CHUNK` vifs a round."""
    if not atomic:
        values = iter(store.read_batch([(None, path) for paths in wanted
                                        for path in paths.values()]))
        return [{field: next(values) for field in paths} for paths in wanted]
    found: dict[int, dict[str, bytes | None]] = {}
    todo = list(range(len(wanted)))
    for _ in range(DEFAULT_TRANSACTION_ATTEMPTS):
        again: list[int] = []
        for start in range(0, len(todo), ATOMIC_CHUNK):
            chunk = todo[start:start + ATOMIC_CHUNK]
            txns = store.start_transactions(len(chunk))
            try:
                values = iter(store.read_batch([(txn, path) for index, txn in
                                                zip(chunk, txns, strict=True)
                                                for path in wanted[index].values()]))
            except BaseException:
                with contextlib.suppress(XenStoreError, StoreUnavailable):
                    store.end_transactions([(txn, False) for txn in txns])
                raise
            committed = store.end_transactions([(txn, True) for txn in txns])
            for index, unchanged in zip(chunk, committed, strict=True):
                read = {field: next(values) for field in wanted[index]}
                if unchanged:
                    found[index] = read
                else:
                    again.append(index)
        todo = again
        if not todo:
            return [found[index] for index in range(len(wanted))]
    raise TransactionAborted(DEFAULT_TRANSACTION_ATTEMPTS)


def effective_policy(policy: Policy, ends: VifEnds, xapi: Mapping[VifKey, XapiSetting],
                     overrides: Mapping[str, OverrideSetting]) -> Policy:
    """The policy in force for ``ends``: ``policy``'s rules (the file's), then xapi's, then
    the run-time overrides' (a guest's own ``vif/<devid>`` overrides name its vifs)."""
    return policy.with_rules([
        *rules_from_xapi(xapi),
        *rules_from_overrides(overrides,
                              ends.domid if ends.role is Role.FRONTEND else None)])


@attrs.frozen
class AgentView:
    """What an agent that ran (``--once``) holds for one of its vifs: its machine's view of both
    states, the result it applied, what enforcing it achieved, or why it refused the vif."""

    role: Role
    own_state: XenbusState | None = None
    peer_state: XenbusState | None = None
    result: LinkResult | None = None
    status: str | None = None
    unsafe: bool = False
    retry: bool = False
    details: tuple[str, ...] = ()
    refused: str | None = None


def agent_views(store: Store, ends: VifEnds, endpoints: Mapping[VifKey, VifEndpoint],
                refused: Mapping[VifKey, str]) -> list[tuple[VifPaths, AgentView]]:
    """Return what an agent holds per vif, ``endpoints`` then ``refused`` (each sorted): the
    vif's paths and the agent's view of it."""
    views: list[tuple[VifPaths, AgentView]] = []
    for _key, endpoint in sorted(endpoints.items()):
        machine, enforcement = endpoint.machine, endpoint.enforcement
        views.append((endpoint.paths, AgentView(
            ends.role, machine.own_state, machine.peer_state, endpoint.result,
            enforcement.status if enforcement else None,
            enforcement.unsafe if enforcement else False,
            enforcement.retry if enforcement else False,
            tuple(enforcement.details) if enforcement else ())))
    for key, why in sorted(refused.items()):
        views.append((ends.report_paths(store, key), AgentView(ends.role, refused=why)))
    return views
