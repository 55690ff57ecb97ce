"""The device channel's line format, and the enforcer that writes it."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from xenoffload.devicelog import (
    DeviceLine,
    DeviceLogEnforcer,
    DeviceLogError,
    format_device_line,
    parse_device_line,
    read_device_log,
)
from xenoffload.endpoint import Enforcement
from xenoffload.negotiation import LinkResult
from xenoffload.schema import FamilyFlags, Role

RESULT = LinkResult(FamilyFlags.both(True), FamilyFlags(ipv6=True))


def test_a_line_round_trips_and_matches_the_documented_example() -> None:
    line = DeviceLine(1732650000.123456, Role.BACKEND, 1, 0, RESULT)
    raw = format_device_line(line)
    assert raw == b"1732650000.123456 backend 1/0 to-guest=ipv4+ipv6 from-guest=ipv6\n"
    assert parse_device_line(raw.rstrip(b"\n")) == line
    example = parse_device_line(b"1732650000 frontend 7/2 to-guest=none from-guest=ipv4")
    assert (example.role, example.domid, example.devid) == (Role.FRONTEND, 7, 2)
    assert example.result == LinkResult(FamilyFlags(), FamilyFlags(ipv4=True))


@pytest.mark.parametrize("raw", [
    b"", b"1732650000 backend 1/0", b"1732650000 backend 1/0 to-guest=ipv4 from-guest=all",
    b"1732650000  backend 1/0 to-guest=none from-guest=none",
    b"1732650000 dom0 1/0 to-guest=none from-guest=none",
    b"-5 backend 1/0 to-guest=none from-guest=none",
    b"1732650000 backend 1/0 to-guest=none from-guest=none ",
    b"1732650000 backend 1 to-guest=none from-guest=none",
    b"1732650000 backend 1/0 to-guest=ipv6+ipv4 from-guest=none",
])
def test_anything_but_the_exact_format_is_refused(raw: bytes) -> None:
    with pytest.raises(DeviceLogError):
        parse_device_line(raw)


def test_reading_a_log_skips_the_unfinished_last_line_and_numbers_problems(
        tmp_path: Path) -> None:
    path = tmp_path / "device.log"
    assert read_device_log(path) == ([], [])
    good = format_device_line(DeviceLine(1.0, Role.FRONTEND, 1, 0, RESULT))
    path.write_bytes(good + b"garbage\n" + good + b"1.5 frontend 1/0 to-gu")
    lines, problems = read_device_log(path)
    assert len(lines) == 2 and lines[0].result == RESULT
    assert len(problems) == 1 and problems[0].startswith("line 2:")


@attrs.define
class Fixed:
    enforcement: Enforcement
    seen: list[LinkResult] = attrs.field(factory=list)

    def enforce(self, role: Role, result: LinkResult) -> Enforcement:
        self.seen.append(result)
        return self.enforcement


def test_the_enforcer_logs_each_result_that_reached_the_device(tmp_path: Path) -> None:
    path = tmp_path / "device.log"
    reached = Fixed(Enforcement("ok"))
    logged = DeviceLogEnforcer(reached, path, 3, 1)
    assert logged.enforce(Role.BACKEND, RESULT) == Enforcement("ok")
    assert logged.enforce(Role.BACKEND, LinkResult()).status == "ok"
    unreachable = DeviceLogEnforcer(Fixed(Enforcement("no-device: vif3.1", retry=True)), path,
                                    3, 1)
    assert unreachable.enforce(Role.BACKEND, RESULT).retry
    lines, problems = read_device_log(path)
    assert not problems and reached.seen == [RESULT, LinkResult()]
    assert [(line.role, line.domid, line.devid, line.result) for line in lines] == [
        (Role.BACKEND, 3, 1, RESULT), (Role.BACKEND, 3, 1, LinkResult())]
