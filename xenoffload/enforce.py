"""Enforcement in a vif end's kernel device: ethtool features, and tc where ethtool cannot.

:class:`TogglesEnforcer` is the :class:`~xenoffload.endpoint.Enforcer` of a vif end that has a
kernel device (netback's ``vifD.N`` in the driver domain, netfront's ``ethN`` in a guest). For
a negotiated result it applies the transmit checksum features
(:func:`~xenoffload.toggles.mapping.wanted_features`) and, when it has a tc mechanism, the tc
rules (:func:`~xenoffload.toggles.mapping.csum_rules`): egress rules for features the driver
keeps on, and, on a backend, ingress rules that compute what the guest sends. The verified
outcome becomes the ``xenoffload-csum-status`` value (:func:`enforcement_of`; the grammar is in
docs/toggles.md, "Status"). :func:`make_enforcers` builds the mechanisms an agent shares among
its vifs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import attrs

from xenoffload.endpoint import Enforcement
from xenoffload.negotiation import LinkResult
from xenoffload.schema import FamilyFlags, Role
from xenoffload.toggles.base import ApplyResult, DeviceGone, DeviceRef, ToggleError, Toggles
from xenoffload.toggles.mapping import (
    TX_CHECKSUM_FEATURES,
    covered_families,
    csum_rules,
    wanted_features,
)
from xenoffload.toggles.tc_base import Hook, TcChecksum, TcOutcome, TcResult
from xenoffload.toggles.tc_plan import TcConfig

__all__ = ["TogglesEnforcer", "Enforcers", "make_enforcers", "enforcement_of",
           "NO_TC_REASON", "NothingApplied"]

log = logging.getLogger("xenoffload.enforce")

#: Why a rule only tc could enforce is not enforced under ``--no-tc``.
NO_TC_REASON = "tc disabled by --no-tc"


@attrs.frozen
class NothingApplied:
    """The enforcer of ``--toggles none``: no device is touched, so no status says ``ok``
    (the status is about the device: ``unenforced: nothing applied (--toggles none)``). Not
    ``unsafe``: nothing failed, the operator chose it."""

    reason: str = "nothing applied (--toggles none)"

    def enforce(self, role: Role, result: LinkResult) -> Enforcement:
        return Enforcement(f"unenforced: {self.reason}", details=(self.reason,))


@attrs.define
class TogglesEnforcer:
    """Applies results to one kernel device: its ethtool features through ``toggles`` and,
    when ``tc`` is given, its tc rules (None: ethtool only, every fixed feature reported
    ``unenforced`` and no ingress rule). ``without_tc``, with ``tc`` None: why tc is not
    used (``tc disabled by --no-tc``); every rule the device would need is then reported
    ``unenforced`` with that reason, as if tc had refused it: a status is about the device,
    not about the options."""

    toggles: Toggles
    device: DeviceRef
    tc: TcChecksum | None = None
    without_tc: str | None = None

    def enforce(self, role: Role, result: LinkResult) -> Enforcement:
        """Apply ``result`` to the device; return what was achieved (never raises for device
        or toggle faults: they come back as a status with ``retry=True``)."""
        sends, receives = result.sends(role), result.receives(role)
        try:
            available = self.toggles.read(self.device)
            applied = self.toggles.apply(self.device,
                                         wanted_features(sends.ipv4, sends.ipv6, available),
                                         before=available)
            tc_result = None
            if self.tc is not None:
                tc_result = self.tc.apply(self.device,
                                          csum_rules(role, sends, receives, available))
            elif self.without_tc is not None:
                tc_result = TcResult(self.device, tuple(
                    TcOutcome(rule, False, self.without_tc)
                    for rule in csum_rules(role, sends, receives, available)), 0)
        except DeviceGone as error:
            return Enforcement(f"no-device: {self.device}", retry=True, details=(str(error),))
        except ToggleError as error:
            return Enforcement(f"error: {error.status_words}", retry=True,
                               details=(str(error),))
        changes = " ".join(f"{o.feature}={'on' if o.requested else 'off'}"
                           for o in applied.outcomes)
        log.info("%s %s: %s (%s)%s", self.device, role.value, changes or "nothing to set",
                 "changed" if applied.set_issued else "already so",
                 "" if tc_result is None else
                 f"; tc {' '.join(map(str, tc_result.enforced)) or 'no rule'} "
                 f"({tc_result.changes_sent} change(s))")
        return enforcement_of(applied, tc_result, sends)


def enforcement_of(applied: ApplyResult, tc_result: TcResult | None,
                   sends: FamilyFlags) -> Enforcement:
    """Return the Enforcement (status, unsafe, details) of an ethtool apply and, if any, the
    tc apply that followed, for an end that may send blank checksums in ``sends``.

    A transmit checksum feature that stays on where it must be off is covered when tc
    enforces an egress rule for every family it would send blank in; otherwise it is a
    problem, with the tc reason when tc tried. An ingress rule tc could not enforce is a
    problem. Problems make the status ``unenforced: ...`` and ``unsafe``; without, the status
    is ``ok``, followed by ``(enforced-by-tc: ...)`` when tc enforces any rule.
    """
    by_key = {} if tc_result is None else {
        (outcome.rule.hook, outcome.rule.family): outcome for outcome in tc_result.outcomes}
    problems: list[str] = []
    for outcome in applied.unsafe:
        families = (covered_families(outcome.feature, sends)
                    if outcome.feature in TX_CHECKSUM_FEATURES else ())
        egress = [(family, by_key.get((Hook.EGRESS, family))) for family in families]
        if families and all(tc is not None and tc.enforced for _family, tc in egress):
            continue
        tc_reasons = "".join(f"; tc egress {family.value}: {tc.refused_reason}"
                             for family, tc in egress if tc is not None and not tc.enforced)
        problems.append(f"{outcome.feature} stays on ({outcome.refused_reason}{tc_reasons})")
    problems += [f"tc ingress {outcome.rule.family.value}: {outcome.refused_reason}"
                 for outcome in by_key.values()
                 if outcome.rule.hook is Hook.INGRESS and not outcome.enforced]
    notes = () if tc_result is None else tc_result.notes
    if problems:
        return Enforcement("unenforced: " + "; ".join(problems), unsafe=True,
                           details=(*problems, *notes))
    kept_off = tuple(f"{o.feature} stays off ({o.refused_reason})" for o in applied.refused)
    enforced = () if tc_result is None else tc_result.enforced
    status = "ok" if not enforced else (
        f"ok (enforced-by-tc: {', '.join(str(rule) for rule in enforced)})")
    return Enforcement(status, details=(*kept_off, *notes))


@attrs.frozen
class Enforcers:
    """The kernel mechanisms one agent shares among its vifs: ``toggles`` (ethtool) and
    ``tc`` (None: ethtool only). :meth:`for_device` gives the enforcer of one device;
    ``closers`` release what the mechanisms hold (their sockets)."""

    toggles: Toggles
    tc: TcChecksum | None = None
    closers: tuple[Callable[[], None], ...] = ()
    without_tc: str | None = None

    def for_device(self, device: DeviceRef) -> TogglesEnforcer:
        """Return the enforcer of ``device``."""
        return TogglesEnforcer(self.toggles, device, self.tc, self.without_tc)

    def close(self) -> None:
        """Release the sockets of the mechanisms."""
        for close in self.closers:
            close()


def make_enforcers(kind: Literal["netlink", "dry-run"], *, tc: bool = True,
                   tc_config: TcConfig | None = None) -> Enforcers:
    """Return the mechanisms for the CLI's ``--toggles`` mode: ``"netlink"`` drives the real
    kernel (ethtool generic netlink, and rtnetlink for tc), ``"dry-run"`` simulated devices
    created on first use (:func:`~xenoffload.toggles.simulated.profile_for_name`), tc answered
    by their simulated kernel. ``tc=False`` leaves tc alone (ethtool only): what only tc
    could enforce is then reported ``unenforced`` with the reason :data:`NO_TC_REASON`.
    ``tc_config``: the filters' priority and classifiers (default
    :class:`~xenoffload.toggles.tc_plan.TcConfig`). Raises ValueError for another kind."""
    # Imported here: an agent needs one of the two, and the netlink one opens sockets.
    from xenoffload.toggles.tc_netlink import NetlinkTc

    if kind == "netlink":
        from xenoffload.toggles.netlink import NetlinkToggles

        toggles = NetlinkToggles()
        if not tc:
            return Enforcers(toggles, None, (toggles.close,), NO_TC_REASON)
        tcs = NetlinkTc(config=tc_config)
        return Enforcers(toggles, tcs, (toggles.close, tcs.close))
    if kind == "dry-run":
        from xenoffload.toggles.simulated import SimulatedKernel, profile_for_name

        world = SimulatedKernel(auto_profile=profile_for_name)
        if not tc:
            return Enforcers(world, without_tc=NO_TC_REASON)
        return Enforcers(world, NetlinkTc(config=tc_config, transport_for=world.rtnetlink))
    raise ValueError(f"unknown enforcement kind {kind!r}: expected 'netlink' or 'dry-run'")
