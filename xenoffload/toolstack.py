"""The Python API for toolstacks: lay out a domain and a vif as libxl does, negotiate one vif,
remove it.

``create_domain``/``create_vif``/``destroy_vif`` write and remove the nodes libxl writes, with
exactly libxl's ownership (checked against a real xl trace, docs/integration.md), so the
embedded server, tests, the demo and the benchmarks use real layouts — and a guest cannot do
there what it cannot do under libxl (remove its home, create device directories).
``negotiate_vif`` runs one vif's backend negotiation to its end (for hotplug hooks and
toolstacks that do not run the agent).
"""

from __future__ import annotations

import time
import uuid as uuid_module

import attrs

from xenoffload.endpoint import Enforcer, VifEndpoint
from xenoffload.machine import Mode
from xenoffload.negotiation import LinkPolicy, LinkResult
from xenoffload.paths import VifPaths, domain_path, vm_dir
from xenoffload.schema import Role
from xenoffload.store.base import Access, Perm, Store, Transaction, run_transaction
from xenoffload.vifends import VifEnds
from xenoffload.xenbus import XenbusState

__all__ = ["VifSpec", "create_domain", "create_vif", "destroy_vif", "negotiate_vif",
           "NegotiationTimeout"]


@attrs.frozen
class VifSpec:
    """What a toolstack knows of a vif before creating it."""

    guest_domid: int
    devid: int
    mac: str
    bridge: str
    backend_domid: int = 0
    script: str = "/etc/xen/scripts/vif-bridge"

    @property
    def paths(self) -> VifPaths:
        return VifPaths(self.backend_domid, self.guest_domid, self.devid)


def create_domain(store: Store, domid: int, name: str, uuid: str | None = None) -> str:
    """Create the domain's home as libxl does (one transaction): ``/local/domain/<domid>``,
    its ``name``, ``domid``, ``vm`` (naming ``/vm/<uuid>``, which holds ``uuid`` and ``name``)
    and ``device`` nodes owned by the toolstack and readable by the guest (``n0 r<domid>``),
    its ``data`` directory owned by the guest (``n<domid>``). ``uuid``: the VM's (a restored
    domain keeps it); None: a new one, as ``xl create`` of a config without ``uuid=``.
    Return the UUID."""
    home = domain_path(domid)
    toolstack_owned = [Perm(Access.NONE, 0), Perm(Access.READ, domid)]
    uuid = str(uuid_module.uuid4()) if uuid is None else uuid
    vm = vm_dir(uuid)

    def body(txn: Transaction) -> None:
        txn.mkdir(home)
        txn.set_perms(home, toolstack_owned)
        for path, value in ((vm, ""), (f"{vm}/uuid", uuid), (f"{vm}/name", name)):
            txn.write(path, value.encode())
            txn.set_perms(path, toolstack_owned)
        for key, value in (("name", name), ("domid", str(domid)), ("vm", vm)):
            txn.write(f"{home}/{key}", value.encode())
            txn.set_perms(f"{home}/{key}", toolstack_owned)
        txn.mkdir(f"{home}/device")
        txn.set_perms(f"{home}/device", toolstack_owned)
        txn.mkdir(f"{home}/data")
        txn.set_perms(f"{home}/data", [Perm(Access.NONE, domid)])

    run_transaction(store, body)
    return uuid


def create_vif(store: Store, spec: VifSpec) -> VifPaths:
    """Write a vif's frontend and backend directories as libxl does (one transaction):
    frontend dir and its keys ``[n<guest>, r<backend>]`` except ``mtu``
    (``[n<backend>, r<guest>]``), backend dir and its keys ``[n<backend>, r<guest>]``, both
    ``state`` = 1, the backend's ``hotplug-status`` pre-written empty. The frontend dir's
    parent ``device/vif`` is created, if missing, with ``device``'s permissions (toolstack
    owned), as libxl's MKDIR creates it. Returns its paths."""
    paths = spec.paths
    guest, backend = spec.guest_domid, spec.backend_domid
    front_perms = [Perm(Access.NONE, guest), Perm(Access.READ, backend)]
    back_perms = [Perm(Access.NONE, backend), Perm(Access.READ, guest)]
    frontend = {"backend": paths.backend_dir, "backend-id": str(backend), "state": "1",
                "handle": str(spec.devid), "mac": spec.mac, "trusted": "1"}
    toolstack_only = {"mtu": "1500"}
    backend_keys = {"frontend": paths.frontend_dir, "frontend-id": str(guest), "online": "1",
                    "state": "1", "script": spec.script, "mac": spec.mac,
                    "bridge": spec.bridge, "handle": str(spec.devid), "type": "vif",
                    "hotplug-status": ""}

    def body(txn: Transaction) -> None:
        for directory in (paths.frontend_dir, paths.backend_dir):
            if txn.try_read(directory) is not None:
                txn.rm(directory)
        txn.mkdir(paths.frontend_dir)
        txn.set_perms(paths.frontend_dir, front_perms)
        for key, value in frontend.items():
            txn.write(f"{paths.frontend_dir}/{key}", value.encode())
            txn.set_perms(f"{paths.frontend_dir}/{key}", front_perms)
        for key, value in toolstack_only.items():
            txn.write(f"{paths.frontend_dir}/{key}", value.encode())
            txn.set_perms(f"{paths.frontend_dir}/{key}",
                          [Perm(Access.NONE, backend), Perm(Access.READ, guest)])
        txn.mkdir(paths.backend_dir)
        txn.set_perms(paths.backend_dir, back_perms)
        for key, value in backend_keys.items():
            txn.write(f"{paths.backend_dir}/{key}", value.encode())

    run_transaction(store, body)
    return paths


def destroy_vif(store: Store, paths: VifPaths) -> None:
    """Remove both directories (what libxl does once the device is closed)."""

    def body(txn: Transaction) -> None:
        for directory in (paths.backend_dir, paths.frontend_dir):
            if txn.try_read(directory) is not None:
                txn.rm(directory)

    run_transaction(store, body)


class NegotiationTimeout(Exception):
    """:func:`negotiate_vif` did not see both ends Connected in time (the device is still
    there)."""


def negotiate_vif(
    store: Store,
    backend_domid: int,
    guest_domid: int,
    devid: int,
    policy: LinkPolicy,
    enforcer: Enforcer | None = None,
    mode: Mode = Mode.COMPANION,
    timeout: float = 30.0,
) -> LinkResult | None:
    """Run the backend end of one vif until both ends are Connected and the result is applied;
    return the result, or None if the vif's directory was removed before that (the toolstack
    destroyed the device: there is nothing left to negotiate, and that is not a failure).
    Registers (and removes) its own watch on ``store``.

    Raises NegotiationTimeout after ``timeout`` seconds without both ends Connected,
    PeerLinkError for a vif whose ``frontend`` link is not its own,
    XenStoreError/StoreUnavailable for store faults.
    """
    endpoint: VifEndpoint = VifEnds(Role.BACKEND, backend_domid).open(
        store, (guest_domid, devid), policy, enforcer, mode)
    token = f"xenoffload-negotiate-{guest_domid}-{devid}-{time.monotonic_ns()}"
    store.watch(endpoint.own_dir, token)
    store.watch(endpoint.peer_dir, token)
    deadline = time.monotonic() + timeout
    try:
        while True:
            endpoint.step()
            own, peer = endpoint.machine.own_state, endpoint.machine.peer_state
            if endpoint.result is not None and own is XenbusState.CONNECTED \
                    and peer is XenbusState.CONNECTED and not endpoint.needs_retry:
                return endpoint.result
            if endpoint.gone:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NegotiationTimeout(
                    f"{endpoint.label}: own {own}, peer {peer} after {timeout}s")
            store.next_event(min(remaining, 1.0))
    finally:
        store.unwatch(endpoint.own_dir, token)
        store.unwatch(endpoint.peer_dir, token)
