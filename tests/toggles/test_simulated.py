"""SimulatedKernel: profiles true to the real Xen devices, and the same apply semantics as the
netlink implementation (only changes sent, verified, refusals with reasons, typed errors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from xenoffload.toggles import make_toggles
from xenoffload.toggles.base import (
    DeviceGone,
    DeviceRef,
    FeatureState,
    TogglePermissionDenied,
    TogglesUnavailable,
)
from xenoffload.toggles.netlink import NetlinkToggles
from xenoffload.toggles.simulated import (
    NETBACK_VIF,
    NETFRONT_ETH,
    VETH,
    FeatureProfile,
    SimulatedKernel,
)

from .simkernel import (
    remove_device,
    remove_namespace,
    request_as_other_writer,
    sets_sent,
    vanish_during_next_apply,
)

REAL = Path(__file__).with_name("real_ethtool_k.txt")
LABELS = {
    "rx-checksumming": "rx-checksum",
    "generic-segmentation-offload": "tx-generic-segmentation",
    "generic-receive-offload": "rx-gro",
    "large-receive-offload": "rx-lro",
}
LINE = re.compile(
    r"^\s*([a-z0-9_-]+): (on|off)(?: \[(fixed|requested on|requested off|not requested)\])?$"
)

VIF = DeviceRef("vif1.0")
ETH = DeviceRef("eth0", "guest")


def real_section(title: str) -> dict[str, tuple[bool, str | None]]:
    """Return feature -> (on, bracket note) of one section of the captured ethtool output."""
    sections = REAL.read_text().split("=== ")
    (body,) = [section for section in sections if section.startswith(title + "\n")]
    features = {}
    for line in body.splitlines()[1:]:
        match = LINE.match(line)
        assert match, line
        name = LABELS.get(match.group(1), match.group(1))
        features[name] = (match.group(2) == "on", match.group(3))
    return features


def toggles_with(*devices: tuple[DeviceRef, FeatureProfile]) -> SimulatedKernel:
    toggles = SimulatedKernel()
    for device, profile in devices:
        toggles.add_device(device, profile)
    return toggles


@pytest.mark.parametrize(("title", "profile"), [("vif1.0", NETBACK_VIF), ("eth0", NETFRONT_ETH)])
def test_profile_matches_the_real_device(title: str, profile: FeatureProfile) -> None:
    real = real_section(title)
    compared = 0
    for name, spec in profile.features.items():
        if name in real:
            on, note = real[name]
            assert (spec.on, spec.changeable) == (on, note != "fixed"), name
            compared += 1
    assert compared >= 8


def test_netback_tx_off_drops_tso_like_the_real_vif() -> None:
    toggles = toggles_with((VIF, NETBACK_VIF))
    result = toggles.apply(VIF, {"tx-checksum-ipv4": False, "tx-checksum-ipv6": False})
    assert result.ok and result.set_issued
    real = real_section("vif1.0 tx off")
    assert dict(result.side_effects) == {
        name: on for name, (on, note) in real.items() if note == "not requested"
    }


def test_netback_rx_checksum_off_is_refused_as_fixed_like_the_real_vif() -> None:
    result = toggles_with((VIF, NETBACK_VIF)).apply(VIF, {"rx-checksum": False})
    assert result.unsafe == (result.outcome("rx-checksum"),)
    assert result.outcome("rx-checksum").refused_reason == "fixed on by the driver"
    assert not result.set_issued


def test_netfront_tx_off_keeps_ipv4_on_and_reports_it_unsafe_like_the_real_eth0() -> None:
    toggles = toggles_with((ETH, NETFRONT_ETH))
    result = toggles.apply(ETH, {"tx-checksum-ipv4": False, "tx-checksum-ipv6": False})
    real = real_section("eth0 tx off")
    assert real["tx-checksum-ipv4"] == (True, "requested off")
    assert [outcome.feature for outcome in result.unsafe] == ["tx-checksum-ipv4"]
    assert result.outcome("tx-checksum-ipv6").applied
    assert dict(result.side_effects) == {"tx-tcp6-segmentation": False}


def test_tso_returns_when_checksum_comes_back() -> None:
    toggles = toggles_with((VIF, NETBACK_VIF))
    toggles.apply(VIF, {"tx-checksum-ipv4": False, "tx-checksum-ipv6": False})
    result = toggles.apply(VIF, {"tx-checksum-ipv4": True, "tx-checksum-ipv6": True})
    assert dict(result.side_effects) == {"tx-tcp-segmentation": True, "tx-tcp6-segmentation": True}
    assert toggles.read(VIF)["tx-tcp-segmentation"] == FeatureState(True, True, False)


def test_second_identical_apply_sends_nothing() -> None:
    toggles = toggles_with((VIF, NETBACK_VIF))
    wanted = {"tx-checksum-ipv4": False, "tx-checksum-ipv6": True}
    assert toggles.apply(VIF, wanted).set_issued
    second = toggles.apply(VIF, wanted)
    assert not second.set_issued and second.ok
    assert sets_sent(toggles) == 1
    assert [dict(recorded.sent) for recorded in toggles.applies] == [
        {"tx-checksum-ipv4": False},
        {},
    ]


def test_only_the_differing_features_are_sent_and_recorded() -> None:
    toggles = toggles_with((VIF, NETBACK_VIF))
    toggles.apply(VIF, {"tx-checksum-ipv4": False, "tx-checksum-ipv6": True, "rx-checksum": True})
    (recorded,) = toggles.applies
    assert dict(recorded.sent) == {"tx-checksum-ipv4": False}
    assert dict(recorded.changed) == {"tx-checksum-ipv4": False, "tx-tcp-segmentation": False}


def test_another_writers_change_to_an_unrequested_feature_is_kept() -> None:
    toggles = toggles_with((VIF, NETBACK_VIF))
    request_as_other_writer(toggles, VIF, {"tx-scatter-gather-fraglist": False})
    toggles.apply(VIF, {"tx-checksum-ipv4": False})
    assert toggles.read(VIF)["tx-scatter-gather-fraglist"].active is False


def test_driver_limit_refuses_requested_on() -> None:
    toggles = toggles_with((VIF, NETBACK_VIF))
    toggles.apply(VIF, {"tx-checksum-ipv6": False})
    toggles.limit(VIF, "tx-checksum-ipv6", allowed=False)  # frontend did not agree to IPv6
    result = toggles.apply(VIF, {"tx-checksum-ipv6": True})
    assert result.set_issued
    assert result.outcome("tx-checksum-ipv6").refused_reason == (
        "kernel keeps it off although requested on"
    )
    again = toggles.apply(VIF, {"tx-checksum-ipv6": True})
    assert not again.set_issued and not again.ok


def test_off_wish_is_made_durable_against_a_lifted_limit() -> None:
    toggles = toggles_with((VIF, NETBACK_VIF))
    toggles.limit(VIF, "tx-checksum-ipv4", allowed=False)  # active off, requested still on
    assert toggles.read(VIF)["tx-checksum-ipv4"] == FeatureState(False, True, False)
    result = toggles.apply(VIF, {"tx-checksum-ipv4": False})
    assert result.ok and result.set_issued
    toggles.limit(VIF, "tx-checksum-ipv4", allowed=True)
    assert toggles.read(VIF)["tx-checksum-ipv4"].active is False


def test_unknown_feature_is_refused() -> None:
    result = toggles_with((VIF, NETBACK_VIF)).apply(VIF, {"tx-checksum-bogus": False})
    assert result.outcome("tx-checksum-bogus").refused_reason == "no such feature on this device"


def test_removed_device_is_gone() -> None:
    toggles = toggles_with((VIF, NETBACK_VIF))
    remove_device(toggles, VIF)
    with pytest.raises(DeviceGone):
        toggles.read(VIF)
    with pytest.raises(DeviceGone):
        toggles.apply(VIF, {"tx-checksum-ipv4": False})


def test_device_vanishing_during_apply_is_gone_and_sends_nothing() -> None:
    toggles = toggles_with((VIF, NETBACK_VIF))
    vanish_during_next_apply(toggles, VIF)
    with pytest.raises(DeviceGone):
        toggles.apply(VIF, {"tx-checksum-ipv4": False})
    assert sets_sent(toggles) == 0
    assert toggles.applies[-1].result is None
    with pytest.raises(DeviceGone):
        toggles.read(VIF)


def test_missing_namespace_is_unavailable() -> None:
    toggles = toggles_with((ETH, NETFRONT_ETH))
    with pytest.raises(TogglesUnavailable):
        toggles.read(DeviceRef("eth0", "elsewhere"))
    remove_namespace(toggles, "guest")
    with pytest.raises(TogglesUnavailable):
        toggles.read(ETH)


def test_unprivileged_reads_but_cannot_change() -> None:
    toggles = SimulatedKernel(privileged=False)
    toggles.add_device(VIF, NETBACK_VIF)
    assert toggles.read(VIF)["tx-checksum-ipv4"].active
    assert toggles.apply(VIF, {"tx-checksum-ipv4": True}).ok  # nothing to send
    with pytest.raises(TogglePermissionDenied):
        toggles.apply(VIF, {"tx-checksum-ipv4": False})


def test_veth_profile_has_only_the_generic_checksum_changeable() -> None:
    toggles = toggles_with((DeviceRef("veth0"), VETH))
    features = toggles.read(DeviceRef("veth0"))
    assert [name for name in ("tx-checksum-ipv4", "tx-checksum-ipv6", "tx-checksum-ip-generic")
            if not features[name].fixed] == ["tx-checksum-ip-generic"]  # fmt: skip
    assert not features["rx-checksum"].fixed


def test_dry_run_factory_guesses_profiles_by_name() -> None:
    dry_run = make_toggles("dry-run")
    assert dry_run.read(DeviceRef("vif3.1"))["tx-checksum-ipv4"].fixed is False
    assert dry_run.read(DeviceRef("eth1", "g"))["tx-checksum-ipv4"].fixed is True
    assert dry_run.read(DeviceRef("veth7"))["tx-checksum-ip-generic"].fixed is False


def test_factory_kinds() -> None:
    netlink = make_toggles("netlink")
    assert isinstance(netlink, NetlinkToggles)
    netlink.close()
    with pytest.raises(ValueError, match="unknown toggles kind"):
        make_toggles("ioctl")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "a/b", "x" * 16, "a b", "a:1"])
def test_device_names_the_kernel_would_refuse_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="not a network device name"):
        DeviceRef(name)


@pytest.mark.parametrize("netns", ["", "..", "a/b"])
def test_namespace_names_outside_run_netns_are_rejected(netns: str) -> None:
    with pytest.raises(ValueError, match="not a network namespace name"):
        DeviceRef("eth0", netns)
