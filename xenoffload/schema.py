"""Feature schema: the XenStore keys of checksum offload, who writes them, their defaults and
legacy aliases, and the strict value grammar. Pure data and pure functions; no I/O.

Vocabulary used throughout xenoffload:

* *blank checksum*: a TCP/UDP packet handed across the vif with its checksum left to be
  completed (Linux CHECKSUM_PARTIAL, netif ``csum_blank``).
* an end's **tx** capability for a family: "I may transmit blank-checksum packets on this link";
  its **rx** capability: "I accept blank-checksum packets and complete or validate them myself".
* A direction carries blank checksums only if the sender's tx and the receiver's rx both say so.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

__all__ = [
    "Role",
    "Family",
    "FamilyFlags",
    "Advertisement",
    "FeatureValueError",
    "KeySpec",
    "OWN_KEYS",
    "LEGACY_NO_CSUM_OFFLOAD",
    "LEGACY_IPV6_CSUM_OFFLOAD",
    "STATUS_KEY",
    "RESULT_KEY",
    "FEATURE_KEYS",
    "ParsedAdvertisement",
    "parse_flag",
    "parse_advertisement",
    "render_advertisement",
    "SAFE",
]


class Role(enum.Enum):
    """Which end of a vif: backend (driver domain, netback) or frontend (guest, netfront)."""

    BACKEND = "backend"
    FRONTEND = "frontend"

    @property
    def peer(self) -> Role:
        return Role.FRONTEND if self is Role.BACKEND else Role.BACKEND


class Family(enum.Enum):
    """IP family a checksum flag applies to."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"


@attrs.frozen
class FamilyFlags:
    """One boolean per IP family."""

    ipv4: bool = False
    ipv6: bool = False

    def __getitem__(self, family: Family) -> bool:
        return self.ipv4 if family is Family.IPV4 else self.ipv6

    def __and__(self, other: FamilyFlags) -> FamilyFlags:
        return FamilyFlags(self.ipv4 and other.ipv4, self.ipv6 and other.ipv6)

    def __or__(self, other: FamilyFlags) -> FamilyFlags:
        return FamilyFlags(self.ipv4 or other.ipv4, self.ipv6 or other.ipv6)

    @classmethod
    def both(cls, value: bool) -> FamilyFlags:
        return cls(value, value)

    def describe(self) -> str:
        """Return e.g. ``ipv4+ipv6``, ``ipv4``, or ``none``."""
        on = [family.value for family in Family if self[family]]
        return "+".join(on) if on else "none"


@attrs.frozen
class Advertisement:
    """What one end says it is willing to do with blank checksums, per family."""

    tx: FamilyFlags = FamilyFlags()
    rx: FamilyFlags = FamilyFlags()


#: Nothing offloaded: every checksum is computed. The safe value for anything unknown or malformed.
SAFE = Advertisement()


class FeatureValueError(ValueError):
    """A feature node holds a value outside the grammar. Carries the node's path and raw bytes."""

    def __init__(self, path: str, value: bytes, reason: str) -> None:
        self.path = path
        self.value = value
        self.reason = reason
        shown = value[:64]
        more = f"... ({len(value)} bytes)" if len(value) > 64 else ""
        super().__init__(f"{path}: {reason}: {shown!r}{more}")


@attrs.frozen
class KeySpec:
    """One XenStore key of the schema: its name, the end that writes it, what it means."""

    name: str
    writer: frozenset[Role]
    meaning: str
    default_when_absent: str


#: xenoffload's own keys, written by each end into its own directory: (name, direction, family).
OWN_KEYS: Mapping[tuple[str, Family], str] = {
    ("tx", Family.IPV4): "feature-csum-tx",
    ("rx", Family.IPV4): "feature-csum-rx",
    ("tx", Family.IPV6): "feature-csum-tx-ipv6",
    ("rx", Family.IPV6): "feature-csum-rx-ipv6",
}

#: Legacy netif.h keys xenoffload reads from a peer that does not speak its own keys, and
#: writes beside its own so that a stock driver on the other end behaves as negotiated.
LEGACY_NO_CSUM_OFFLOAD = "feature-no-csum-offload"
LEGACY_IPV6_CSUM_OFFLOAD = "feature-ipv6-csum-offload"

#: Written by an xenoffload end after applying toggles: ``ok`` or what it could not enforce.
STATUS_KEY = "xenoffload-csum-status"

#: Written by an xenoffload end in the same transaction as its status: the result it decided
#: and enforced, ``to-guest=<families> from-guest=<families>`` (grammar in
#: :func:`xenoffload.negotiation.parse_result`), so peers, ``show`` and conformance judges can
#: check that both ends agree.
RESULT_KEY = "xenoffload-csum-result"

FEATURE_KEYS: tuple[KeySpec, ...] = (
    KeySpec("feature-csum-tx", frozenset(Role), "may transmit blank IPv4 TCP/UDP checksums",
            "absent: peer does not speak xenoffload keys; legacy keys decide"),
    KeySpec("feature-csum-rx", frozenset(Role), "accepts blank IPv4 TCP/UDP checksums",
            "as feature-csum-tx"),
    KeySpec("feature-csum-tx-ipv6", frozenset(Role), "may transmit blank IPv6 checksums",
            "0 when feature-csum-tx is present"),
    KeySpec("feature-csum-rx-ipv6", frozenset(Role), "accepts blank IPv6 checksums",
            "0 when feature-csum-tx is present"),
    KeySpec(LEGACY_NO_CSUM_OFFLOAD, frozenset({Role.FRONTEND}),
            "frontend: 1 = send me no blank IPv4 checksums (netback clears vif tx-checksum-ipv4)",
            "0 (offload on)"),
    KeySpec(LEGACY_IPV6_CSUM_OFFLOAD, frozenset(Role),
            "frontend: may receive blank IPv6 checksums; backend: accepts them from the guest",
            "0 (offload off)"),
    KeySpec(STATUS_KEY, frozenset(Role), "what this end enforced in its kernel device", "unknown"),
    KeySpec(RESULT_KEY, frozenset(Role),
            "the result this end decided and enforced: to-guest=F from-guest=F", "unknown"),
)


def parse_flag(path: str, raw: bytes) -> bool:
    """Return the boolean a feature node holds: exactly ``b"0"`` or ``b"1"``.

    Raises FeatureValueError for anything else. (Linux reads these keys with ``%u``: it would
    take "1x" or " 1" as 1, "2" as true and junk as the key's default. xenoffload refuses them
    all and the caller substitutes the safe value; docs/protocol.md lists the differences.)
    """
    if raw == b"1":
        return True
    if raw == b"0":
        return False
    if not raw:
        reason = "empty value"
    elif len(raw) > 16:
        reason = "value too long for a flag"
    elif not all(0x20 <= byte < 0x7F for byte in raw):
        reason = "non-printable bytes"
    else:
        reason = 'not "0" or "1"'
    raise FeatureValueError(path, raw, reason)


@attrs.frozen
class ParsedAdvertisement:
    """A peer's advertisement as read from its directory, with what was wrong in it.

    ``source`` says which keys decided: ``xenoffload`` (own keys), ``legacy`` (netif.h keys
    only) or ``safe`` (nothing usable; checksums computed).
    """

    advertisement: Advertisement
    source: str
    problems: tuple[FeatureValueError, ...] = ()


def _flag_or_safe(
    directory: str, keys: Mapping[str, bytes | None], name: str, absent: bool,
    problems: list[FeatureValueError], safe: bool = False,
) -> bool:
    raw = keys.get(name)
    if raw is None:
        return absent
    try:
        return parse_flag(f"{directory}/{name}" if directory else name, raw)
    except FeatureValueError as problem:
        problems.append(problem)
        return safe


def parse_advertisement(
    directory: str, keys: Mapping[str, bytes | None]
) -> ParsedAdvertisement:
    """Return what an end advertises, given the raw values of its feature keys (``None`` =
    node absent) read from its ``directory`` (which only names the nodes in ``problems``; ""
    names them by key alone). The legacy keys mean the same whichever end wrote them.

    Own keys decide when ``feature-csum-tx`` or ``feature-csum-rx`` is present (legacy keys
    beside them can only take rx away, never add). Otherwise the legacy keys are read as a
    stock driver of that role means them (docs/protocol.md, "Legacy mapping"):

    * frontend: rx ipv4 = not ``feature-no-csum-offload`` (absent: offload on), rx ipv6 =
      ``feature-ipv6-csum-offload`` (absent: off); tx = what stock netfront does (both on).
    * backend: rx ipv4 = not ``feature-no-csum-offload`` (only a Solaris-derived netback writes
      it; absent: on, as Linux netback always accepts blank checksums), rx ipv6 =
      ``feature-ipv6-csum-offload`` (absent: off); tx = what stock netback can do (both on).

    Malformed values become the safe value (False for a capability, "1" for
    ``feature-no-csum-offload``) and are listed in ``problems``.
    """
    problems: list[FeatureValueError] = []
    no_csum = _flag_or_safe(directory, keys, LEGACY_NO_CSUM_OFFLOAD, False, problems, safe=True)
    ipv6 = _flag_or_safe(directory, keys, LEGACY_IPV6_CSUM_OFFLOAD, False, problems)
    legacy = Advertisement(tx=FamilyFlags.both(True), rx=FamilyFlags(ipv4=not no_csum, ipv6=ipv6))
    if any(keys.get(OWN_KEYS[(d, Family.IPV4)]) is not None for d in ("tx", "rx")):
        flags = {
            slot: _flag_or_safe(directory, keys, name, False, problems)
            for slot, name in OWN_KEYS.items()
        }
        # Legacy keys present beside the own ones can only take away: a stock driver on the
        # other side reads them, so the stricter of the two views is the true one.
        legacy_cap = FamilyFlags(
            ipv4=legacy.rx.ipv4 or keys.get(LEGACY_NO_CSUM_OFFLOAD) is None,
            ipv6=legacy.rx.ipv6 or keys.get(LEGACY_IPV6_CSUM_OFFLOAD) is None,
        )
        advertisement = Advertisement(
            tx=FamilyFlags(flags[("tx", Family.IPV4)], flags[("tx", Family.IPV6)]),
            rx=FamilyFlags(flags[("rx", Family.IPV4)], flags[("rx", Family.IPV6)]) & legacy_cap,
        )
        source = "xenoffload"
    else:
        advertisement = legacy
        source = "legacy"
    if problems:
        # A peer that writes garbage gets nothing offloaded in either direction.
        return ParsedAdvertisement(SAFE, "safe", tuple(problems))
    return ParsedAdvertisement(advertisement, source)


def render_advertisement(role: Role, advertisement: Advertisement) -> dict[str, bytes]:
    """Return the keys (name → value) an end of ``role`` writes into its own directory for
    ``advertisement``: xenoffload's own keys plus the legacy keys consistent with them.

    The frontend writes ``feature-no-csum-offload`` (= not rx ipv4) and
    ``feature-ipv6-csum-offload`` (= rx ipv6), which stock netback reads to cap the vif's
    transmit checksum offload. The backend writes ``feature-ipv6-csum-offload`` (= rx ipv6),
    which stock netfront reads to allow IPv6 transmit offload. No stock key lets a backend
    refuse blank IPv4 checksums, so none is written for that.
    """
    keys = {
        name: b"1" if getattr(advertisement, direction)[family] else b"0"
        for (direction, family), name in OWN_KEYS.items()
    }
    keys[LEGACY_IPV6_CSUM_OFFLOAD] = b"1" if advertisement.rx.ipv6 else b"0"
    if role is Role.FRONTEND:
        keys[LEGACY_NO_CSUM_OFFLOAD] = b"0" if advertisement.rx.ipv4 else b"1"
    return keys


#: Every key name :func:`parse_advertisement` may read.
READ_KEYS: tuple[str, ...] = (*OWN_KEYS.values(), LEGACY_NO_CSUM_OFFLOAD, LEGACY_IPV6_CSUM_OFFLOAD)
