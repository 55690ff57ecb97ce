"""Checksums computed by tc, over rtnetlink: the :class:`~xenoffload.toggles.tc_base.TcChecksum`
xenoffload runs (and, over a simulated kernel, the one a dry run runs).

An apply reads the device's state (RTM_GETLINK for its index and ``gso_max_segs``, a qdisc dump
for what holds its ingress slot, a filter dump per clsact hook), asks
:func:`~xenoffload.toggles.tc_plan.plan` what to change, sends only that, in this order:
delete xenoffload's stale or unwanted filters; create the clsact qdisc if the slot is empty;
create each missing filter, trying the configured classifiers in turn while the kernel says the
classifier is missing; set ``gso_max_segs`` (to 1 while an egress rule is enforced, back to the
value the marker recorded once none is); then reads back and judges. A clsact qdisc created in
the apply for nothing (every filter refused) is deleted again at once; one created by an
earlier apply is deleted with xenoffload's last filter, if nothing else is on it. Requests are
built by :mod:`xenoffload.toggles.tc_codec`; a kernel refusal becomes an outcome with its reason,
except ENODEV (DeviceGone: also when the device was replaced mid-apply, since every request
names the index read first) and EPERM/EACCES (TogglePermissionDenied).
"""

from __future__ import annotations

import collections
import errno
import threading
from collections.abc import Callable, Collection, Mapping

from xenoffload.toggles.base import DeviceRef, ToggleError
from xenoffload.toggles.netlink import translate_refusal
from xenoffload.toggles.nl_codec import (
    Answer,
    ErrorAnswer,
    NetlinkDecodeError,
    NetlinkTransport,
    Request,
)
from xenoffload.toggles.nl_socket import (
    NETLINK_ROUTE,
    NETNS_DIR,
    NamespaceSockets,
)
from xenoffload.toggles.tc_base import CsumRule, Hook, TcResult
from xenoffload.toggles.tc_codec import (
    TC_H_CLSACT,
    FilterInfo,
    csum_action,
    decode_filter,
    decode_link,
    decode_qdisc,
    delete_clsact_request,
    delete_filter_request,
    filter_dump_request,
    getlink_request,
    new_clsact_request,
    new_filter_request,
    qdisc_dump_request,
    set_gso_max_segs_request,
)
from xenoffload.toggles.tc_plan import (
    Marker,
    TcConfig,
    TcState,
    ethertype,
    judge,
    plan,
    reason_clsact,
    reason_for_filter_refusal,
    reason_gso,
)

__all__ = ["NetlinkTc"]

#: Returns the transport that reaches a device's namespace.
TransportFor = Callable[[DeviceRef], NetlinkTransport]


class NetlinkTc:
    """:class:`~xenoffload.toggles.tc_base.TcChecksum` over rtnetlink.

    ``config``: where the filters go and which classifiers to try (docs/toggles.md).
    ``transport_for``: the transport reaching a device's namespace; by default a real
    NETLINK_ROUTE socket per namespace under ``netns_dir`` (a dry run passes its simulated
    kernel, the tests a replay of recorded kernel answers). ``sent`` counts requests by kind
    (``GETLINK``, ``GETQDISC``, ``GETTFILTER``, ``NEWQDISC``, ``DELQDISC``, ``NEWTFILTER``,
    ``DELTFILTER``, ``NEWLINK``). Thread-safe (one apply at a time); ``close()`` releases the
    sockets it opened.
    """

    def __init__(self, netns_dir: str = NETNS_DIR, *, config: TcConfig | None = None,
                 transport_for: TransportFor | None = None) -> None:
        self.config = config if config is not None else TcConfig()
        self.sent: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._sockets: NamespaceSockets[NetlinkTransport] | None = None
        if transport_for is None:
            self._sockets = NamespaceSockets(NETLINK_ROUTE, lambda transport: transport,
                                             netns_dir)
            transport_for = self._sockets.get
        self._transport_for = transport_for

    def __enter__(self) -> NetlinkTc:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every socket this instance opened."""
        with self._lock:
            if self._sockets is not None:
                self._sockets.close()

    def read(self, device: DeviceRef) -> TcState:
        """Return the device's tc state (see :class:`~xenoffload.toggles.tc_plan.TcState`).
        Raises DeviceGone, TogglePermissionDenied, TogglesUnavailable or ToggleError."""
        with self._lock:
            return _Apply(self._transport_for(device), device, self.config, self.sent).read()

    def apply(self, device: DeviceRef, rules: Collection[CsumRule]) -> TcResult:
        """Make ``device`` carry exactly ``rules``; see
        :meth:`xenoffload.toggles.tc_base.TcChecksum.apply`."""
        with self._lock:
            return _Apply(self._transport_for(device), device, self.config, self.sent).run(
                tuple(rules))


class _Apply:
    """One apply on one device."""

    def __init__(self, transport: NetlinkTransport, device: DeviceRef, config: TcConfig,
                 sent: collections.Counter[str]) -> None:
        self.transport = transport
        self.device = device
        self.config = config
        self.sent = sent
        self.changes = 0
        #: What this apply's changes touched, so the read-back reads only that.
        self.touched_link = False
        self.touched_slot = False
        self.touched_hooks: set[Hook] = set()

    def exchange(self, request: Request, label: str) -> Answer | ErrorAnswer:
        self.sent[label] += 1
        answer = self.transport.exchange(request, label)
        if isinstance(answer, ErrorAnswer) and answer.errno in (errno.ENODEV, errno.EPERM,
                                                                 errno.EACCES):
            raise translate_refusal(answer, self.device)
        return answer

    def change(self, request: Request, label: str, hook: Hook | None = None
               ) -> ErrorAnswer | None:
        self.changes += 1
        if label == "NEWLINK":
            self.touched_link = True
        elif label in ("NEWQDISC", "DELQDISC"):
            self.touched_slot = True
        if hook is not None:
            self.touched_hooks.add(hook)
        answer = self.exchange(request, label)
        return answer if isinstance(answer, ErrorAnswer) else None

    def query(self, request: Request, label: str) -> Answer:
        answer = self.exchange(request, label)
        if isinstance(answer, ErrorAnswer):
            raise translate_refusal(answer, self.device)
        return answer

    def read(self, known: TcState | None = None) -> TcState:
        """Read the device's tc state: all of it, or (``known``: the state read at the start
        of this apply) only what this apply's changes touched: the link after a NEWLINK, the
        ingress slot after a qdisc change, a hook's filters after a filter change there. What
        no change touched is taken from ``known``, read moments before by the same apply (an
        apply that changes nothing reads nothing back either)."""
        try:
            if known is None or self.touched_link:
                replies = self.query(getlink_request(self.device.name), "GETLINK").messages
                if len(replies) != 1:
                    raise ToggleError(f"expected one link, got {len(replies)}", self.device)
                link = decode_link(replies[0])
                if link.name != self.device.name:
                    raise ToggleError(f"asked for {self.device.name}, the kernel named "
                                      f"{link.name}", self.device)
            else:
                link = known.link
            if known is None or self.touched_slot:
                qdiscs = [decode_qdisc(message) for message in
                          self.query(qdisc_dump_request(link.ifindex), "GETQDISC").messages]
                slot = next((qdisc.kind for qdisc in qdiscs if qdisc.ifindex == link.ifindex
                             and qdisc.parent == TC_H_CLSACT), None)
            else:
                slot = known.slot
            state = TcState(link, slot, {})
            filters: dict[Hook, tuple[FilterInfo, ...]] = {}
            for hook in (state.hooks() if slot is not None else ()):
                if known is not None and hook not in self.touched_hooks:
                    # Untouched: as read, or none on a clsact this apply just created.
                    filters[hook] = tuple(known.filters.get(hook, ()))
                    continue
                filters[hook] = tuple(entry for entry in map(decode_filter, self.query(
                    filter_dump_request(link.ifindex, hook.parent), "GETTFILTER").messages)
                    if entry.ifindex == link.ifindex)
        except NetlinkDecodeError as error:
            raise ToggleError(f"malformed rtnetlink answer: {error}", self.device) from error
        self.touched_link = self.touched_slot = False
        self.touched_hooks.clear()
        return TcState(link, slot, filters)

    def run(self, rules: tuple[CsumRule, ...]) -> TcResult:
        state = self.read()
        todo = plan(state, rules, self.config)
        if not todo.changes:
            return TcResult(self.device, judge(state, rules, self.config, todo.refused), 0)
        ifindex = state.link.ifindex
        reasons = dict(todo.refused)
        notes: list[str] = []
        for hook, family in todo.delete:
            refusal = self.change(delete_filter_request(
                ifindex, hook.parent, self.config.priority_of(family), ethertype(family)),
                "DELTFILTER", hook)
            if refusal is not None:
                notes.append(f"cannot remove xenoffload's {hook.value} {family.value} filter "
                             f"({refusal.describe()})")
        if todo.create:
            self.create_filters(ifindex, todo.create, todo.create_clsact, todo.markers, reasons,
                                notes)
        if todo.gso_target == 1:
            egress = [rule for rule in rules if rule.hook is Hook.EGRESS and rule not in reasons]
            refusal = (self.change(set_gso_max_segs_request(ifindex, 1), "NEWLINK")
                       if egress else None)
            for rule in egress if refusal is not None else ():
                reasons[rule] = reason_gso(state.link.gso_max_segs, refusal)
        elif todo.gso_target is not None:
            refusal = self.change(set_gso_max_segs_request(ifindex, todo.gso_target), "NEWLINK")
            if refusal is not None:
                notes.append(f"cannot restore gso_max_segs {todo.gso_target} "
                             f"({refusal.describe()})")
        after = self.read(state)
        if todo.remove_clsact and after.slot == "clsact" and not any(after.filters.values()):
            refusal = self.change(delete_clsact_request(ifindex), "DELQDISC")
            if refusal is not None:
                notes.append(f"cannot remove the clsact qdisc xenoffload created "
                             f"({refusal.describe()})")
            after = self.read(after)
        elif todo.remove_clsact:
            notes.append("left the clsact qdisc xenoffload created: other filters are on it")
        return TcResult(self.device, judge(after, rules, self.config, reasons), self.changes,
                        tuple(notes))

    def create_filters(self, ifindex: int, create: tuple[CsumRule, ...], create_clsact: bool,
                       markers: Mapping[Hook, Marker], reasons: dict[CsumRule, str],
                       notes: list[str]) -> None:
        created_clsact = False
        if create_clsact:
            refusal = self.change(new_clsact_request(ifindex), "NEWQDISC")
            if refusal is not None and refusal.errno != errno.EEXIST:
                for rule in create:
                    reasons[rule] = reason_clsact(refusal)
                return
            created_clsact = refusal is None
        created = 0
        for rule in create:
            reason = self.create_filter(ifindex, rule, markers[rule.hook])
            if reason is None:
                created += 1
            else:
                reasons[rule] = reason
        if created_clsact and not created:
            refusal = self.change(delete_clsact_request(ifindex), "DELQDISC")
            if refusal is not None:
                notes.append(f"cannot remove the clsact qdisc created for nothing "
                             f"({refusal.describe()})")

    def create_filter(self, ifindex: int, rule: CsumRule, marker: Marker) -> str | None:
        """Create ``rule``'s filter with the first classifier the kernel has; return the
        reason if none could be created."""
        classifiers = self.config.classifiers
        reason = ""
        for index, classifier in enumerate(classifiers):
            refusal = self.change(new_filter_request(
                ifindex, rule.hook.parent, self.config.priority_of(rule.family),
                ethertype(rule.family), classifier,
                (csum_action(rule.update_flags, marker.encode()),)), "NEWTFILTER", rule.hook)
            if refusal is None:
                return None
            reason, try_next = reason_for_filter_refusal(refusal, classifiers[: index + 1],
                                                         classifiers[index + 1 :])
            if not try_next:
                break
        return reason
