"""The negotiation decision: which directions of one vif may carry blank checksums.

Pure functions over advertisements and policy; both ends call the same function on the same
store contents and so reach the same result.
"""

from __future__ import annotations

import re

import attrs

from xenoffload.schema import Advertisement, Family, FamilyFlags, Role

__all__ = ["LinkPolicy", "LinkResult", "ResultValueError", "advertise", "decide", "SAFE_POLICY",
           "explain", "format_result", "parse_result"]


@attrs.frozen
class LinkPolicy:
    """Where an end's configuration allows blank checksums on one vif, per direction.

    ``to_guest``: backend → frontend (the backend vif's tx, the guest eth's rx).
    ``from_guest``: frontend → backend (the guest eth's tx, the backend vif's rx).
    The default allows nothing: every checksum is computed.
    """

    to_guest: FamilyFlags = FamilyFlags()
    from_guest: FamilyFlags = FamilyFlags()

    def describe(self) -> str:
        return f"to-guest {self.to_guest.describe()}, from-guest {self.from_guest.describe()}"


SAFE_POLICY = LinkPolicy()


@attrs.frozen
class LinkResult:
    """The negotiated outcome for one vif: per direction, per family, True = blank checksums
    may cross (the receiver completes them), False = the sender computes every checksum."""

    to_guest: FamilyFlags = FamilyFlags()
    from_guest: FamilyFlags = FamilyFlags()

    def sends(self, role: Role) -> FamilyFlags:
        """Families in which ``role`` may send blank checksums."""
        return self.to_guest if role is Role.BACKEND else self.from_guest

    def receives(self, role: Role) -> FamilyFlags:
        """Families in which ``role`` may receive blank checksums."""
        return self.from_guest if role is Role.BACKEND else self.to_guest

    def describe(self) -> str:
        return f"to-guest {self.to_guest.describe()}, from-guest {self.from_guest.describe()}"


def advertise(role: Role, capability: Advertisement, policy: LinkPolicy) -> Advertisement:
    """Return what an end of ``role`` advertises: what it can do, capped by its local policy.

    For the backend, tx is the to-guest direction and rx the from-guest one; for the frontend
    the other way round.
    """
    if role is Role.BACKEND:
        return Advertisement(tx=capability.tx & policy.to_guest,
                             rx=capability.rx & policy.from_guest)
    return Advertisement(tx=capability.tx & policy.from_guest,
                         rx=capability.rx & policy.to_guest)


def decide(backend: Advertisement, frontend: Advertisement,
           policy: LinkPolicy | None = None) -> LinkResult:
    """Return the negotiated result: a direction carries blank checksums in a family only if
    the sender's tx, the receiver's rx and (when given) the deciding end's own policy allow it.

    Symmetric in the sense that matters: both ends, given the same two advertisements, get the
    same result. ``policy`` is an extra cap for an end whose advertisement may lag behind a
    policy change it has just been told about; it never enables anything.
    """
    to_guest = backend.tx & frontend.rx
    from_guest = frontend.tx & backend.rx
    if policy is not None:
        to_guest = to_guest & policy.to_guest
        from_guest = from_guest & policy.from_guest
    return LinkResult(to_guest=to_guest, from_guest=from_guest)


def explain(backend: Advertisement, frontend: Advertisement, result: LinkResult) -> list[str]:
    """Return one line per direction and family saying why it came out as it did."""
    lines = []
    for direction, sender, receiver, s_name, r_name in (
        ("to-guest", backend, frontend, "backend", "frontend"),
        ("from-guest", frontend, backend, "frontend", "backend"),
    ):
        for family in Family:
            allowed = getattr(result, direction.replace("-", "_"))[family]
            if allowed:
                why = f"{s_name} tx and {r_name} rx both allow it"
            else:
                refusers = []
                if not sender.tx[family]:
                    refusers.append(f"{s_name} tx")
                if not receiver.rx[family]:
                    refusers.append(f"{r_name} rx")
                why = ("refused by " + " and ".join(refusers)) if refusers else "refused by policy"
            verdict = "blank checksums allowed" if allowed else "checksums computed"
            lines.append(f"{direction} {family.value}: {verdict} ({why})")
    return lines


_FAMILIES = {"none": FamilyFlags(), "ipv4": FamilyFlags(ipv4=True), "ipv6": FamilyFlags(ipv6=True),
             "ipv4+ipv6": FamilyFlags.both(True)}
_RESULT_RE = re.compile(
    rb"\Ato-guest=(none|ipv4|ipv6|ipv4\+ipv6) from-guest=(none|ipv4|ipv6|ipv4\+ipv6)\Z")


class ResultValueError(ValueError):
    """A ``xenoffload-csum-result`` value outside its grammar."""


def format_result(result: LinkResult) -> bytes:
    """Return the ``xenoffload-csum-result`` value of ``result``, e.g.
    ``b"to-guest=ipv4+ipv6 from-guest=none"`` (each direction: the families that may carry
    blank checksums, ``none`` or ``ipv4``, ``ipv6``, ``ipv4+ipv6`` in that order)."""
    return (f"to-guest={result.to_guest.describe()} "
            f"from-guest={result.from_guest.describe()}").encode("ascii")


def parse_result(raw: bytes) -> LinkResult:
    """Return the LinkResult a ``xenoffload-csum-result`` value states. Exactly the form
    :func:`format_result` writes (one space, no other white space, families in that order) is
    accepted; anything else raises ResultValueError."""
    match = _RESULT_RE.match(raw)
    if match is None:
        raise ResultValueError(f"not a checksum result: {raw[:64]!r}")
    return LinkResult(to_guest=_FAMILIES[match.group(1).decode()],
                      from_guest=_FAMILIES[match.group(2).decode()])
