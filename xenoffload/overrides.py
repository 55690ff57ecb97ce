"""Run-time policy overrides kept in XenStore, so every agent and ``xenoffload set`` share them.

An override is a node under ``<home>/xenoffload/policy`` (``<home>`` = ``/local/domain/<domid>``
of the domain whose agent it steers; the directory is created owner-only): ``vif/<domid>/<devid>``
for one vif seen from dom0, ``vif/<devid>`` for a guest's own vif, ``bridge/<name>`` for every
vif on a bridge (a name or a glob, written with :func:`encode_name`). The value is a list of
``direction[-family]=on|off`` tokens, e.g. ``to-guest=on from-guest=off to-guest-ipv6=off``;
omitted ones are not overridden.
Overrides become policy rules appended after the configuration file's (they win).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import attrs

from xenoffload.policy import DirectionSetting, Match, PolicyError, Rule
from xenoffload.store.base import Store, XenStoreError

__all__ = ["OverrideSetting", "format_override", "parse_override", "override_root",
           "read_overrides", "write_override", "clear_override", "rules_from_overrides",
           "refresh_overrides", "bridge_key", "encode_name", "decode_name"]

log = logging.getLogger("xenoffload.overrides")

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


def override_root(home: str) -> str:
    return f"{home}/xenoffload/policy"


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


def read_overrides(store: Store, home: str) -> tuple[dict[str, OverrideSetting], list[str]]:
    """Return every override under ``home`` (key = path relative to the policy root, e.g.
    ``vif/1/0``) and the problems found (malformed nodes are skipped, never applied)."""
    root = override_root(home)
    found: dict[str, OverrideSetting] = {}
    problems: list[str] = []

    def walk(relative: str) -> None:
        path = f"{root}/{relative}" if relative else root
        try:
            children = store.directory(path)
        except XenStoreError:
            return
        for child in children:
            walk(f"{relative}/{child}" if relative else child)
        if relative.count("/") >= 1 and not children:
            raw = store.try_read(path)
            if raw:
                try:
                    found[relative] = parse_override(path, raw)
                except PolicyError as error:
                    problems.append(str(error))

    walk("")
    return found, problems


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
        elif (parts[0] == "vif" and len(parts) == 2 and parts[1].isdigit()
              and guest_domid is not None):
            match = Match(domid=guest_domid, devid=int(parts[1]))
            target = vif_rules
        if match is not None:
            target.append(Rule(match, setting.to_guest, setting.from_guest,
                               name=f"override {key}"))
    return bridge_rules + vif_rules


def refresh_overrides(store: Store, home: str, known: Mapping[str, OverrideSetting],
                      restore: bool) -> dict[str, OverrideSetting]:
    """Return the overrides in force under ``home``: what XenStore holds (malformed nodes are
    logged and skipped). With ``restore`` (a new connection), when XenStore holds none but
    ``known`` is not empty, the daemon restarted without its tree: ``known`` is written back
    and returned, so no policy is lost."""
    found, problems = read_overrides(store, home)
    for problem in problems:
        log.warning("override refused: %s", problem)
    if restore and not found and known:
        for key, setting in known.items():
            write_override(store, home, key, setting)
        log.warning("restored %d policy override(s) lost by XenStore", len(known))
        return dict(known)
    return found


def write_override(store: Store, home: str, key: str, setting: OverrideSetting) -> str:
    """Write one override (``key`` like ``vif/1/0`` or ``bridge/xenbr0``); return its path."""
    path = f"{override_root(home)}/{key}"
    store.write(path, format_override(setting))
    return path


def clear_override(store: Store, home: str, key: str) -> str:
    path = f"{override_root(home)}/{key}"
    store.rm(path)
    return path
