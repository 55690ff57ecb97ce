"""The mapping from a negotiated checksum-offload result to what one end's device must do.

Two mechanisms, chosen per feature (docs/toggles.md, "Which mechanism enforces what"):

1. **ethtool features** (:func:`wanted_features`). A Xen PV network device's kernel transmit
   checksum features decide whether it hands its peer packets whose TCP/UDP checksum is left
   blank (CHECKSUM_PARTIAL, sent as ``csum_blank``): the backend's ``vifD.N`` transmits towards
   the guest, the frontend's ``ethN`` towards dom0. So "this end may send blank checksums in
   family F" maps to the transmit checksum feature(s) covering F, for either role alike:

   - ``tx-checksum-ipv4`` = may send blank IPv4; ``tx-checksum-ipv6`` = may send blank IPv6
     (netback, netfront, most NICs);
   - ``tx-checksum-ip-generic`` (veth and other software stand-ins, one feature for every
     protocol) and ``tx-checksum-sctp`` (CRC offload, also handed on as partial) = on only if
     both families allow it: the safe side.

   An "off" wish is always included, also for a feature fixed on, so that the apply reports it
   as refused and :attr:`~xenoffload.toggles.base.ApplyResult.unsafe`. An "on" wish is left
   out for a feature fixed off: "may send blank" is a permission, not a demand.

2. **tc rules** (:func:`csum_rules`), where ethtool cannot:

   - *egress*, either role: a transmit checksum feature that must be off but is fixed on by
     the driver (real netfront's ``tx-checksum-ipv4``) gets an egress rule for each family it
     would send blank, so the stack completes those checksums before the driver sees them;
   - *ingress*, backend only: "this end does not accept blank checksums in family F" maps to
     no ethtool feature of any driver (``rx-checksum`` is whether the stack trusts the
     device's receive validation; netback turns a guest's ``csum_blank`` into
     CHECKSUM_PARTIAL whatever it says), so dom0 enforces its "from-guest: compute" policy
     against any guest with an ingress rule on the vif. The guest does not mirror it: what
     dom0 sends it is enforced by the vif's transmit features, which netback lets change.

Left alone, never in the result: ``rx-checksum`` and the dependent features (SG, TSO/TSO6,
GSO, ...): the kernel drops TSO while its family's transmit checksum is off and restores it
when it comes back, because their requested bit is never touched here.
"""

from __future__ import annotations

from collections.abc import Mapping

from xenoffload.schema import Family, FamilyFlags, Role
from xenoffload.toggles.base import FeatureState
from xenoffload.toggles.tc_base import CSUM_SCTP, CSUM_TCP_UDP, CsumRule, Hook

__all__ = [
    "TX_CHECKSUM_IPV4",
    "TX_CHECKSUM_IPV6",
    "TX_CHECKSUM_GENERIC",
    "TX_CHECKSUM_SCTP",
    "TX_CHECKSUM_FEATURES",
    "wanted_features",
    "blank_send_allowed",
    "covered_families",
    "csum_rules",
]

TX_CHECKSUM_IPV4 = "tx-checksum-ipv4"
TX_CHECKSUM_IPV6 = "tx-checksum-ipv6"
TX_CHECKSUM_GENERIC = "tx-checksum-ip-generic"
TX_CHECKSUM_SCTP = "tx-checksum-sctp"
#: The kernel features with which a device hands its peer packets with blank checksums.
TX_CHECKSUM_FEATURES = (TX_CHECKSUM_IPV4, TX_CHECKSUM_IPV6, TX_CHECKSUM_GENERIC, TX_CHECKSUM_SCTP)


def blank_send_allowed(feature: str, send_blank_v4: bool, send_blank_v6: bool) -> bool:
    """Return whether ``feature`` (one of :data:`TX_CHECKSUM_FEATURES`) may be on, given which
    families this end may send blank checksums in. Raises KeyError for another feature."""
    return {
        TX_CHECKSUM_IPV4: send_blank_v4,
        TX_CHECKSUM_IPV6: send_blank_v6,
        TX_CHECKSUM_GENERIC: send_blank_v4 and send_blank_v6,
        TX_CHECKSUM_SCTP: send_blank_v4 and send_blank_v6,
    }[feature]


def wanted_features(
    send_blank_v4: bool,
    send_blank_v6: bool,
    available: Mapping[str, FeatureState],
) -> dict[str, bool]:
    """Return the kernel features (name -> on) this end's device should be asked for.

    ``send_blank_*``: this end may hand the peer packets with a blank checksum in that IP
    family; ``available``: the device's features as read. The same rule holds for both roles
    (see the module doc).
    """
    wanted: dict[str, bool] = {}
    for feature in TX_CHECKSUM_FEATURES:
        state = available.get(feature)
        if state is None:
            continue
        allowed = blank_send_allowed(feature, send_blank_v4, send_blank_v6)
        if allowed and state.fixed and not state.active:
            continue
        wanted[feature] = allowed
    return wanted


def covered_families(feature: str, sends: FamilyFlags) -> tuple[Family, ...]:
    """Return the families in which ``feature`` (one of :data:`TX_CHECKSUM_FEATURES`), when
    on, hands the peer blank checksums this end must not send. Raises KeyError for another
    feature."""
    families = {
        TX_CHECKSUM_IPV4: (Family.IPV4,),
        TX_CHECKSUM_IPV6: (Family.IPV6,),
        TX_CHECKSUM_GENERIC: tuple(Family),
        TX_CHECKSUM_SCTP: tuple(Family),
    }[feature]
    return tuple(family for family in families if not sends[family])


def csum_rules(
    role: Role,
    sends: FamilyFlags,
    receives: FamilyFlags,
    available: Mapping[str, FeatureState],
) -> tuple[CsumRule, ...]:
    """Return the tc rules this end's device needs besides its ethtool features, sorted.

    ``sends``/``receives``: the families in which this end may send/receive blank checksums
    (:meth:`~xenoffload.negotiation.LinkResult.sends` and ``receives`` for ``role``);
    ``available``: the device's features as read. Egress: one rule per family a transmit
    checksum feature fixed on would send blank (TCP and UDP; SCTP too when the feature is
    ``tx-checksum-sctp``). Ingress, for the backend only: one rule per family it does not
    accept blank. See the module doc for why.
    """
    flags: dict[tuple[Hook, Family], int] = {}
    for feature in TX_CHECKSUM_FEATURES:
        state = available.get(feature)
        if state is None or not (state.fixed and state.active):
            continue
        for family in covered_families(feature, sends):
            extra = CSUM_SCTP if feature == TX_CHECKSUM_SCTP else 0
            flags[Hook.EGRESS, family] = flags.get((Hook.EGRESS, family), CSUM_TCP_UDP) | extra
    if role is Role.BACKEND:
        for family in Family:
            if not receives[family]:
                flags[Hook.INGRESS, family] = CSUM_TCP_UDP
    return tuple(sorted(CsumRule(hook, family, update) for (hook, family), update
                        in flags.items()))
