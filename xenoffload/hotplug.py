"""``xenoffload hotplug``: the vif hotplug hook (called after xl's vif script, see examples/).

A hotplug script runs while netback waits in InitWait for ``hotplug-status=connected``, so the
hook must return at once. ``online``/``add``: write this end's feature keys now (the window in
which the frontend reads them), then fork a background child that waits for both ends to be
Connected and applies the result to ``vif<domid>.<devid>``. ``offline``/``remove``: nothing to
undo (the device is going away); logged only. Environment as xl's scripts get it:
``XENBUS_PATH`` (``backend/vif/<domid>/<devid>``, relative or absolute) and ``vif``.
"""

from __future__ import annotations

import logging
import os
import re

from xenoffload.endpoint import Enforcer
from xenoffload.machine import Mode
from xenoffload.policy import Policy, PolicyError, VifIdentity, load_policy, node_text
from xenoffload.store.base import StoreUnavailable, XenStoreError
from xenoffload.toggles.base import DeviceRef

__all__ = ["run_hotplug", "parse_xenbus_path"]

log = logging.getLogger("xenoffload.hotplug")

_XENBUS_PATH = re.compile(r"\A(?:/local/domain/(\d{1,10})/)?backend/vif/(\d{1,10})/(\d{1,10})\Z")


def parse_xenbus_path(value: str, own_domid: int = 0) -> tuple[int, int, int] | None:
    """Return (backend domid, guest domid, devid) of a hotplug XENBUS_PATH, or None."""
    match = _XENBUS_PATH.match(value)
    if match is None:
        return None
    backend = int(match.group(1)) if match.group(1) else own_domid
    return backend, int(match.group(2)), int(match.group(3))


def _detach(log_path: str | None) -> None:
    """Give up the caller's stdin/stdout/stderr (a hotplug runner waits for them to close):
    read nothing, log to ``log_path`` (appended) or nowhere."""
    devnull = os.open(os.devnull, os.O_RDWR)
    target = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640) \
        if log_path else devnull
    os.dup2(devnull, 0)
    os.dup2(target, 1)
    os.dup2(target, 2)


def run_hotplug(action: str, config: str | None, toggles_kind: str, xenstore: str,
                wait: float, device_pattern: str, netns: str | None,
                log_path: str | None = None) -> int:
    """Run the hook; return the exit code (0 also when there is nothing to do). The part that
    waits for Connected runs detached, logging to ``log_path`` if given."""
    if action in ("offline", "remove"):
        vif = os.environ.get("vif", "?")  # noqa: SIM112 (the name xl's scripts use)
        log.info("hotplug %s %s: nothing to undo", action, vif)
        return 0
    parsed = parse_xenbus_path(os.environ.get("XENBUS_PATH", ""))
    if parsed is None:
        log.error("hotplug: XENBUS_PATH %r is not a vif backend path",
                  os.environ.get("XENBUS_PATH"))
        return 2
    backend_domid, guest, devid = parsed
    try:
        policy = load_policy(config) if config else Policy()
    except (PolicyError, OSError) as error:
        log.error("hotplug: policy refused, checksums stay computed: %s", error)
        policy = Policy()
    from xenoffload.endpoint import backend_endpoint
    from xenoffload.paths import VifPaths, domain_path
    from xenoffload.store.pyxs_store import connect_store
    from xenoffload.toolstack import NegotiationTimeout, negotiate_vif

    try:
        store = connect_store(xenstore)
        paths = VifPaths(backend_domid, guest, devid)
        identity = VifIdentity(
            guest, devid,
            domain=node_text(store.try_read(f"{domain_path(guest)}/name")),
            bridge=node_text(store.try_read(f"{paths.backend_dir}/bridge")),
            mac=node_text(store.try_read(f"{paths.backend_dir}/mac")))
        link_policy = policy.for_vif(identity)
        # Now: our keys into the backend directory (netback is in InitWait).
        backend_endpoint(store, backend_domid, guest, devid, link_policy).step()
        store.close()
    except (StoreUnavailable, XenStoreError) as error:
        log.error("hotplug: XenStore: %s", error)
        return 3
    if os.fork() != 0:
        return 0  # the script goes on; the child finishes the job
    os.setsid()
    _detach(log_path)
    enforcer: Enforcer | None = None
    if toggles_kind != "none":
        from xenoffload.enforce import TogglesEnforcer
        from xenoffload.toggles import make_toggles

        toggles = make_toggles("netlink" if toggles_kind == "netlink" else "dry-run")
        device = DeviceRef(device_pattern.format(domid=guest, devid=devid), netns)
        enforcer = TogglesEnforcer(toggles, device)
    code = 0
    try:
        store = connect_store(xenstore)
        result = negotiate_vif(store, backend_domid, guest, devid, link_policy, enforcer,
                               Mode.COMPANION, wait)
        log.info("hotplug: vif %d/%d negotiated %s", guest, devid, result.describe())
    except (NegotiationTimeout, StoreUnavailable, XenStoreError) as error:
        log.error("hotplug: vif %d/%d: %s", guest, devid, error)
        code = 1
    os._exit(code)
