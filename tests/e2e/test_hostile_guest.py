"""A hostile guest: the test plays guest 2 over its unprivileged socket, raw bytes included.

Guest 1 (the victim) runs the guest agent on vif 1/0; guest 2's vif 2/0 is driven by the test.
Both sit on the private bridge, where dom0's policy would suppress checksums for a frontend
that asks properly. In every case the backend agent stays up, the victim's vif is untouched
(no XenStore write, no kernel change), the hostile vif gets the safe result (every checksum
computed), and the refusal is logged with the domid and the path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import attrs
import pytest

from xenoffload.agents.guest import GuestAgent
from xenoffload.machine import Mode
from xenoffload.policy import parse_policy
from xenoffload.store.base import XenStoreError
from xenoffload.store.pyxs_store import PyxsStore, connect_store
from xenoffload.toggles.netlink import NetlinkToggles

from .lab import COMPUTED, SUPPRESSED, CountingToggles, Lab, wait_until

BACKEND_POLICY = parse_policy({"rule": [{"bridge": "xenpriv0", "to-guest": True,
                                         "from-guest": True}]})
GUEST_POLICY = parse_policy({"default": {"to-guest": True, "from-guest": True}})
HOSTILE_DIR = "/local/domain/2/device/vif/0"
HOSTILE_BACKEND = "/local/domain/0/backend/vif/2/0"
VALID_KEYS = {"feature-csum-tx": b"1", "feature-csum-rx": b"1", "feature-csum-tx-ipv6": b"1",
              "feature-csum-rx-ipv6": b"1"}


class Scene:
    """Victim and hostile guest with the backend agent running."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.toggles = CountingToggles(NetlinkToggles())
        lab.add_guest(1, ["xenpriv0"])
        lab.add_guest(2, ["xenpriv0"])
        self.backend = lab.backend_agent(BACKEND_POLICY, self.toggles)
        lab.guest_agent(1, GUEST_POLICY, self.toggles)
        lab.wait_settled({(1, 0): SUPPRESSED})
        wait_until(lambda: lab.store().read(f"{HOSTILE_BACKEND}/state") == b"2", 10,
                   "backend of vif 2/0 waiting for its frontend")
        self.sets = len(self.toggles.sets)
        self.requests = len(lab.xenstored.request_log)
        self.victim_tree = lab.xenstored.model.dump("/local/domain/1")
        self.victim_backend = lab.xenstored.model.dump("/local/domain/0/backend/vif/1")
        self.hostile: PyxsStore = connect_store(lab.guest_socket(2))

    def close(self) -> None:
        self.hostile.close()

    def connect_hostile(self, keys: dict[str, bytes]) -> None:
        """The hostile frontend writes ``keys`` then goes Connected; wait for the backend."""
        for name, value in keys.items():
            self.hostile.write(f"{HOSTILE_DIR}/{name}", value)
        self.hostile.write(f"{HOSTILE_DIR}/state", b"4")
        self.wait_backend_connected()

    def wait_backend_connected(self) -> None:
        wait_until(lambda: self.lab.store().read(f"{HOSTILE_BACKEND}/state") == b"4"
                   and self.lab.store().try_read(f"{HOSTILE_BACKEND}/xenoffload-csum-status")
                   == b"ok", 10, "backend of vif 2/0 Connected and enforced")

    def assert_hostile_vif_safe(self) -> None:
        assert self.lab.reports()[(2, 0)].result == COMPUTED
        assert self.lab.kernel(self.lab.vif_device(2, 0))["tx-checksum-ip-generic"] is False

    def assert_victim_untouched(self) -> None:
        lab = self.lab
        assert self.backend.alive
        assert lab.xenstored.model.dump("/local/domain/1") == self.victim_tree
        assert lab.xenstored.model.dump("/local/domain/0/backend/vif/1") == self.victim_backend
        changed = {record.device for record in self.toggles.sets[self.sets:]}
        assert not changed & {lab.vif_device(1, 0), lab.eth_device(1, 0)}
        lab.assert_kernel_matches((1, 0), SUPPRESSED)


@pytest.fixture
def scene(netlab: Lab) -> Iterator[Scene]:
    world = Scene(netlab)
    try:
        yield world
    finally:
        world.close()


def _logged(caplog: pytest.LogCaptureFixture, *needles: str) -> bool:
    return any(all(needle in record.getMessage() for needle in needles)
               for record in caplog.records if record.levelno >= logging.WARNING)


@pytest.mark.parametrize("junk", [b"\xff\xfe\x80\xc3(", b"\xee" * 1900, b"yes", b"1x", b""],
                         ids=["non-utf8", "1900-bytes", "word", "trailing-junk", "empty"])
def test_garbage_feature_values_get_the_safe_result_and_are_logged(
        scene: Scene, caplog: pytest.LogCaptureFixture, junk: bytes) -> None:
    scene.connect_hostile({**VALID_KEYS, "feature-csum-rx": junk})

    scene.assert_hostile_vif_safe()
    assert _logged(caplog, "domid=2 devid=0", f"{HOSTILE_DIR}/feature-csum-rx")
    scene.assert_victim_untouched()


def test_a_value_larger_than_a_node_may_hold_is_refused_by_xenstored(scene: Scene) -> None:
    with pytest.raises(XenStoreError) as refused:  # 4 KiB of junk: over the node-size quota
        scene.hostile.write(f"{HOSTILE_DIR}/feature-csum-rx", b"J" * 4000)
    assert refused.value.errno_name in ("EQUOTA", "ENOSPC", "E2BIG")
    scene.connect_hostile({**VALID_KEYS, "feature-csum-rx": b"J" * 1900})
    scene.assert_hostile_vif_safe()
    scene.assert_victim_untouched()


def test_backend_link_to_another_guests_device_is_refused_and_changes_nothing(
        scene: Scene, caplog: pytest.LogCaptureFixture) -> None:
    lab = scene.lab
    victim_backend = "/local/domain/0/backend/vif/1/0"
    scene.hostile.write(f"{HOSTILE_DIR}/backend", victim_backend.encode())
    with pytest.raises(XenStoreError):  # nor can it write into the victim's directories
        scene.hostile.write(f"{victim_backend}/feature-csum-tx", b"0")
    scene.connect_hostile({**VALID_KEYS, "feature-no-csum-offload": b"junk"})

    # dom0 follows the toolstack's own `frontend` key, never the guest's link ...
    report = lab.reports()[(2, 0)]
    assert report.frontend.advertisement.rx.ipv4 is False  # read from guest 2's own dir
    scene.assert_hostile_vif_safe()
    # ... and a guest agent in the hostile guest refuses to follow it, saying where.
    agent = GuestAgent(GUEST_POLICY, 2, Mode.FULL)
    agent.attach(scene.hostile)
    assert (2, 0) not in agent.endpoints
    assert _logged(caplog, "domid=2 devid=0 refused", f"{HOSTILE_DIR}/backend")
    scene.assert_victim_untouched()


def test_rapid_state_flapping_leaves_the_agent_up_and_the_victim_untouched(
        scene: Scene, caplog: pytest.LogCaptureFixture) -> None:
    scene.connect_hostile({**VALID_KEYS, "feature-csum-rx": b"\x00\x01"})
    hostile_sets = scene.toggles.sets_on(scene.lab.vif_device(2, 0))
    states = [b"1", b"4", b"8", b"6", b"3", b"9", b"\xff", b"5", b"2", b"7", b"4", b"0"]
    for state in states * 40:  # 480 state writes as fast as the socket takes them
        scene.hostile.write(f"{HOSTILE_DIR}/state", state)
    scene.hostile.write(f"{HOSTILE_DIR}/state", b"\xff\xfe")  # not a state at all
    wait_until(lambda: _logged(caplog, "domid=2 devid=0", f"{HOSTILE_DIR}/state"), 10,
               "the refusal logged with the domid and the path")
    scene.hostile.write(f"{HOSTILE_DIR}/state", b"6")  # settle: close, boot, connect
    wait_until(lambda: scene.lab.store().read(f"{HOSTILE_BACKEND}/state") == b"6", 10,
               "backend Closed after the flapping")
    scene.hostile.write(f"{HOSTILE_DIR}/state", b"1")
    wait_until(lambda: scene.lab.store().read(f"{HOSTILE_BACKEND}/state") == b"2", 10,
               "backend waiting again")
    scene.hostile.write(f"{HOSTILE_DIR}/state", b"4")
    scene.wait_backend_connected()

    scene.assert_hostile_vif_safe()
    assert scene.toggles.sets_on(scene.lab.vif_device(2, 0)) == hostile_sets  # no flapping
    scene.assert_victim_untouched()


def test_thousands_of_junk_nodes_leave_the_agent_responsive(scene: Scene) -> None:
    lab = scene.lab
    model = lab.xenstored.model
    model.quotas = attrs.evolve(model.quotas, nodes=10_000)  # a generous xenstored
    for serial in range(3000):
        # Where libxl lets a guest write: its vif directory and its data directory (device/
        # and device/vif/ are the toolstack's: EACCES).
        parent = (HOSTILE_DIR, f"{HOSTILE_DIR}/deep", "/local/domain/2/data")[serial % 3]
        scene.hostile.write(f"{parent}/junk-{serial // 100}/n{serial}", b"\xde\xad" * 8)
    scene.connect_hostile({**VALID_KEYS, "feature-csum-tx": b"maybe"})
    scene.assert_hostile_vif_safe()
    scene.assert_victim_untouched()
    # Still responsive: a policy change for the victim is applied at once.
    lab.store().write("/local/domain/0/xenoffload/policy/vif/1/0",
                      b"to-guest=off from-guest=off")
    lab.wait_settled({(1, 0): COMPUTED}, timeout=5)
    wait_until(lambda: lab.kernel_matches((1, 0), COMPUTED), 5, "victim re-applied")
    backend_conns = lab.conn_ids("xenoffload-backend")
    assert not lab.mutations_under("/local/domain/2", scene.requests, backend_conns)
