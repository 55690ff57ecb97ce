"""``show`` and the ``--once`` summaries through the real command: xl's names and MACs, a
guest's view of its own vifs, and every ``--json`` output valid against the shipped schema."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
from e2e.lab import Lab, run_cli

from xenoffload.cli import EXIT_OK, EXIT_OUTCOME
from xenoffload.policy import vm_uuid
from xenoffload.show import json_schema

from .conftest import Processes

FULL = ("--mode", "full", "--toggles", "none", "--no-config")


def validated(stdout: str) -> list[dict[str, Any]]:
    """The JSON document ``stdout``, checked against the shipped schema."""
    document = json.loads(stdout)
    jsonschema.validate(document, json_schema(),
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    assert isinstance(document, list)
    return document


def test_the_shipped_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(json_schema())


@pytest.fixture
def settled(lab: Lab, processes: Processes) -> Lab:
    """Guests 1 (``web``: xenbr0, xenpriv0) and 2 (``nfs``: xenpriv0); both agents negotiated
    every vif once (``--once``), with xenpriv0 allowed to skip checksums."""
    lab.add_guest(1, ["xenbr0", "xenpriv0"], name="web")
    lab.add_guest(2, ["xenpriv0"], name="nfs")
    policy = lab.write_file("dom0.toml", '[[rule]]\nbridge = "xenpriv*"\nto-guest = true\n'
                                         "from-guest = true\n")
    processes.start("backend", "backend-agent", "--xenstore", lab.socket, "--mode", "full",
                    "--toggles", "none", "--config", str(policy))
    for domid in (1, 2):
        processes.start(f"guest{domid}", "guest-agent", "--xenstore", lab.guest_socket(domid),
                        *FULL)
    from e2e.lab import wait_until

    def agreed() -> bool:
        done = run_cli("show", "--json", "--xenstore", lab.socket)
        return done.returncode == 0 and all(v["agreed"] for v in json.loads(done.stdout)) \
            and len(json.loads(done.stdout)) == 3

    wait_until(agreed, 15, "every vif negotiated")
    return lab


def test_show_json_is_numeric_with_both_ends_and_published_results(settled: Lab) -> None:
    done = run_cli("show", "--json", "--xenstore", settled.socket)
    assert done.returncode == EXIT_OK, done.stderr
    vifs = {(v["domid"], v["devid"]): v for v in validated(done.stdout)}
    assert set(vifs) == {(1, 0), (1, 1), (2, 0)}
    private = vifs[(1, 1)]
    assert private["domain"] == "web" and private["bridge"] == "xenpriv0"
    assert private["negotiated"] == {"to_guest": {"ipv4": True, "ipv6": True},
                                     "from_guest": {"ipv4": True, "ipv6": True}}
    for end in ("backend", "frontend"):
        assert private[end]["result"] == private["negotiated"]  # xenoffload-csum-result
        # --toggles none: the status is about the device, and nothing touched it
        assert private[end]["status"] == "unenforced: nothing applied (--toggles none)"
        assert private[end]["state"] == {"value": 4, "name": "Connected"}
        assert private[end]["advertised"]["source"] == "xenoffload"
    assert vifs[(1, 0)]["negotiated"]["to_guest"] == {"ipv4": False, "ipv6": False}


@pytest.mark.parametrize("spec", ["nfs", "2", "nfs/0", "2/0", "nfs/00:16:3E:00:02:00"])
def test_show_takes_a_domain_name_and_a_mac_as_xl_does(settled: Lab, spec: str) -> None:
    done = run_cli("show", spec, "--json", "--xenstore", settled.socket)
    assert done.returncode == EXIT_OK, done.stderr
    assert [(v["domid"], v["devid"]) for v in validated(done.stdout)] == [(2, 0)]


def vm_of(lab: Lab, domid: int) -> str:
    """The VM UUID of domain ``domid`` (what ``set`` keys a vif's override by)."""
    uuid = vm_uuid(lab.toolstack.try_read(f"/local/domain/{domid}/vm"))
    assert uuid is not None
    return uuid


def test_set_takes_a_name_and_a_mac_and_writes_that_vifs_override(settled: Lab) -> None:
    done = run_cli("set", "web/00:16:3e:00:01:01", "--tx", "off", "--xenstore",
                   settled.socket)
    assert done.returncode == EXIT_OK, done.stderr
    node = f"/local/domain/0/xenoffload/policy/vif/{vm_of(settled, 1)}/1"
    assert done.stdout.strip() == f"set {node}"
    assert settled.toolstack.read(node) == b"to-guest-ipv4=off to-guest-ipv6=off"


def test_ipv6_sets_the_ipv6_family_apart(settled: Lab) -> None:
    done = run_cli("set", "web/1", "--tx", "off", "--ipv6", "on", "--xenstore", settled.socket)
    assert done.returncode == EXIT_OK, done.stderr
    node = settled.toolstack.read(f"/local/domain/0/xenoffload/policy/vif/{vm_of(settled, 1)}/1")
    assert node == b"to-guest-ipv4=off to-guest-ipv6=on"


@pytest.mark.parametrize("bridge", ["xenbr0.100", "xenpriv*", "br-[ab]"])
def test_set_bridge_takes_any_linux_bridge_name_and_globs(lab: Lab, bridge: str) -> None:
    done = run_cli("set", "--bridge", bridge, "--tx", "on", "--xenstore", lab.socket)
    assert done.returncode == EXIT_OK, done.stderr
    cleared = run_cli("set", "--bridge", bridge, "--clear", "--xenstore", lab.socket)
    assert cleared.returncode == EXIT_OK, cleared.stderr
    assert cleared.stdout.split()[1] == done.stdout.split()[1]  # the same node


def test_a_bridge_glob_override_reaches_the_vifs_it_matches(settled: Lab) -> None:
    done = run_cli("set", "--bridge", "xenpriv*", "--tx", "off", "--rx", "off",
                   "--xenstore", settled.socket)
    assert done.returncode == EXIT_OK, done.stderr
    from e2e.lab import wait_until

    def private_computed() -> bool:
        shown = json.loads(run_cli("show", "--json", "--xenstore", settled.socket).stdout)
        return all(v["agreed"] and not v["negotiated"]["to_guest"]["ipv4"] for v in shown)

    wait_until(private_computed, 15, "the glob override applied to both xenpriv0 vifs")


def test_show_in_a_guest_lists_the_guests_own_vifs(settled: Lab) -> None:
    done = run_cli("show", "--json", "--xenstore", settled.guest_socket(1))
    assert done.returncode == EXIT_OK, done.stderr
    vifs = validated(done.stdout)
    assert [(v["domid"], v["devid"]) for v in vifs] == [(1, 0), (1, 1)]
    assert all(v["agreed"] and v["backend_domid"] == 0 for v in vifs)
    table = run_cli("show", "--xenstore", settled.guest_socket(1))
    assert table.returncode == EXIT_OK
    assert re.search(r"^1/1  web +00:16:3e:00:01:01  xenpriv0  Connected/Connected",
                     table.stdout, re.MULTILINE), table.stdout
    assert "2/0" not in table.stdout  # another guest's vif is not this guest's to see
    assert "parentheses" not in table.stdout  # Connected: the results are in force
    own = run_cli("show", "web/1", "--json", "--xenstore", settled.guest_socket(1))
    assert [(v["domid"], v["devid"]) for v in validated(own.stdout)] == [(1, 1)]


def test_once_summaries_follow_the_same_schema(lab: Lab) -> None:
    lab.add_guest(1, ["xenbr0"], name="web")
    backend = run_cli("backend-agent", "--once", "--json", "--settle", "0.2",
                      "--xenstore", lab.socket, *FULL)
    assert backend.returncode == EXIT_OUTCOME  # the frontend has not connected
    (vif,) = validated(backend.stdout)
    assert (vif["domid"], vif["devid"], vif["domain"]) == (1, 0, "web")
    assert vif["agent"]["role"] == "backend"
    assert vif["agent"]["own_state"] == {"value": 2, "name": "InitWait"}
    guest = run_cli("guest-agent", "--once", "--json", "--settle", "0.2",
                    "--xenstore", lab.guest_socket(1), *FULL)
    assert guest.returncode == EXIT_OUTCOME, guest.stderr  # no backend agent moves on
    (vif,) = validated(guest.stdout)
    assert (vif["domid"], vif["devid"], vif["backend_domid"]) == (1, 0, 0)
    assert vif["backend"]["directory"] == "/local/domain/0/backend/vif/1/0"
    assert vif["agent"]["role"] == "frontend" and vif["agent"]["refused"] is None
    assert vif["agent"]["peer_state"] == {"value": 2, "name": "InitWait"}
    assert vif["frontend"]["state"] == vif["agent"]["own_state"]
    assert vif["agent"]["enforcement"] is None  # --toggles none: nothing enforced yet


def test_a_refused_vif_is_in_the_once_summary(lab: Lab) -> None:
    vif = lab.add_guest(1, ["xenbr0"])[0]
    lab.toolstack.write(f"{vif.backend_dir}/frontend", b"/local/domain/2/device/vif/0")
    done = run_cli("backend-agent", "--once", "--json", "--settle", "0.2",
                   "--xenstore", lab.socket, *FULL)
    assert done.returncode == EXIT_OUTCOME
    (record,) = validated(done.stdout)
    assert "is not /local/domain/1/device/vif/0" in record["agent"]["refused"]


def test_set_keys_a_vifs_override_by_its_vm_and_takes_a_vm_that_does_not_run(
        settled: Lab) -> None:
    """An override follows the VM (its UUID), so it holds across xl save/restore; a UUID
    names a VM's vif even while the VM is down; by domid or by name, a domain libxl laid out
    is keyed by its UUID too."""
    uuid = vm_of(settled, 2)
    done = run_cli("set", uuid, "--tx", "on", "--xenstore", settled.socket)
    assert done.returncode == 2 and "expected DOMAIN/DEVID" in done.stderr  # a vif is needed
    done = run_cli("set", f"{uuid}/0", "--tx", "on", "--xenstore", settled.socket)
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout.splitlines() == [f"set /local/domain/0/xenoffload/policy/vif/{uuid}/0"]
    done = run_cli("set", "2/0", "--tx", "off", "--xenstore", settled.socket)
    assert done.stdout.splitlines() == [f"set /local/domain/0/xenoffload/policy/vif/{uuid}/0"]
    down = "0b8d3c5e-1111-4222-8333-444455556666"
    done = run_cli("set", f"{down}/1", "--rx", "off", "--xenstore", settled.socket)
    assert done.returncode == EXIT_OK, done.stderr
    assert settled.toolstack.read(f"/local/domain/0/xenoffload/policy/vif/{down}/1") == \
        b"from-guest-ipv4=off from-guest-ipv6=off"
    done = run_cli("set", f"{down}/1", "--clear", "--xenstore", settled.socket)
    assert done.returncode == EXIT_OK, done.stderr
    done = run_cli("set", "nfs/0", "--clear", "--xenstore", settled.socket)
    assert done.stdout.strip() == f"cleared /local/domain/0/xenoffload/policy/vif/{uuid}/0"


def test_show_with_no_vifs_says_where_it_looked(lab: Lab) -> None:
    lab.add_guest(1, [], name="novifs")
    table = run_cli("show", "--xenstore", lab.socket)
    assert table.returncode == EXIT_OK, table.stderr
    assert table.stdout.splitlines()[1:] == [
        "(no vifs with a backend or frontend in domain 0)"], table.stdout
    guest = run_cli("show", "--xenstore", lab.guest_socket(1))
    assert guest.stdout.splitlines()[1:] == [
        "(no vifs with a backend or frontend in domain 1)"], guest.stdout
    driver = run_cli("show", "--backend-domid", "1", "--xenstore", lab.socket)
    assert driver.stdout.splitlines()[1:] == [
        "(no vifs with a frontend in domain 0 or a backend in domain 1)"], driver.stdout
    done = run_cli("show", "--json", "--xenstore", lab.socket)
    assert (done.returncode, validated(done.stdout)) == (EXIT_OK, [])


def test_show_marks_a_result_nothing_negotiated_yet(lab: Lab) -> None:
    """A vif whose ends are not both Connected shows what its advertisements would decide,
    in parentheses and said so: not a result in force."""
    lab.add_guest(1, ["xenbr0"], name="web")
    table = run_cli("show", "--xenstore", lab.socket)
    assert table.returncode == EXIT_OK, table.stderr
    row, note = table.stdout.splitlines()[1:]
    assert re.search(r"^1/0  web .* \(4\) +\(4\) ", row), row
    assert note.startswith("(results in parentheses: the ends are not both Connected"), note
