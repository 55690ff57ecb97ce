"""Run-time policy overrides: what an override node holds and the policy rules it makes. Pure.

An override is a node under :func:`xenoffload.paths.override_root` of the agent it steers:
``vif/<uuid>/<devid>`` for one vif seen from dom0 (the VM's UUID: the override holds across
save/restore and reboot on this host, and stays in this host's XenStore when the VM migrates
to another; ``vif/<domid>/<devid>`` for a domain without one),
``vif/<devid>`` for a guest's own vif,
``bridge/<name>`` for every vif on a bridge (a name or a glob, written with
:func:`encode_name`). The value is a list of ``direction[-family]=on|off`` tokens, e.g.
``to-guest=on from-guest=off to-guest-ipv6=off``; omitted ones are not overridden. Overrides
become policy rules appended after every other source's (they win).
:mod:`xenoffload.override_store` reads and writes them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import attrs

from xenoffload.policy import DirectionSetting, Match, PolicyError, Rule, parse_uuid

__all__ = ["OverrideSetting", "format_override", "parse_override", "rules_from_overrides",
           "bridge_key", "vif_key", "encode_name", "decode_name"]

_TOKEN = re.compile(r"\A(to-guest|from-guest)(?:-(ipv4|ipv6))?=(on|off)\Z")
_NAME = re.compile(r"\A[!-~]{1,64}\Z")
#: Characters a XenStore path element may hold as they are (xenstored refuses others).
_PLAIN = re.compile(r"[A-Za-z0-9_-]")
_ESCAPE = re.compile(r"@([0-9a-f]{2})")


def encode_name(name: str) -> str:
    """Return ``name`` (a bridge name or glob, printable ASCII) as a XenStore path element:
    every character xenstored does not take in a path (``.``, ``*``, ``[``...) becomes ``@`` and
    two hex digits, e.g. ``xenbr0.100`` → ``xenbr0@2e100``. Inverse: :func:`decode_name`."""
    return "".join(char if _PLAIN.match(char) else f"@{ord(char):02x}" for char in name)


def decode_name(element: str) -> str:
    """Return the name a path element written by :func:`encode_name` stands for."""
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 16)), element)


def bridge_key(name: str) -> str:
    """Return the override key of every vif on bridge ``name`` (a name or a shell glob)."""
    return f"bridge/{encode_name(name)}"


def vif_key(uuid: str | None, domid: int, devid: int) -> str:
    """Return the override key of one vif seen from dom0: by the VM's UUID when it has one,
    else by its domid."""
    return f"vif/{uuid if uuid is not None else domid}/{devid}"


@attrs.frozen
class OverrideSetting:
    """What one override node sets."""

    to_guest: DirectionSetting = DirectionSetting()
    from_guest: DirectionSetting = DirectionSetting()


def parse_override(path: str, raw: bytes) -> OverrideSetting:
    """Return the setting a node holds. Raises PolicyError naming the path for anything that is
    not a space-separated list of valid tokens."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as error:
        raise PolicyError(f"{path}: not ASCII") from error
    values: dict[str, dict[str, bool]] = {"to-guest": {}, "from-guest": {}}
    for token in text.split():
        match = _TOKEN.match(token)
        if match is None:
            raise PolicyError(f"{path}: bad token {token[:40]!r}")
        direction, family, state = match.groups()
        for fam in ([family] if family else ["ipv4", "ipv6"]):
            values[direction][fam] = state == "on"
    if not text.split():
        raise PolicyError(f"{path}: empty override")
    return OverrideSetting(
        DirectionSetting(values["to-guest"].get("ipv4"), values["to-guest"].get("ipv6")),
        DirectionSetting(values["from-guest"].get("ipv4"), values["from-guest"].get("ipv6")))


def format_override(setting: OverrideSetting) -> bytes:
    """Return the node value for ``setting`` (inverse of :func:`parse_override`)."""
    tokens = []
    for name, direction in (("to-guest", setting.to_guest), ("from-guest", setting.from_guest)):
        for family in ("ipv4", "ipv6"):
            value = getattr(direction, family)
            if value is not None:
                tokens.append(f"{name}-{family}={'on' if value else 'off'}")
    return " ".join(tokens).encode()


def rules_from_overrides(overrides: Mapping[str, OverrideSetting],
                         guest_domid: int | None = None) -> list[Rule]:
    """Return policy rules for ``overrides``: bridge rules first, then per-vif ones, so a
    vif's own override wins over its bridge's. ``guest_domid``: for a guest's own overrides
    (``vif/<devid>``), the guest's domid."""
    bridge_rules: list[Rule] = []
    vif_rules: list[Rule] = []
    for key, setting in sorted(overrides.items()):
        parts = key.split("/")
        match: Match | None = None
        if parts[0] == "bridge" and len(parts) == 2 and _NAME.match(decode_name(parts[1])):
            match = Match(bridge=decode_name(parts[1]))
            target = bridge_rules
        elif parts[0] == "vif" and len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            match = Match(domid=int(parts[1]), devid=int(parts[2]))
            target = vif_rules
        elif parts[0] == "vif" and len(parts) == 3 and parse_uuid(parts[1]) is not None and \
                parts[2].isdigit():
            match = Match(uuid=parse_uuid(parts[1]), devid=int(parts[2]))
            target = vif_rules
        elif (parts[0] == "vif" and len(parts) == 2 and parts[1].isdigit()
              and guest_domid is not None):
            match = Match(domid=guest_domid, devid=int(parts[1]))
            target = vif_rules
        if match is not None:
            target.append(Rule(match, setting.to_guest, setting.from_guest,
                               name=f"override {key}"))
    return bridge_rules + vif_rules
