"""``xenoffload hotplug``: the vif hotplug hook (called after xl's vif script, see examples/).

A hotplug script runs while netback waits in InitWait for ``hotplug-status=connected``, so the
hook must return at once. ``online``: write this end's feature keys now (the window in which
the frontend reads them), then fork a background child that waits for both ends to be
Connected and applies the result to the vif's device. ``offline``: stop a child still waiting
for this vif; nothing else to undo (the device is going away). ``add``/``remove``, and any call
with ``type_if=tap``, concern the emulated NIC of an HVM guest (``vifD.N-emu``, QEMU's tap):
no netfront talks to it, so there is nothing to negotiate and the hook does nothing.

Environment, as xl's scripts get it (Xen's vif-common.sh): ``XENBUS_PATH``
(``backend/vif/<domid>/<devid>``, relative to the calling domain, or absolute), ``vif`` (the
device netback created), ``type_if`` (``vif`` or ``tap``). The vif is opened as the backend
agent opens it (:mod:`xenoffload.vifends`): the policy is the file's, then xapi's
``other-config:ethtool-*``, then the run-time overrides (``xenoffload set``). The device is named,
first match wins: ``--device-pattern``; the backend's ``vifname`` (xl ``vifname=``: the stock
script has renamed the device to it before this hook runs); ``$vif``; ``vif<domid>.<devid>``.

One writer per end (:mod:`xenoffload.agentlock`): a hook for a vif holds that vif's lock and
its end's hotplug lock. When a backend agent acts for the domain, the hook leaves the vif to it
and writes nothing; a newer hook for the same vif (``online`` again, or ``offline``) stops the
older one first; an agent that starts stops every hook still waiting.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping

import attrs

from xenoffload.agentlock import EndBusy, EndKey, HeldLock, Holder, acquire_vif, hotplug_permit
from xenoffload.devices import DevicePattern, backend_device
from xenoffload.endpoint import Enforcer
from xenoffload.machine import Mode
from xenoffload.negotiation import LinkPolicy
from xenoffload.override_store import read_overrides
from xenoffload.policy import Policy, PolicyError, VifIdentity, load_policy
from xenoffload.schema import Role
from xenoffload.stdio import detach_stdio
from xenoffload.store.base import Store, StoreUnavailable, XenStoreError, read_own_domid
from xenoffload.toggles.base import DeviceRef
from xenoffload.vifends import ALL_SELECTORS, VifEnds, effective_policy, read_fields

__all__ = ["run_hotplug", "parse_xenbus_path", "resolve_vif", "HOTPLUG_EXIT"]

log = logging.getLogger("xenoffload.hotplug")

#: Exit codes of the hook (docs/cli.md): 0 done or nothing to do (also when an agent acts
#: for the vif), 1 the device cannot be read, 2 not a vif backend path, a device name that
#: is not one, a ``--log`` that cannot be written, 3 XenStore unreachable, 5 an older hook
#: for the vif would not stop, 6 the vif's device does not exist.
HOTPLUG_EXIT = {"ok": 0, "outcome": 1, "usage": 2, "xenstore": 3, "busy": 5, "not_found": 6}

_XENBUS_PATH = re.compile(r"\A(?:/local/domain/(\d{1,5})/)?backend/vif/(\d{1,5})/(\d{1,5})\Z")


def parse_xenbus_path(value: str, own_domid: int = 0) -> tuple[int, int, int] | None:
    """Return (backend domid, guest domid, devid) of a hotplug XENBUS_PATH, or None. A relative
    path belongs to ``own_domid`` (the domain the hook runs in)."""
    match = _XENBUS_PATH.match(value)
    if match is None:
        return None
    backend = int(match.group(1)) if match.group(1) else own_domid
    return backend, int(match.group(2)), int(match.group(3))


def _device_name(environ: Mapping[str, str]) -> str | None:
    """Return ``$vif`` if it is a device name, else None."""
    name = environ.get("vif")
    try:
        return DeviceRef(name).name if name else None
    except ValueError:
        return None


def run_hotplug(action: str, policy: Policy, toggles_kind: str, tc: bool, xenstore: str,
                wait: float, device_pattern: DevicePattern | None, netns: str | None,
                log_path: str | None = None,
                environ: Mapping[str, str] | None = None) -> int:
    """Run the hook for ``action``; return its exit code (:data:`HOTPLUG_EXIT`). ``online``
    returns once this end's keys are written; the part that waits for Connected runs
    detached, logging to ``log_path`` if given."""
    environ = os.environ if environ is None else environ
    vif_env = environ.get("vif", "?")
    type_if = environ.get("type_if", "vif")
    if action in ("add", "remove") or type_if == "tap":
        log.info("hotplug %s %s (type_if=%s): the emulated NIC of an HVM guest; its checksums "
                 "are QEMU's, nothing to negotiate", action, vif_env, type_if)
        return HOTPLUG_EXIT["ok"]
    xenbus_path = environ.get("XENBUS_PATH", "")
    if _XENBUS_PATH.match(xenbus_path) is None:
        shown = repr(xenbus_path[:80]) + ("..." if len(xenbus_path) > 80 else "")
        return _fail("usage", f"XENBUS_PATH {shown} is not a vif backend path")
    if action == "online" and log_path is not None:
        # The background part logs there: checked now, when the script can still be told.
        try:
            with open(log_path, "a"):
                pass
        except OSError as error:
            return _fail("usage", f"--log {log_path}: {error.strerror or error}")
    from xenoffload.store.pyxs_store import connect_store

    try:
        store = connect_store(xenstore)
    except StoreUnavailable as error:
        return _fail("xenstore", f"XenStore unavailable at {xenstore}: {error}")
    try:
        parsed = parse_xenbus_path(xenbus_path, read_own_domid(store) or 0)
        assert parsed is not None
        backend_domid, guest, devid = parsed
        end = EndKey.of(Role.BACKEND, backend_domid, xenstore)
        what = f"hotplug {action} vif {guest}/{devid}"
        try:
            vif_lock, older = acquire_vif(end, guest, devid, what)
        except EndBusy as error:
            return _fail("busy", f"{action}: {error}")
        if older is not None:
            log.info("hotplug %s vif %d/%d: stopped %s", action, guest, devid, older.describe())
        if action == "offline":
            vif_lock.close()
            log.info("hotplug offline vif %d/%d (%s): nothing to undo", guest, devid, vif_env)
            return HOTPLUG_EXIT["ok"]
        try:
            permit = hotplug_permit(end)
        except EndBusy as error:
            vif_lock.close()
            log.info("hotplug online vif %d/%d: %s; leaving the vif to it", guest, devid, error)
            return HOTPLUG_EXIT["ok"]
        identity, link_policy, found = resolve_vif(store, policy, backend_domid, guest, devid,
                                                   _device_name(environ))
        # The device, checked now (the script can still be told): a status is published
        # only by what applied the result to it, never before.
        try:
            enforcer, close = _enforcer(identity, toggles_kind, tc, device_pattern, netns,
                                        check=True)
        except _DeviceProblem as error:
            vif_lock.close()
            permit.close()
            return _fail(error.code, f"online vif {guest}/{devid}: {error}")
        try:
            # Now: our keys into the backend directory (netback is in InitWait).
            VifEnds(Role.BACKEND, backend_domid).build(
                store, (guest, devid), found, link_policy, enforcer=enforcer).step()
        finally:
            close()
    except (StoreUnavailable, XenStoreError) as error:
        return _fail("xenstore", f"XenStore: {error}")
    finally:
        store.close()
    return _finish_in_background([vif_lock, permit], identity, backend_domid, link_policy,
                                 toggles_kind, tc, xenstore, wait, device_pattern, netns,
                                 log_path,
                                 what)


def resolve_vif(store: Store, policy: Policy, backend_domid: int, guest: int, devid: int,
                device_name: str | None
                ) -> tuple[VifIdentity, LinkPolicy, dict[str, bytes | None]]:
    """Open the vif as the backend agent would (:mod:`xenoffload.vifends`): its identity,
    the policy in force for it (the file's, xapi's other-config, the run-time overrides) and
    what its end is built from, read in one round trip (the overrides apart). ``$vif``
    names the device when the toolstack recorded no ``vifname``."""
    ends, key = VifEnds(Role.BACKEND, backend_domid), (guest, devid)
    (found,) = read_fields(store, [ends.paths(key, ALL_SELECTORS, xapi=True)])
    identity = ends.identity(key, found)
    if identity.vifname is None:
        identity = attrs.evolve(identity, vifname=device_name)
    try:
        xapi = {key: ends.xapi_setting(key, found)}
    except PolicyError as error:
        log.warning("hotplug: xapi setting refused, ignored: %s", error)
        xapi = {}
    overrides, problems = read_overrides(store, backend_domid, Role.BACKEND)
    for problem in problems:
        log.warning("hotplug: override refused: %s", problem)
    link_policy = effective_policy(policy, ends, xapi, overrides).for_vif(identity)
    return identity, link_policy, found


def _finish_in_background(locks: list[HeldLock], identity: VifIdentity, backend_domid: int,
                          link_policy: LinkPolicy, toggles_kind: str, tc: bool, xenstore: str,
                          wait: float,
                          device_pattern: DevicePattern | None, netns: str | None,
                          log_path: str | None, what: str) -> int:
    """Fork; the parent returns 0 once the child holds the locks (they are shared with it
    and stay held when the parent exits), the child waits for Connected, applies, exits."""
    ready_read, ready_write = os.pipe()
    child = os.fork()
    if child != 0:
        os.close(ready_write)
        os.read(ready_read, 1)  # the child recorded itself as the vif lock's holder (or died)
        os.close(ready_read)
        for lock in locks:
            lock.keep()  # the child holds them now (and removes the files when done)
        return HOTPLUG_EXIT["ok"]  # the script goes on; the child finishes the job
    os.close(ready_read)
    os.setsid()
    locks[0].record(Holder.me(f"{what} (background)"))
    os.write(ready_write, b"1")
    os.close(ready_write)
    detach_stdio(log_path)  # a hotplug runner waits until the script's streams close
    code = 1
    try:
        code = _negotiate(identity, backend_domid, link_policy, toggles_kind, tc, xenstore,
                          wait, device_pattern, netns)
    finally:
        for lock in reversed(locks):
            lock.close()  # and its file, unless another hook holds it too
        os._exit(code)


def _negotiate(identity: VifIdentity, backend_domid: int, link_policy: LinkPolicy,
               toggles_kind: str, tc: bool, xenstore: str, wait: float,
               device_pattern: DevicePattern | None, netns: str | None) -> int:
    from xenoffload.store.pyxs_store import connect_store
    from xenoffload.toolstack import NegotiationTimeout, negotiate_vif

    guest, devid = identity.domid, identity.devid
    try:
        enforcer, _close = _enforcer(identity, toggles_kind, tc, device_pattern, netns,
                                     check=False)
    except _DeviceProblem as error:
        log.error("hotplug: vif %d/%d: %s", guest, devid, error)
        return 1
    try:
        store = connect_store(xenstore)
        result = negotiate_vif(store, backend_domid, guest, devid, link_policy, enforcer,
                               Mode.COMPANION, wait)
        if result is None:
            log.info("hotplug: vif %d/%d removed before it connected", guest, devid)
        else:
            log.info("hotplug: vif %d/%d negotiated %s", guest, devid, result.describe())
    except (NegotiationTimeout, StoreUnavailable, XenStoreError) as error:
        log.error("hotplug: vif %d/%d: %s", guest, devid, error)
        return 1
    return 0


class _DeviceProblem(Exception):
    """The vif's device cannot be named or does not exist: ``code`` is the exit code's key."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _enforcer(identity: VifIdentity, toggles_kind: str, tc: bool,
              device_pattern: DevicePattern | None, netns: str | None,
              check: bool) -> tuple[Enforcer, Callable[[], None]]:
    """Return the enforcer of the vif's device for ``--toggles`` and what closes it;
    ``check``: the device must exist now (raises _DeviceProblem otherwise)."""
    from xenoffload.enforce import NothingApplied, make_enforcers
    from xenoffload.toggles.base import DeviceGone, ToggleError

    if toggles_kind == "none":
        return NothingApplied(), lambda: None  # --toggles none: no status says ok
    try:
        device = backend_device(identity, device_pattern, netns)
    except ValueError as error:
        raise _DeviceProblem("usage", str(error)) from None
    enforcers = make_enforcers("netlink" if toggles_kind == "netlink" else "dry-run", tc=tc)
    if check:
        try:
            enforcers.toggles.read(device)
        except DeviceGone:
            enforcers.close()
            raise _DeviceProblem("not_found", f"no device {device} (netback's vif: "
                                              "--device-pattern, vifname or $vif name "
                                              "it)") from None
        except ToggleError as error:
            enforcers.close()
            raise _DeviceProblem("outcome", f"device {device}: {error}") from None
    return enforcers.for_device(device), enforcers.close


def _fail(code: str, message: str) -> int:
    """Say why the hook failed in one line on stderr (a hotplug script's log keeps it), as
    every command does (docs/cli.md); return the exit code."""
    log.debug("hotplug failed: %s", message)
    print(f"xenoffload: hotplug: {message}", file=sys.stderr, flush=True)
    return HOTPLUG_EXIT[code]


def load_hook_policy(path: str | None) -> Policy:
    """Return the hook's policy: the file at ``path`` over the backend's built-in default,
    or that default when ``path`` is None; a file that does not load is logged and the
    default used (checksums stay computed)."""
    if path is None:
        return Policy()
    try:
        return load_policy(path)
    except (PolicyError, OSError) as error:
        log.error("hotplug: policy refused, checksums stay computed: %s", error)
        return Policy()
