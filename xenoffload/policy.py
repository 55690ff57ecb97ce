"""Policy: where configuration allows blank checksums, per vif, per direction, per family.

The built-in default depends on the end (:func:`builtin_policy`): the backend's computes every
checksum, so suppression there is only what a rule allows; the guest's accepts whatever the
backend offers (the result can never exceed the backend's advertisement). Rules
come from a TOML file (docs/configuration.md) and from run-time overrides (``xenoffload set``);
a vif is identified by what the toolstack knows of it (:class:`VifIdentity`).
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from xenoffload.negotiation import SAFE_POLICY, LinkPolicy
from xenoffload.schema import FamilyFlags, Role

__all__ = [
    "VifIdentity",
    "Match",
    "DirectionSetting",
    "Rule",
    "Policy",
    "PolicyError",
    "load_policy",
    "parse_policy",
    "node_text",
    "parse_uuid",
    "vm_uuid",
    "builtin_policy",
    "GUEST_DEFAULT",
]


def node_text(raw: bytes | None) -> str | None:
    """Return a XenStore value usable for matching (printable ASCII, at most 256 bytes), or
    None: a name, bridge or MAC that is not plain text matches no rule."""
    if raw is None:
        return None
    text = raw.decode("ascii", "replace")
    return text if text.isprintable() and len(text) <= 256 else None


class PolicyError(ValueError):
    """A policy file or override is malformed; the message names where."""


@attrs.frozen
class VifIdentity:
    """What is known of a vif when choosing its policy. Fields unknown to the caller are None."""

    domid: int
    devid: int
    domain: str | None = None
    bridge: str | None = None
    mac: str | None = None
    #: The kernel device name the toolstack chose (xl's ``vifname=``, libxl's backend
    #: ``vifname`` key); None: the driver's default name.
    vifname: str | None = None
    #: The VM's UUID (libxl's ``/local/domain/<domid>/vm`` names ``/vm/<uuid>``), lower case:
    #: unlike the domid it stays the same across save/restore, migration and reboot.
    uuid: str | None = None


@attrs.frozen
class Match:
    """A rule's selector: every field given must match (names and bridges take shell globs,
    MACs compare case-insensitively). An empty match selects every vif."""

    domain: str | None = None
    domid: int | None = None
    devid: int | None = None
    bridge: str | None = None
    mac: str | None = None
    uuid: str | None = None

    def matches(self, vif: VifIdentity) -> bool:
        if self.domid is not None and self.domid != vif.domid:
            return False
        if self.devid is not None and self.devid != vif.devid:
            return False
        if self.domain is not None and (
                vif.domain is None or not fnmatch.fnmatchcase(vif.domain, self.domain)):
            return False
        if self.bridge is not None and (
                vif.bridge is None or not fnmatch.fnmatchcase(vif.bridge, self.bridge)):
            return False
        if self.uuid is not None and (vif.uuid is None or vif.uuid != self.uuid.lower()):
            return False
        return not (self.mac is not None and (
            vif.mac is None or vif.mac.lower() != self.mac.lower()))

    def describe(self) -> str:
        parts = [f"{name}={value}" for name, value in attrs.asdict(self).items()
                 if value is not None]
        return ",".join(parts) if parts else "*"


@attrs.frozen
class DirectionSetting:
    """What a rule says of one direction: per family True/False, or None = not set here."""

    ipv4: bool | None = None
    ipv6: bool | None = None

    def over(self, base: FamilyFlags) -> FamilyFlags:
        return FamilyFlags(base.ipv4 if self.ipv4 is None else self.ipv4,
                           base.ipv6 if self.ipv6 is None else self.ipv6)


@attrs.frozen
class Rule:
    """Selector plus what it sets. Later rules override earlier ones for what they set."""

    match: Match
    to_guest: DirectionSetting = DirectionSetting()
    from_guest: DirectionSetting = DirectionSetting()
    name: str = ""

    def over(self, base: LinkPolicy) -> LinkPolicy:
        return LinkPolicy(to_guest=self.to_guest.over(base.to_guest),
                          from_guest=self.from_guest.over(base.from_guest))


@attrs.frozen
class Policy:
    """A default plus ordered rules; :meth:`for_vif` resolves one vif's :class:`LinkPolicy`."""

    default: LinkPolicy = LinkPolicy()
    rules: tuple[Rule, ...] = ()

    def for_vif(self, vif: VifIdentity) -> LinkPolicy:
        """Return the policy of ``vif``: the default, then every matching rule in order."""
        resolved = self.default
        for rule in self.rules:
            if rule.match.matches(vif):
                resolved = rule.over(resolved)
        return resolved

    def selectors(self) -> frozenset[str]:
        """Return the names of the :class:`Match` fields any rule uses."""
        return frozenset(name for rule in self.rules
                         for name, value in attrs.asdict(rule.match).items() if value is not None)

    def with_rules(self, rules: Iterable[Rule]) -> Policy:
        """Return this policy with ``rules`` appended (they take precedence)."""
        return attrs.evolve(self, rules=(*self.rules, *rules))


#: The guest's built-in default: take whatever the backend offers (docs/agents.md).
GUEST_DEFAULT = LinkPolicy(FamilyFlags.both(True), FamilyFlags.both(True))


def builtin_policy(role: Role) -> Policy:
    """Return the built-in policy of an end of ``role``, in force without a policy file (and
    under a file's ``[default]``): the backend computes every checksum
    (:data:`~xenoffload.negotiation.SAFE_POLICY`), the guest accepts what the backend offers
    (:data:`GUEST_DEFAULT`)."""
    return Policy(SAFE_POLICY if role is Role.BACKEND else GUEST_DEFAULT)


_MATCH_KEYS = {"domain": str, "domid": int, "devid": int, "bridge": str, "mac": str,
               "uuid": str}
_UUID = re.compile(r"\A[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\Z")
_MAC = re.compile(r"\A[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}\Z")
#: The largest domid a domain can have (DOMID_FIRST_RESERVED - 1: 0x7FF0 and up are
#: DOMID_SELF, DOMID_IO, ...).
MAX_DOMID = 0x7FEF


def _selector_problem(key: str, value: Any) -> str | None:
    """Why a rule's ``key = value`` selector could never match a vif, or None: a selector
    that never matches is a rule silently doing nothing, so it is refused."""
    if key == "mac" and not _MAC.match(value):
        return f"not a MAC address (aa:bb:cc:dd:ee:ff, as xl writes it): {value[:64]!r}"
    if key == "domid" and not 0 <= value <= MAX_DOMID:
        return f"not a domid (0..{MAX_DOMID}): {str(value)[:32]}"
    if key == "devid" and not 0 <= value <= 0xFFFF:
        return f"not a devid (0..65535): {str(value)[:32]}"
    if key in ("domain", "bridge") and not value:
        return "empty: it would match nothing"
    return None


def parse_uuid(text: str | None) -> str | None:
    """Return ``text`` as a VM UUID in lower case (``8-4-4-4-12`` hex digits), or None."""
    return text.lower() if text is not None and _UUID.match(text) else None


def vm_uuid(raw: bytes | None) -> str | None:
    """Return the UUID a domain's ``vm`` node names (libxl writes ``/vm/<uuid>``), or None
    for anything else."""
    text = node_text(raw)
    if text is None or not text.startswith("/vm/"):
        return None
    return parse_uuid(text[len("/vm/"):])
_DIRECTIONS = {"to-guest": "to_guest", "from-guest": "from_guest"}


def _direction(where: str, value: Any) -> DirectionSetting:
    if isinstance(value, bool):
        return DirectionSetting(value, value)
    if isinstance(value, Mapping):
        unknown = set(value) - {"ipv4", "ipv6"}
        if unknown:
            raise PolicyError(f"{where}: unknown family {sorted(unknown)}; use ipv4, ipv6")
        for family, flag in value.items():
            if not isinstance(flag, bool):
                raise PolicyError(f"{where}.{family}: must be true or false, not {flag!r}")
        return DirectionSetting(value.get("ipv4"), value.get("ipv6"))
    raise PolicyError(f"{where}: must be true, false or {{ipv4 = ..., ipv6 = ...}}, "
                      f"not {value!r}")


def _settings(where: str, table: Mapping[str, Any]) -> dict[str, DirectionSetting]:
    return {_DIRECTIONS[key]: _direction(f"{where}.{key}", table[key])
            for key in _DIRECTIONS if key in table}


def parse_policy(document: Mapping[str, Any], source: str = "<policy>",
                 builtin: LinkPolicy = SAFE_POLICY) -> Policy:
    """Return the Policy a parsed TOML document describes; ``[default]`` is applied over
    ``builtin`` (the built-in default: nothing allowed, unless the caller's differs). Raises
    PolicyError naming the offending table and key."""
    unknown = set(document) - {"default", "rule"}
    if unknown:
        raise PolicyError(f"{source}: unknown top-level keys {sorted(unknown)}")
    default_table = document.get("default", {})
    if not isinstance(default_table, Mapping):
        raise PolicyError(f"{source}: [default] must be a table")
    extra = set(default_table) - set(_DIRECTIONS)
    if extra:
        raise PolicyError(f"{source}: [default] unknown keys {sorted(extra)}")
    default_settings = _settings(f"{source}: default", default_table)
    default = Rule(Match(), default_settings.get("to_guest", DirectionSetting()),
                   default_settings.get("from_guest", DirectionSetting())).over(builtin)
    rules = []
    raw_rules = document.get("rule", [])
    if not isinstance(raw_rules, list):
        raise PolicyError(f"{source}: rule must be an array of tables ([[rule]])")
    for index, table in enumerate(raw_rules):
        where = f"{source}: rule[{index}]"
        if not isinstance(table, Mapping):
            raise PolicyError(f"{where}: must be a table")
        extra = set(table) - set(_MATCH_KEYS) - set(_DIRECTIONS) - {"name"}
        if extra:
            raise PolicyError(f"{where}: unknown keys {sorted(extra)}")
        match_args: dict[str, Any] = {}
        for key, kind in _MATCH_KEYS.items():
            if key in table:
                value = table[key]
                if not isinstance(value, kind) or isinstance(value, bool):
                    raise PolicyError(f"{where}.{key}: must be {kind.__name__}, not {value!r}")
                if key == "uuid":
                    value = parse_uuid(str(value))
                    if value is None:
                        raise PolicyError(f"{where}.uuid: not a UUID: {table[key]!r}")
                problem = _selector_problem(key, value)
                if problem is not None:
                    raise PolicyError(f"{where}.{key}: {problem}")
                match_args[key] = value
        name = table.get("name", "")
        if not isinstance(name, str):
            raise PolicyError(f"{where}.name: must be a string")
        settings = _settings(where, table)
        if not settings:
            raise PolicyError(f"{where}: sets neither to-guest nor from-guest, so it changes "
                              "nothing; give at least one")
        rules.append(Rule(Match(**match_args), settings.get("to_guest", DirectionSetting()),
                          settings.get("from_guest", DirectionSetting()), name))
    return Policy(default, tuple(rules))


def load_policy(path: str | Path, builtin: LinkPolicy = SAFE_POLICY) -> Policy:
    """Return the Policy in the TOML file at ``path``. Raises PolicyError for a file that is
    not a valid policy (not UTF-8, not TOML, nested too deeply to parse, or a document
    :func:`parse_policy` refuses), OSError when it cannot be read."""
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise PolicyError(f"{path}: not UTF-8 text (byte {error.start}: "
                          f"{raw[error.start:error.start + 1]!r})") from None
    except tomllib.TOMLDecodeError as error:
        raise PolicyError(f"{path}: {error}") from error
    except RecursionError:
        raise PolicyError(f"{path}: nested too deeply to parse") from None
    try:
        return parse_policy(document, str(path), builtin)
    except RecursionError:
        raise PolicyError(f"{path}: nested too deeply to read") from None
