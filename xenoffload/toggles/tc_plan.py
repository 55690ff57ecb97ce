"""The tc enforcement's decisions, pure: what xenoffload creates for a set of rules, how it knows
its own, what an apply must change, and how the result is judged.

Every object xenoffload creates is a filter on a clsact hook at its own priority (IPv4 at
``config.priority``, IPv6 at the next one: the kernel keeps one protocol per priority), with one
catch-all classifier (``u32`` matching every packet, or ``matchall``) carrying one ``csum``
action whose verdict is ``continue`` (filters after it classify the packet as if it were not
there) and whose cookie is a :class:`Marker`. A filter group at one of those priorities is
xenoffload's only if every filter in it carries the marker; anything else there is another
writer's and is never touched (the rule it blocks is refused with the reason). The marker also
records what xenoffload changed on the way, so that removing the last filter undoes it even
after a restart: whether it created the clsact qdisc, and, on egress, the device's
``gso_max_segs`` before xenoffload lowered it to 1. :func:`plan` says what to change; the I/O
that carries it out is :mod:`xenoffload.toggles.tc_netlink`; :func:`judge` turns the state read
back into outcomes.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Collection, Mapping

import attrs

from xenoffload.schema import Family
from xenoffload.toggles.nl_codec import ErrorAnswer
from xenoffload.toggles.tc_base import CsumRule, Hook, TcOutcome
from xenoffload.toggles.tc_codec import (
    CLASSIFIERS,
    ETH_P_IP,
    ETH_P_IPV6,
    TC_ACT_UNSPEC,
    FilterInfo,
    LinkInfo,
)

__all__ = [
    "DEFAULT_PRIORITY",
    "Marker",
    "TcConfig",
    "TcState",
    "Group",
    "TcPlan",
    "ethertype",
    "groups",
    "is_exact",
    "plan",
    "judge",
    "reason_for_filter_refusal",
    "reason_clsact",
    "reason_foreign",
    "reason_no_egress_hook",
    "reason_gso",
]

#: The priority of xenoffload's IPv4 filters (IPv6: the next one). Low, so that they run before
#: the filters administrators and tools usually add (tc numbers its own from 49152 down), and
#: not 1, which hand-written and generated setups take first.
DEFAULT_PRIORITY = 49

_MARKER_MAGIC = b"xenoffload"
_MARKER_VERSION = 1
_MARKER_TAIL = struct.Struct(">BBI")  # version, flags, gso_max_segs before (0: not changed)
_CLSACT_CREATED = 1


@attrs.frozen
class Marker:
    """The cookie of every action xenoffload creates: it marks the filter as xenoffload's and
    records what was changed for it. ``clsact_created``: xenoffload created the clsact qdisc
    (delete it with the last filter, if nothing else is on it). ``gso_max_segs_before``: on
    egress, the device's gso_max_segs before xenoffload set it to 1 (0: not changed)."""

    clsact_created: bool = False
    gso_max_segs_before: int = 0

    def encode(self) -> bytes:
        """Return the 16-byte cookie."""
        return _MARKER_MAGIC + _MARKER_TAIL.pack(
            _MARKER_VERSION, _CLSACT_CREATED if self.clsact_created else 0,
            self.gso_max_segs_before)

    @classmethod
    def decode(cls, cookie: bytes | None) -> Marker | None:
        """Return the marker a cookie holds, or None if it is not one of xenoffload's."""
        if (cookie is None or len(cookie) != len(_MARKER_MAGIC) + _MARKER_TAIL.size
                or not cookie.startswith(_MARKER_MAGIC)):
            return None
        version, flags, gso = _MARKER_TAIL.unpack_from(cookie, len(_MARKER_MAGIC))
        if version != _MARKER_VERSION:
            return None
        return cls(bool(flags & _CLSACT_CREATED), gso)


def _classifiers(_instance: object, _attribute: object, value: tuple[str, ...]) -> None:
    if not value or any(kind not in CLASSIFIERS for kind in value) or len(set(value)) != len(value):
        raise ValueError(f"classifiers must be an ordered choice among {CLASSIFIERS}, not {value}")


def _priority(_instance: object, _attribute: object, value: int) -> None:
    if not 1 <= value <= 0xFFFE:
        raise ValueError(f"the base priority must be 1..65534 (IPv6 takes the next), not {value}")


@attrs.frozen
class TcConfig:
    """Where xenoffload's filters go: ``priority`` (IPv4; IPv6 at ``priority + 1``) and the
    catch-all classifiers to try, in order (the first one the kernel has is used)."""

    priority: int = attrs.field(default=DEFAULT_PRIORITY, validator=_priority)
    classifiers: tuple[str, ...] = attrs.field(default=CLASSIFIERS, validator=_classifiers)

    def priority_of(self, family: Family) -> int:
        """Return the priority of ``family``'s filter."""
        return self.priority if family is Family.IPV4 else self.priority + 1


def ethertype(family: Family) -> int:
    """Return the filter protocol (ethertype) of ``family``."""
    return ETH_P_IP if family is Family.IPV4 else ETH_P_IPV6


@attrs.frozen
class TcState:
    """A device's tc state as read: the link, the kind of the qdisc in its ingress slot (None:
    empty), and the filter dump of each hook that exists (an ``ingress`` qdisc has only the
    ingress hook)."""

    link: LinkInfo
    slot: str | None
    filters: Mapping[Hook, tuple[FilterInfo, ...]]

    def hooks(self) -> tuple[Hook, ...]:
        """Return the hooks filters can be put on once a clsact qdisc is there (if the slot is
        empty, the apply creates one)."""
        if self.slot in (None, "clsact"):
            return (Hook.INGRESS, Hook.EGRESS)
        if self.slot == "ingress":
            return (Hook.INGRESS,)
        return ()


@attrs.frozen
class Group:
    """The dump entries at one of xenoffload's priorities on one hook."""

    hook: Hook
    family: Family
    priority: int
    entries: tuple[FilterInfo, ...]

    @property
    def filters(self) -> tuple[FilterInfo, ...]:
        """Return the entries that are filters (not a classifier's own bookkeeping)."""
        return tuple(entry for entry in self.entries if entry.is_filter)

    @property
    def markers(self) -> tuple[Marker | None, ...]:
        """Return the marker of each filter's actions (None for an action without one, and
        for a filter without actions)."""
        found: list[Marker | None] = []
        for entry in self.filters:
            found += [Marker.decode(action.cookie) for action in entry.actions] or [None]
        return tuple(found)

    @property
    def ours(self) -> bool:
        """Return whether xenoffload created every filter here (and there is one)."""
        return bool(self.filters) and all(marker is not None for marker in self.markers)


def groups(state: TcState, config: TcConfig) -> dict[tuple[Hook, Family], Group]:
    """Return the non-empty groups at xenoffload's priorities, by hook and family."""
    found = {}
    for hook, entries in state.filters.items():
        for family in Family:
            priority = config.priority_of(family)
            at_priority = tuple(entry for entry in entries if entry.priority == priority)
            if at_priority:
                found[hook, family] = Group(hook, family, priority, at_priority)
    return found


def is_exact(group: Group, rule: CsumRule, config: TcConfig) -> bool:
    """Return whether ``group`` is exactly the one filter xenoffload creates for ``rule``."""
    if not group.ours or len(group.filters) != 1:
        return False
    (entry,) = group.filters
    return (entry.kind in config.classifiers
            and entry.protocol == ethertype(rule.family)
            and entry.match_all is not False
            and len(entry.actions) == 1
            and entry.actions[0].kind == "csum"
            and entry.actions[0].control == TC_ACT_UNSPEC
            and entry.actions[0].update_flags == rule.update_flags)


def reason_foreign(hook: Hook, priority: int) -> str:
    """Return the refusal for a rule whose priority holds another writer's filter."""
    return f"priority {priority} on {hook.value} holds a filter xenoffload did not create"


def reason_no_egress_hook(slot: str | None) -> str:
    """Return the refusal for an egress rule when the ingress slot holds no clsact."""
    return f"the ingress slot holds an {slot} qdisc, not clsact: no egress hook"


def reason_clsact(refusal: ErrorAnswer) -> str:
    """Return the refusal for every rule when the clsact qdisc cannot be created."""
    return f"clsact unavailable ({refusal.describe()})"


def reason_gso(value: int | None, refusal: ErrorAnswer | None = None) -> str:
    """Return the refusal for an egress rule while the device builds GSO packets."""
    shown = "unknown" if value is None else str(value)
    why = f" ({refusal.describe()})" if refusal is not None else ""
    return f"gso_max_segs stays {shown}, not 1: GSO packets would pass partial{why}"


def reason_for_filter_refusal(refusal: ErrorAnswer, tried: tuple[str, ...],
                              untried: tuple[str, ...]) -> tuple[str, bool]:
    """Return (reason, whether to try the next classifier) for the kernel's refusal of a
    filter: a missing classifier (ENOENT naming it, or ENOENT without text) moves on to the
    next one; a missing action (ENOENT naming it) ends the attempt as act_csum unavailable."""
    if refusal.errno == errno.ENOENT:
        text = (refusal.text or "").lower()
        if "action" in text:
            return f"act_csum unavailable ({refusal.describe()})", False
        if untried:
            return "", True
        if "classifier" in text:
            return f"no catch-all classifier ({', '.join(tried)}): {refusal.describe()}", False
        return f"act_csum or the classifiers ({', '.join(tried)}) unavailable "\
               f"({refusal.describe()})", False
    return f"kernel refused the filter ({refusal.describe()})", False


@attrs.frozen
class TcPlan:
    """What one apply changes, in order: ``delete`` xenoffload's groups (stale or no longer
    wanted), create the clsact qdisc if ``create_clsact``, ``create`` one filter per rule
    (with ``markers[rule.hook]``), then set gso_max_segs to ``gso_target`` (None: leave it),
    and, if ``remove_clsact``, delete the clsact qdisc once nothing is left on it. ``refused``:
    rules that cannot be enforced whatever is sent, with the reason."""

    delete: tuple[tuple[Hook, Family], ...] = ()
    create_clsact: bool = False
    create: tuple[CsumRule, ...] = ()
    markers: Mapping[Hook, Marker] = attrs.field(factory=dict)
    gso_target: int | None = None
    remove_clsact: bool = False
    refused: Mapping[CsumRule, str] = attrs.field(factory=dict)

    @property
    def changes(self) -> bool:
        """Return whether anything is to be sent."""
        return bool(self.delete or self.create or self.gso_target is not None
                    or self.remove_clsact)


def plan(state: TcState, rules: Collection[CsumRule], config: TcConfig) -> TcPlan:
    """Return what brings ``state`` to carrying exactly ``rules``. Raises ValueError if two
    rules name the same hook and family."""
    wanted = {(rule.hook, rule.family): rule for rule in rules}
    if len(wanted) != len(rules):
        raise ValueError("at most one rule per hook and family")
    found = groups(state, config)
    hooks = state.hooks()
    delete: list[tuple[Hook, Family]] = []
    create: list[CsumRule] = []
    refused: dict[CsumRule, str] = {}
    for key, rule in sorted(wanted.items(), key=lambda item: item[1]):
        group = found.get(key)
        if rule.hook not in hooks:
            refused[rule] = reason_no_egress_hook(state.slot)
        elif group is not None and not group.ours:
            refused[rule] = reason_foreign(rule.hook, group.priority)
        elif group is not None and is_exact(group, rule, config):
            continue
        else:
            if group is not None:
                delete.append(key)
            create.append(rule)
    ours = {key: group for key, group in found.items() if group.ours}
    delete += [key for key in sorted(ours, key=lambda k: (k[0].value, k[1].value))
               if key not in wanted]
    markers_found = [marker for group in ours.values() for marker in group.markers
                     if marker is not None]
    clsact_created = any(marker.clsact_created for marker in markers_found)
    create_clsact = bool(create) and state.slot is None
    gso_now = state.link.gso_max_segs
    gso_before = next((marker.gso_max_segs_before for key, group in ours.items()
                       if key[0] is Hook.EGRESS for marker in group.markers
                       if marker is not None and marker.gso_max_segs_before), gso_now or 0)
    markers = {
        Hook.INGRESS: Marker(clsact_created or create_clsact, 0),
        Hook.EGRESS: Marker(clsact_created or create_clsact, gso_before),
    }
    egress_wanted = any(rule.hook is Hook.EGRESS and rule not in refused
                        for rule in wanted.values())
    gso_target = None
    if egress_wanted and gso_now != 1:
        gso_target = 1
    elif not egress_wanted and gso_now == 1 and gso_before > 1 and any(
            key[0] is Hook.EGRESS for key in ours):
        gso_target = gso_before
    remaining = [key for key in ours if key not in delete]
    remove_clsact = (clsact_created and state.slot == "clsact" and not create
                     and not remaining and bool(ours))
    return TcPlan(tuple(delete), create_clsact, tuple(create), markers, gso_target,
                  remove_clsact, refused)


def judge(state: TcState, rules: Collection[CsumRule], config: TcConfig,
          reasons: Mapping[CsumRule, str]) -> tuple[TcOutcome, ...]:
    """Return each rule's outcome from the state read back: enforced when its exact filter is
    there and, on egress, gso_max_segs is 1; otherwise the reason from ``reasons`` (what went
    wrong during the apply), or what the read-back shows."""
    found = groups(state, config)
    outcomes = []
    for rule in sorted(rules):
        group = found.get((rule.hook, rule.family))
        exact = group is not None and rule.hook in state.hooks() and is_exact(group, rule,
                                                                               config)
        gso_ok = rule.hook is Hook.INGRESS or state.link.gso_max_segs == 1
        if exact and gso_ok:
            outcomes.append(TcOutcome(rule, True))
        elif rule in reasons:
            outcomes.append(TcOutcome(rule, False, reasons[rule]))
        elif exact:
            outcomes.append(TcOutcome(rule, False, reason_gso(state.link.gso_max_segs)))
        else:
            outcomes.append(TcOutcome(rule, False, "not in place when read back"))
    return tuple(outcomes)
