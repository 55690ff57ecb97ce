"""System tests of NetlinkToggles against real veth/tap devices in throwaway namespaces.

Each result is checked twice: through the library and through ``ethtool --json -k``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from conftest import require_tool

from xenoffload.toggles.base import (
    DeviceGone,
    DeviceRef,
    FeatureState,
    TogglePermissionDenied,
    TogglesUnavailable,
)
from xenoffload.toggles.netlink import NetlinkToggles
from xenoffload.toggles.simulated import VETH, SimulatedKernel

from .netns import Namespace

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]


def assert_agree(netns: Namespace, device: str, ours: Mapping[str, FeatureState]) -> None:
    theirs = netns.ethtool_features(device)
    common = set(theirs) & set(ours)
    assert {"rx-checksum", "tx-checksum-ip-generic", "tx-checksum-ipv4"} <= common
    for name in sorted(common):
        assert (ours[name].active, ours[name].fixed) == (theirs[name].active, theirs[name].fixed), (
            name
        )
        if not theirs[name].fixed:
            assert ours[name].requested == theirs[name].requested, name


@pytest.fixture
def veth(netns: Namespace) -> DeviceRef:
    netns.add_veth("xo0", "xo1")
    return DeviceRef("xo0", netns.name)


@pytest.fixture
def tap(netns: Namespace) -> DeviceRef:
    netns.add_tap("xotap0")
    return DeviceRef("xotap0", netns.name)


def test_read_agrees_with_ethtool(
    netns: Namespace, veth: DeviceRef, toggles: NetlinkToggles
) -> None:
    assert_agree(netns, veth.name, toggles.read(veth))


@pytest.mark.parametrize("feature", ["tx-checksum-ip-generic", "tx-checksum-sctp", "rx-checksum"])
def test_changeable_checksum_feature_goes_off_and_on(
    netns: Namespace, veth: DeviceRef, toggles: NetlinkToggles, feature: str
) -> None:
    for value in (False, True):
        result = toggles.apply(veth, {feature: value})
        assert result.ok and result.set_issued
        assert toggles.read(veth)[feature] == FeatureState(value, value, fixed=False)
        assert netns.ethtool_features(veth.name)[feature].active is value
        assert_agree(netns, veth.name, toggles.read(veth))


@pytest.mark.parametrize("feature", ["tx-checksum-ipv4", "tx-checksum-ipv6"])
def test_per_family_checksum_fixed_off_on_veth_is_refused_on_and_accepted_off(
    veth: DeviceRef, toggles: NetlinkToggles, feature: str
) -> None:
    refused = toggles.apply(veth, {feature: True})
    assert refused.outcome(feature).refused_reason == "fixed off by the driver"
    assert not refused.set_issued
    assert toggles.apply(veth, {feature: False}).ok


def test_fixed_rx_checksum_on_tap_is_refused_with_reason(
    netns: Namespace, tap: DeviceRef, toggles: NetlinkToggles
) -> None:
    result = toggles.apply(tap, {"rx-checksum": True})
    assert result.refused == (result.outcome("rx-checksum"),)
    assert result.outcome("rx-checksum").refused_reason == "fixed off by the driver"
    assert netns.ethtool_features(tap.name)["rx-checksum"].fixed


def test_feature_the_kernel_keeps_off_is_refused_and_an_off_wish_is_made_durable(
    netns: Namespace, tap: DeviceRef, toggles: NetlinkToggles
) -> None:
    # A tap without a reader keeps tx checksum off although it is requested on.
    assert toggles.read(tap)["tx-checksum-ip-generic"] == FeatureState(False, True, False)
    off = toggles.apply(tap, {"tx-checksum-ip-generic": False})
    assert off.ok and off.set_issued  # clears the requested bit
    assert netns.ethtool_features(tap.name)["tx-checksum-ip-generic"].requested is False
    on = toggles.apply(tap, {"tx-checksum-ip-generic": True})
    assert on.set_issued
    assert on.unsafe == ()
    assert on.outcome("tx-checksum-ip-generic").refused_reason == (
        "kernel keeps it off although requested on"
    )
    assert netns.ethtool_features(tap.name)["tx-checksum-ip-generic"].requested is True


def test_second_identical_apply_sends_no_set(veth: DeviceRef, toggles: NetlinkToggles) -> None:
    wanted = {"tx-checksum-ip-generic": False, "rx-checksum": False}
    first = toggles.apply(veth, wanted)
    sets_after_first = toggles.sent["FEATURES_SET"]
    second = toggles.apply(veth, wanted)
    assert first.set_issued and sets_after_first == 1
    assert not second.set_issued and second.ok
    assert toggles.sent["FEATURES_SET"] == 1


def intercept_set(
    toggles: NetlinkToggles, monkeypatch: pytest.MonkeyPatch, before_set: Callable[[], None]
) -> None:
    """Run ``before_set`` after the apply has read the device, right before its SET."""
    real_set = toggles._set_features

    def wrapped(*args: object, **kwargs: object) -> str | None:
        before_set()
        return real_set(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(toggles, "_set_features", wrapped)


def test_only_changed_features_are_sent_so_another_writers_change_survives(
    netns: Namespace, veth: DeviceRef, toggles: NetlinkToggles, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between our read and our SET another writer turns sctp off; we never asked about sctp,
    # so a SET carrying a snapshot of every feature would turn it back on (lost update).
    intercept_set(
        toggles, monkeypatch, lambda: netns.ethtool_set(veth.name, **{"tx-checksum-sctp": False})
    )
    result = toggles.apply(veth, {"tx-checksum-ip-generic": False})
    assert result.ok
    assert netns.ethtool_features(veth.name)["tx-checksum-sctp"].active is False
    assert toggles.read(veth)["tx-checksum-sctp"] == FeatureState(False, False, False)


def test_a_wanted_feature_another_writer_changes_mid_apply_is_reported(
    netns: Namespace, veth: DeviceRef, toggles: NetlinkToggles, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rx-checksum is already on when read, so it is not sent; the read-back catches the change.
    intercept_set(
        toggles, monkeypatch, lambda: netns.ethtool_set(veth.name, **{"rx-checksum": False})
    )
    result = toggles.apply(veth, {"tx-checksum-ip-generic": False, "rx-checksum": True})
    assert result.outcome("tx-checksum-ip-generic").applied
    assert result.outcome("rx-checksum").refused_reason == (
        "changed by another writer during the apply (now requested off)"
    )


def test_side_effects_report_dependent_tso_dropped_and_restored_like_the_veth_profile(
    veth: DeviceRef, toggles: NetlinkToggles
) -> None:
    simulated = SimulatedKernel()
    simulated.add_device(veth, VETH)
    for value in (False, True):
        real = toggles.apply(veth, {"tx-checksum-ip-generic": value})
        model = simulated.apply(veth, {"tx-checksum-ip-generic": value})
        assert real.outcomes == model.outcomes
        assert model.side_effects
        assert {name: real.side_effects.get(name) for name in model.side_effects} == dict(
            model.side_effects
        )
    assert toggles.read(veth)["tx-tcp-segmentation"] == FeatureState(True, True, False)


def test_missing_device_is_device_gone(netns: Namespace, toggles: NetlinkToggles) -> None:
    missing = DeviceRef("xo-none", netns.name)
    with pytest.raises(DeviceGone):
        toggles.read(missing)
    with pytest.raises(DeviceGone):
        toggles.apply(missing, {"rx-checksum": False})


def test_device_deleted_mid_apply_is_device_gone(
    netns: Namespace, veth: DeviceRef, toggles: NetlinkToggles, monkeypatch: pytest.MonkeyPatch
) -> None:
    intercept_set(toggles, monkeypatch, lambda: netns.delete_link(veth.name))
    with pytest.raises(DeviceGone):
        toggles.apply(veth, {"tx-checksum-ip-generic": False})


def test_device_replaced_by_same_name_mid_apply_is_device_gone(
    netns: Namespace, veth: DeviceRef, toggles: NetlinkToggles, monkeypatch: pytest.MonkeyPatch
) -> None:
    def replace() -> None:
        netns.delete_link(veth.name)
        netns.add_veth(veth.name, "xo2")

    intercept_set(toggles, monkeypatch, replace)
    with pytest.raises(DeviceGone):
        toggles.apply(veth, {"tx-checksum-ip-generic": False})
    assert netns.ethtool_features(veth.name)["tx-checksum-ip-generic"].active is True


def test_missing_namespace_is_unavailable(toggles: NetlinkToggles) -> None:
    with pytest.raises(TogglesUnavailable, match="does not exist"):
        toggles.read(DeviceRef("lo", "xo-test-missing-namespace"))


def test_namespace_deleted_after_use_is_unavailable(
    netns: Namespace, veth: DeviceRef, toggles: NetlinkToggles
) -> None:
    toggles.read(veth)
    subprocess.run(["ip", "netns", "del", netns.name], check=True)
    with pytest.raises(TogglesUnavailable):
        toggles.read(veth)


def run_without_capabilities(prefix: list[str], device: DeviceRef) -> str:
    """Run a read then an apply in a child without any capability (still uid 0, so it can read
    the interpreter's files wherever they are installed); return what it printed."""
    script = (
        "from xenoffload.toggles.netlink import NetlinkToggles\n"
        "from xenoffload.toggles.base import DeviceRef, ToggleError\n"
        f"device = DeviceRef({device.name!r}, {device.netns!r})\n"
        "t = NetlinkToggles()\n"
        "for step in (lambda: t.read(device), lambda: t.apply(device, {'rx-checksum': False})):\n"
        "    try:\n"
        "        step()\n"
        "        print('ok')\n"
        "    except ToggleError as error:\n"
        "        print(type(error).__name__)\n"
    )
    setpriv = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]
    completed = subprocess.run(
        [*prefix, *setpriv, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd="/",
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_caller_without_net_admin_reads_but_change_is_permission_denied(
    netns: Namespace, veth: DeviceRef
) -> None:
    require_tool("setpriv", "util-linux")
    output = run_without_capabilities(["ip", "netns", "exec", netns.name], DeviceRef(veth.name))
    assert output.split() == ["ok", TogglePermissionDenied.__name__]
    assert netns.ethtool_features(veth.name)["rx-checksum"].active is True


def test_caller_without_sys_admin_cannot_enter_a_named_namespace(
    netns: Namespace, veth: DeviceRef
) -> None:
    require_tool("setpriv", "util-linux")
    assert run_without_capabilities([], veth).split() == [TogglePermissionDenied.__name__] * 2
