"""The apply rules every Toggles implementation shares: what to send, and how to judge the result.

An apply reads the device, decides with :func:`plan_apply` which features need a change request
and which are already settled (requested and active in the wanted state, fixed by the driver,
or requested and still kept in the other state by the kernel), sends only the changes, reads
back, and judges each sent feature with :func:`judge_sent`. Keeping these rules here makes the
netlink and the in-memory implementation report the same outcomes for the same device
behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from xenoffload.toggles.base import FeatureOutcome, FeatureState, on_off

__all__ = [
    "ApplyPlan",
    "plan_apply",
    "judge_sent",
    "judge_after",
    "side_effects",
    "reason_fixed",
    "reason_kept",
    "reason_unknown",
    "reason_kernel_refused",
    "reason_other_writer",
]


def reason_fixed(active: bool) -> str:
    """Return the refusal reason for a feature the driver does not let change."""
    return f"fixed {on_off(active)} by the driver"


def reason_kept(active: bool) -> str:
    """Return the refusal reason for a changeable feature the kernel keeps in the other state
    although it is requested (driver limit, e.g. netback capped by the frontend's keys, or a
    feature dependency)."""
    return f"kernel keeps it {on_off(active)} although requested {on_off(not active)}"


def reason_unknown() -> str:
    """Return the refusal reason for a feature name the device does not have."""
    return "no such feature on this device"


def reason_kernel_refused(message: str) -> str:
    """Return the refusal reason for a change request the kernel answered with an error."""
    return f"kernel refused the request: {message}"


@attrs.frozen
class ApplyPlan:
    """What one apply must do. ``to_send``: feature -> requested state, only the features whose
    state differs and that can be requested. ``settled``: outcomes decided without a request."""

    to_send: Mapping[str, bool]
    settled: tuple[FeatureOutcome, ...]


def plan_apply(current: Mapping[str, FeatureState], wanted: Mapping[str, bool]) -> ApplyPlan:
    """Return the plan for bringing ``current`` to ``wanted``.

    A fixed feature is applied if it is in the wanted state, refused as fixed otherwise; no
    request is sent for it (the kernel ignores requests for fixed features). A changeable
    feature whose requested ("wanted") bit differs goes into ``to_send`` even when it is
    already active in the wanted state: a feature active off but requested on (a tap without
    offload, a vif capped by its frontend) would come back on by itself when the limit
    lifts, so an "off" wish is made durable. A changeable feature requested and active in
    the wanted state is applied; one requested but kept in the other state by the kernel is
    refused without a request (sending the same wish again changes nothing in the kernel).
    """
    to_send: dict[str, bool] = {}
    settled: list[FeatureOutcome] = []
    for feature, value in sorted(wanted.items()):
        state = current.get(feature)
        if state is None:
            settled.append(FeatureOutcome(feature, value, False, reason_unknown()))
        elif state.fixed:
            if state.active == value:
                settled.append(FeatureOutcome(feature, value, True))
            else:
                settled.append(FeatureOutcome(feature, value, False, reason_fixed(state.active)))
        elif state.requested != value:
            to_send[feature] = value
        elif state.active == value:
            settled.append(FeatureOutcome(feature, value, True))
        else:
            settled.append(FeatureOutcome(feature, value, False, reason_kept(state.active)))
    return ApplyPlan(to_send, tuple(settled))


def judge_sent(
    sent: Mapping[str, bool],
    after: Mapping[str, FeatureState],
    kernel_error: str | None = None,
) -> tuple[FeatureOutcome, ...]:
    """Return the outcome of each sent feature from the state read back after the request.

    ``kernel_error`` is the kernel's error text when it answered the request with an error; a
    feature that nevertheless reached the wanted state counts as applied.
    """
    outcomes = []
    for feature, value in sorted(sent.items()):
        state = after.get(feature)
        if state is None:
            outcomes.append(FeatureOutcome(feature, value, False, reason_unknown()))
        elif state.active == value:
            outcomes.append(FeatureOutcome(feature, value, True))
        elif kernel_error is not None:
            outcomes.append(
                FeatureOutcome(feature, value, False, reason_kernel_refused(kernel_error))
            )
        elif state.fixed:
            outcomes.append(FeatureOutcome(feature, value, False, reason_fixed(state.active)))
        else:
            outcomes.append(FeatureOutcome(feature, value, False, reason_kept(state.active)))
    return tuple(outcomes)


def reason_other_writer(requested: bool) -> str:
    """Return the refusal reason for a feature found in the wanted state when first read that
    another writer changed before the apply ended (now requested ``requested``)."""
    return f"changed by another writer during the apply (now requested {on_off(requested)})"


def judge_after(
    wanted: Mapping[str, bool],
    sent: Mapping[str, bool],
    after: Mapping[str, FeatureState],
    kernel_error: str | None = None,
) -> tuple[FeatureOutcome, ...]:
    """Return the outcome of every wanted feature from the state read back after a request,
    sorted by name: the sent ones by :func:`judge_sent`, the others (settled when first read)
    re-checked, so that a change another writer made meanwhile is reported, not hidden."""
    outcomes = list(judge_sent(sent, after, kernel_error))
    for feature, value in wanted.items():
        if feature in sent:
            continue
        state = after.get(feature)
        if state is None:
            outcomes.append(FeatureOutcome(feature, value, False, reason_unknown()))
        elif state.active == value:
            outcomes.append(FeatureOutcome(feature, value, True))
        elif state.fixed:
            outcomes.append(FeatureOutcome(feature, value, False, reason_fixed(state.active)))
        elif state.requested == value:
            outcomes.append(FeatureOutcome(feature, value, False, reason_kept(state.active)))
        else:
            outcomes.append(
                FeatureOutcome(feature, value, False, reason_other_writer(state.requested))
            )
    return tuple(sorted(outcomes, key=lambda outcome: outcome.feature))


def side_effects(
    before: Mapping[str, FeatureState],
    after: Mapping[str, FeatureState],
    wanted: Mapping[str, bool],
) -> dict[str, bool]:
    """Return the features not in ``wanted`` whose active state changed, with the new state."""
    return {
        feature: state.active
        for feature, state in sorted(after.items())
        if feature not in wanted and feature in before and before[feature].active != state.active
    }
