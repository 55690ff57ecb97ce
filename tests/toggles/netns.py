"""Helpers for the toggles system tests: run commands in a namespace, read ``ethtool --json -k``."""

from __future__ import annotations

import json
import subprocess

import attrs

# ethtool prints a few single-feature groups under a label instead of the kernel name.
_ETHTOOL_LABELS = {
    "rx-checksumming": "rx-checksum",
    "generic-segmentation-offload": "tx-generic-segmentation",
    "generic-receive-offload": "rx-gro",
    "large-receive-offload": "rx-lro",
}


@attrs.frozen
class EthtoolFeature:
    """One feature as ``ethtool --json -k`` reports it."""

    active: bool
    fixed: bool
    requested: bool


@attrs.frozen
class Namespace:
    """A throwaway network namespace and the commands the tests run in it."""

    name: str

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *command],
            check=check,
            capture_output=True,
            text=True,
            timeout=20,
        )

    def add_veth(self, name: str, peer: str) -> None:
        self.run("ip", "link", "add", "name", name, "type", "veth", "peer", "name", peer)

    def add_tap(self, name: str) -> None:
        self.run("ip", "tuntap", "add", "mode", "tap", "name", name)

    def delete_link(self, name: str) -> None:
        self.run("ip", "link", "del", name)

    def ethtool_set(self, device: str, **features: bool) -> None:
        args = [part for name, on in features.items() for part in (name, "on" if on else "off")]
        self.run("ethtool", "-K", device, *args)

    def ethtool_features(self, device: str) -> dict[str, EthtoolFeature]:
        """Return ``ethtool --json -k`` by kernel feature name (umbrella labels dropped)."""
        (report,) = json.loads(self.run("ethtool", "--json", "-k", device).stdout)
        features = {}
        for label, value in report.items():
            if not isinstance(value, dict) or value.get("fixed") is None:
                continue  # "ifname", or an umbrella over several features
            features[_ETHTOOL_LABELS.get(label, label)] = EthtoolFeature(
                active=bool(value["active"]),
                fixed=bool(value["fixed"]),
                requested=bool(value["requested"]),
            )
        return features
