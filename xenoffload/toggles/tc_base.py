"""Checksums computed by traffic control where ethtool cannot: the interface and its values.

Where a transmit checksum feature that must be off is fixed on by the driver (netfront's
``tx-checksum-ipv4``), or where no ethtool feature exists at all (dom0 completing the checksums
of what a guest sends), the kernel can still compute the L4 checksum in software on the packet's
way through the device: the ``csum`` action of tc (``act_csum``) on a ``clsact`` qdisc's ingress
or egress hook. A :class:`CsumRule` says "on this hook, for this IP family, compute these
protocols' checksums"; a :class:`TcChecksum` implementation (:mod:`xenoffload.toggles.tc_netlink`
over rtnetlink, :mod:`xenoffload.toggles.simulated` in memory) makes a device carry exactly the
rules it is given and no other rule of xenoffload's, and reports per rule whether the kernel now
enforces it (:class:`TcResult`). What it creates, how it recognises its own, and why, is in
docs/toggles.md ("Enforcement by tc").
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from typing import Protocol

import attrs

from xenoffload.schema import Family
from xenoffload.toggles.base import DeviceRef

__all__ = [
    "Hook",
    "CsumRule",
    "TcOutcome",
    "TcResult",
    "TcChecksum",
    "CSUM_TCP",
    "CSUM_UDP",
    "CSUM_SCTP",
    "CSUM_TCP_UDP",
]

# include/uapi/linux/tc_act/tc_csum.h, enum tca_csum_update_flag.
CSUM_IPV4HDR = 1
CSUM_TCP = 8
CSUM_UDP = 16
CSUM_SCTP = 64
CSUM_TCP_UDP = CSUM_TCP | CSUM_UDP


class Hook(enum.Enum):
    """The clsact hook a rule sits on: what the device receives (``ingress``: in dom0, what a
    guest sends) or what it transmits (``egress``: in a guest, what netfront hands dom0)."""

    INGRESS = "ingress"
    EGRESS = "egress"

    @property
    def parent(self) -> int:
        """Return the filter parent handle of this hook (TC_H_MAKE(TC_H_CLSACT, minor))."""
        return 0xFFFFFFF2 if self is Hook.INGRESS else 0xFFFFFFF3


def _update_flags(_instance: object, _attribute: object, value: int) -> None:
    if value <= 0 or value & ~(CSUM_IPV4HDR | CSUM_TCP | CSUM_UDP | CSUM_SCTP):
        raise ValueError(f"not a set of act_csum update flags xenoffload uses: {value:#x}")


@attrs.frozen(order=True)
class CsumRule:
    """Compute the checksums of ``update_flags``' protocols (act_csum flags; TCP and UDP by
    default) of every non-GSO packet of ``family`` passing ``hook``."""

    hook: Hook = attrs.field(order=lambda hook: hook.value)
    family: Family = attrs.field(order=lambda family: family.value)
    update_flags: int = attrs.field(default=CSUM_TCP_UDP, validator=_update_flags)

    def __str__(self) -> str:
        return f"{self.hook.value} {self.family.value}"


@attrs.frozen
class TcOutcome:
    """What became of one rule: ``enforced`` (read back from the kernel after the apply), or
    ``refused_reason`` saying why not (a fixed vocabulary, see docs/toggles.md)."""

    rule: CsumRule
    enforced: bool
    refused_reason: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.enforced != (self.refused_reason is None):
            raise ValueError("an outcome has a refused_reason exactly when it is not enforced")


@attrs.frozen
class TcResult:
    """The result of one :meth:`TcChecksum.apply`.

    ``outcomes``: one per rule, sorted. ``changes_sent``: how many modifying requests went to
    the kernel (0 when the device already carried exactly the rules: an apply is idempotent).
    ``notes``: what was left in place and why (a rule of ours the kernel would not delete, a
    clsact qdisc xenoffload did not create), for the log.
    """

    device: DeviceRef
    outcomes: tuple[TcOutcome, ...]
    changes_sent: int
    notes: tuple[str, ...] = ()

    @property
    def enforced(self) -> tuple[CsumRule, ...]:
        """Return the rules the kernel enforces."""
        return tuple(outcome.rule for outcome in self.outcomes if outcome.enforced)

    @property
    def refused(self) -> tuple[TcOutcome, ...]:
        """Return the outcomes of the rules that are not enforced."""
        return tuple(outcome for outcome in self.outcomes if not outcome.enforced)

    def outcome(self, rule: CsumRule) -> TcOutcome:
        """Return the outcome of ``rule``. Raises KeyError if it was not asked for."""
        for candidate in self.outcomes:
            if candidate.rule == rule:
                return candidate
        raise KeyError(rule)


class TcChecksum(Protocol):
    """Makes a device's tc hooks compute exactly the checksums it is told to."""

    def apply(self, device: DeviceRef, rules: Collection[CsumRule]) -> TcResult:
        """Make ``device`` carry xenoffload's filters for exactly ``rules`` (none: remove every
        one of ours, and what was created for them) and return the verified outcome of each.

        Never touches a filter, qdisc or device setting it did not create. Raises DeviceGone,
        TogglePermissionDenied, TogglesUnavailable or ToggleError as
        :meth:`~xenoffload.toggles.base.Toggles.apply` does; a kernel that lacks act_csum, the
        classifiers or clsact is an outcome (``enforced=False`` with the reason), not an error.
        """
        ...
