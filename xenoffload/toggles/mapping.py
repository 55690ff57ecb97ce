"""The mapping from a negotiated checksum-offload result to the kernel features one end wants.

A Xen PV network device's kernel transmit checksum features decide whether it hands its peer
packets whose TCP/UDP checksum is left blank (CHECKSUM_PARTIAL, sent as ``csum_blank``): the
backend's ``vifD.N`` transmits towards the guest, the frontend's ``ethN`` towards dom0. So
"this end may send blank checksums in family F" maps to the transmit checksum feature(s)
covering F, for either role alike:

- ``tx-checksum-ipv4`` = may send blank IPv4; ``tx-checksum-ipv6`` = may send blank IPv6
  (netback, netfront, most NICs);
- ``tx-checksum-ip-generic`` (veth and other software stand-ins, one feature for every
  protocol) and ``tx-checksum-sctp`` (CRC offload, also handed on as partial) = on only if
  both families allow it: the safe side.

An "off" wish is always included, also for a feature fixed on, so that the apply reports it
as refused and :attr:`~xenoffload.toggles.base.ApplyResult.unsafe` (real netfront keeps IPv4
transmit checksum offload fixed on). An "on" wish is left out for a feature fixed off: "may
send blank" is a permission, not a demand, and a device without that offload computes
checksums itself.

Left alone, never in the result: ``rx-checksum`` (trusting the device's receive validation;
it does not decide whether blank-checksum packets are accepted, and is fixed on on both real
netback and netfront; "receive_blank" is enforced by the peer's transmit features and by
dom0 completing blank checksums before forwarding, see docs/toggles.md) and the dependent
features (SG, TSO/TSO6, GSO, ...): the kernel drops TSO while its family's transmit checksum
is off and restores it when it comes back, because their requested bit is never touched here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from xenoffload.toggles.base import FeatureState

__all__ = [
    "TX_CHECKSUM_IPV4",
    "TX_CHECKSUM_IPV6",
    "TX_CHECKSUM_GENERIC",
    "TX_CHECKSUM_SCTP",
    "TX_CHECKSUM_FEATURES",
    "wanted_features",
    "blank_send_allowed",
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
    role: Literal["backend", "frontend"],
    send_blank_v4: bool,
    send_blank_v6: bool,
    receive_blank_v4: bool,
    receive_blank_v6: bool,
    available: Mapping[str, FeatureState],
) -> dict[str, bool]:
    """Return the kernel features (name -> on) this end's device should be asked for.

    ``send_blank_*``: this end may hand the peer packets with a blank checksum in that IP
    family; ``receive_blank_*``: this end accepts such packets from the peer. ``available``:
    the device's features as read. The same rule holds for both roles (see the module doc);
    the receive flags map to no kernel feature of this device and leave the result unchanged.
    Raises ValueError for an unknown role.
    """
    if role not in ("backend", "frontend"):
        raise ValueError(f"role must be 'backend' or 'frontend', not {role!r}")
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
