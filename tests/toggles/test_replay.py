"""NetlinkToggles and NetlinkTc against a real kernel's recorded answers (no root needed), and the
simulated kernel of the dry run held to the same answers.

The recordings (fixtures/kernel-replies.json, captured by capture_replies.py on the kernel it
names) come from a kernel without act_csum and matchall: what it supports is replayed as it
answered, and its refusals are the ones xenoffload must report honestly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from xenoffload.schema import Family
from xenoffload.toggles.base import DeviceGone, DeviceRef, FeatureState
from xenoffload.toggles.netlink import NetlinkToggles
from xenoffload.toggles.nl_codec import Answer, ErrorAnswer, Request, decode_messages
from xenoffload.toggles.simulated import (
    ACTION_MISSING,
    CLASSIFIER_MISSING,
    NO_CHAIN,
    NO_FILTER,
    NO_PARENT_QDISC,
    NO_QDISC,
    PROTOCOL_MISMATCH,
    QDISC_EXISTS,
    VETH,
    SimulatedKernel,
)
from xenoffload.toggles.tc_base import CsumRule, Hook, TcResult
from xenoffload.toggles.tc_netlink import NetlinkTc
from xenoffload.toggles.tc_plan import TcConfig

from .replay import Conversation, Exchange, Replay, load
from .simkernel import tc_request

KERNEL, CONVERSATIONS = load()
XO0 = DeviceRef("xo0")
EGRESS4 = CsumRule(Hook.EGRESS, Family.IPV4)
INGRESS = [CsumRule(Hook.INGRESS, Family.IPV4), CsumRule(Hook.INGRESS, Family.IPV6)]
ACT_CSUM_MISSING = f"act_csum unavailable (ENOENT: {ACTION_MISSING})"

#: Each tc conversation: the call it recorded, and the outcome the real kernel led to.
TC_CALLS: dict[str, tuple[Callable[[NetlinkTc], TcResult], dict[CsumRule, str | None], int]] = {
    "tc-fresh-without-act-csum": (lambda t: t.apply(XO0, [EGRESS4]),
                                  {EGRESS4: ACT_CSUM_MISSING}, 3),
    "tc-existing-clsact-without-act-csum": (lambda t: t.apply(XO0, INGRESS),
                                            dict.fromkeys(INGRESS, ACT_CSUM_MISSING), 2),
    "tc-remove-marked-filter": (lambda t: t.apply(XO0, []), {}, 3),
    "tc-foreign-filter-at-priority": (
        lambda t: t.apply(XO0, [EGRESS4]),
        {EGRESS4: "priority 49 on egress holds a filter xenoffload did not create"}, 0),
}


def replaying(conversation: Conversation) -> tuple[Replay, NetlinkToggles]:
    replay = Replay(conversation.exchanges)
    return replay, NetlinkToggles(opener=lambda _path: replay)


def outcomes(result: TcResult) -> dict[CsumRule, str | None]:
    return {outcome.rule: outcome.refused_reason for outcome in result.outcomes}


def test_the_recording_names_its_kernel() -> None:
    assert KERNEL and set(TC_CALLS) <= set(CONVERSATIONS)


def test_ethtool_read_of_a_real_veth_agrees_with_the_veth_profile() -> None:
    replay, toggles = replaying(CONVERSATIONS["ethtool-read"])
    features = toggles.read(XO0)
    assert replay.finished
    compared = [name for name in VETH.features if name in features]
    assert len(compared) >= 12
    for name in compared:
        spec = VETH.features[name]
        assert (features[name].active, not features[name].fixed) == (spec.on, spec.changeable)


def test_ethtool_apply_twice_sends_the_set_once() -> None:
    replay, toggles = replaying(CONVERSATIONS["ethtool-apply-twice"])
    first = toggles.apply(XO0, {"tx-checksum-ip-generic": False})
    second = toggles.apply(XO0, {"tx-checksum-ip-generic": False})
    assert first.ok and first.set_issued and first.side_effects
    assert second.ok and not second.set_issued
    assert toggles.sent["FEATURES_SET"] == 1 and replay.finished
    assert toggles.read  # the replay holds no further exchange: a read here would fail


@pytest.mark.parametrize("name", sorted(TC_CALLS))
def test_tc_conversations_replay_to_their_outcomes(name: str) -> None:
    call, expected, changes = TC_CALLS[name]
    replay = Replay(CONVERSATIONS[name].exchanges)
    result = call(NetlinkTc(transport_for=lambda _device: replay))
    assert outcomes(result) == expected
    assert result.changes_sent == changes
    assert replay.finished


def test_without_matchall_the_real_kernel_names_the_missing_classifier() -> None:
    replay = Replay(CONVERSATIONS["tc-matchall-missing"].exchanges)
    tcs = NetlinkTc(config=TcConfig(classifiers=("matchall",)),
                    transport_for=lambda _device: replay)
    assert outcomes(tcs.apply(XO0, [EGRESS4])) == {
        EGRESS4: f"no catch-all classifier (matchall): ENOENT: {CLASSIFIER_MISSING}"}
    assert replay.finished


def test_a_missing_device_is_gone() -> None:
    replay = Replay(CONVERSATIONS["tc-device-missing"].exchanges)
    with pytest.raises(DeviceGone):
        NetlinkTc(transport_for=lambda _device: replay).apply(DeviceRef("xo-none"), [])


# --- the simulated kernel held to the real one ------------------------------------------------


def answer_of(exchange: Exchange) -> Answer | ErrorAnswer:
    replay = Replay((exchange,))
    return replay.exchange(exchange.as_request(), exchange.label)


class Labelled:
    """A transport that remembers the labels of what it carried."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.labels: list[str] = []

    def exchange(self, request: Request, label: str) -> Answer | ErrorAnswer:
        self.labels.append(label)
        answer: Answer | ErrorAnswer = self.inner.exchange(request, label)
        return answer

    def close(self) -> None:
        pass


def simulated_like(conversation: Conversation) -> SimulatedKernel:
    """The recording's veth pair in the simulated kernel (this machine's tc), set up alike."""
    world = SimulatedKernel()
    world.add_device(XO0, VETH)
    world.add_device(DeviceRef("xo1"), VETH)
    getlink = next(exchange for exchange in conversation.exchanges if exchange.label == "GETLINK")
    recorded = decode_messages(getlink.answers[0])[0].payload[4:8]
    simulated = tc_request(world, XO0, Request(18, 1, getlink.as_request().payload))
    assert isinstance(simulated, Answer)
    assert simulated.messages[0].payload[4:8] == recorded  # the same ifindex
    for exchange in conversation.setup:
        assert tc_request(world, XO0, exchange.as_request()) == answer_of(exchange)
    return world


@pytest.mark.parametrize("name", sorted(TC_CALLS))
def test_the_simulated_kernel_leads_to_the_same_requests_and_outcomes(name: str) -> None:
    conversation = CONVERSATIONS[name]
    call, expected, changes = TC_CALLS[name]
    world = simulated_like(conversation)
    transport = Labelled(world.rtnetlink(XO0))
    result = call(NetlinkTc(transport_for=lambda _device: transport))
    assert transport.labels == [exchange.label for exchange in conversation.exchanges]
    assert outcomes(result) == expected and result.changes_sent == changes


def test_the_simulated_kernel_refuses_with_the_real_kernels_words() -> None:
    conversation = CONVERSATIONS["tc-kernel-texts"]
    world = simulated_like(CONVERSATIONS["tc-fresh-without-act-csum"])
    texts = []
    for exchange in conversation.exchanges:
        real = answer_of(exchange)
        assert tc_request(world, XO0, exchange.as_request()) == real, exchange.label
        if isinstance(real, ErrorAnswer):
            texts.append(real.text)
    assert texts == [NO_PARENT_QDISC, QDISC_EXISTS, NO_CHAIN, PROTOCOL_MISMATCH, NO_FILTER,
                     NO_QDISC]
    fresh = CONVERSATIONS["tc-fresh-without-act-csum"].exchanges
    refusals = [answer_of(exchange) for exchange in fresh if exchange.label == "NEWTFILTER"]
    assert refusals == [ErrorAnswer(2, ACTION_MISSING)]


def test_a_veth_reads_the_same_through_the_simulation() -> None:
    world = simulated_like(CONVERSATIONS["tc-fresh-without-act-csum"])
    assert world.read(XO0)["rx-checksum"] == FeatureState(True, True, False)
