"""The suite against an implementation written as a third party would (tests/conformance/iuts/
xsimpl.py: no xenoffload, no pyxs, the XenStore wire protocol by hand): the correct one passes
every scenario in both roles and modes; each bug an independent review found the suite
missing fails, with a verdict naming the rule and what was observed; a slow implementation is
judged after it reacted.

``XENOFFLOAD_CONFORMANCE_REPEAT=N`` runs the correct implementation's catalogue N times (CI:
once).
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

from xenoffload.conformance.command import command_timing
from xenoffload.conformance.lab import Timing
from xenoffload.conformance.runner import Verdict, run_scenario, run_suite, selected
from xenoffload.conformance.scenarios import by_id
from xenoffload.conformance.subjects import CommandSubject
from xenoffload.schema import Role

XSIMPL = Path(__file__).with_name("iuts") / "xsimpl.py"
TIMING = command_timing(10.0)
REPEAT = int(os.environ.get("XENOFFLOAD_CONFORMANCE_REPEAT", "1"))
ROLES = [Role.BACKEND, Role.FRONTEND]


def command(role: Role, *options: str, config: bool = True, device_log: bool = True) -> str:
    parts = [sys.executable, str(XSIMPL), "--role", role.value, "--mode", "{mode}", *options]
    parts += ["--config", "{config}"] if config else []
    parts += ["--device-log", "{device-log}"] if device_log else []
    return " ".join(parts)


def run(role: Role, scenario_id: str, impl: str, timing: Timing = TIMING,
        require_observable: bool = False) -> Verdict:
    return run_scenario(by_id(scenario_id), role, CommandSubject(impl), timing,
                        require_observable)


def test_the_third_party_implementation_imports_only_the_standard_library() -> None:
    tree = ast.parse(XSIMPL.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(REPEAT), ids=lambda n: f"round{n + 1}")
@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.value)
def test_the_correct_implementation_passes_every_scenario(role: Role, round_: int) -> None:
    verdicts = run_suite(role, CommandSubject(command(role)), selected(role), TIMING)
    failed = [v.explain() for v in verdicts if v.outcome != "pass"]
    assert not failed, "\n\n".join(failed)
    assert {v.evidence for v in verdicts} == {"xenstore+device-log"}
    assert all(not v.unchecked for v in verdicts)


#: bug -> (scenario that catches it, the rule its verdict names, a piece of what it observed).
#: Each one passes the scenarios that ran before this suite judged the device log, the
#: published result and every rule the request log shows.
CAUGHT = {
    "lenient": ("R2-lenient-values-after-connect", "R2", "device log: to-guest=ipv4+ipv6"),
    "no-reapply": ("R12-flip-while-connected", "R12", "device log: to-guest=ipv4+ipv6"),
    "snapshot-alone": ("R5-negotiates-offload", "R11", "state outside any transaction"),
    "write-per-key": ("R5-negotiates-offload", "R8", "own keys incomplete"),
    "legacy-second-txn": ("R5-negotiates-offload", "R8", "feature-ipv6-csum-offload=absent"),
    "rewrite-state": ("R12-flip-while-connected", "R12", "wrote state Connected(4)"),
    "poll": ("R5-negotiates-offload", "R11", "never quiet"),
    "rearm-watches": ("R5-negotiates-offload", "R11", "watch"),
    "blank-always": ("R5-peer-refuses-blank", "R5", "device log: to-guest=ipv4+ipv6"),
}


@pytest.mark.parametrize("bug", list(CAUGHT))
@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.value)
def test_each_bug_fails_with_a_verdict_naming_the_rule(role: Role, bug: str) -> None:
    scenario_id, rule, observed = CAUGHT[bug]
    # blank-always is the 2006 bug run the way that hid it: without {config}.
    impl = command(role, "--bug", bug, config=bug != "blank-always")
    verdict = run(role, scenario_id, impl)
    assert verdict.outcome == "fail", verdict.explain()
    assert verdict.rule == rule, verdict.explain()
    assert observed in verdict.observed, verdict.explain()


def test_decisions_seen_only_in_the_published_result_still_catch_a_bug() -> None:
    verdict = run(Role.FRONTEND, "R2-lenient-values-after-connect",
                  command(Role.FRONTEND, "--bug", "lenient", device_log=False))
    assert verdict.outcome == "fail" and verdict.rule == "R2", verdict.explain()
    assert "xenoffload-csum-result=to-guest=ipv4+ipv6" in verdict.observed
    assert verdict.evidence == "xenstore+result"


def test_invisible_decisions_are_reported_as_not_checked_and_can_be_required() -> None:
    impl = command(Role.BACKEND, "--bug", "lenient", "--no-result", device_log=False)
    hidden = run(Role.BACKEND, "R2-lenient-values-after-connect", impl)
    assert hidden.outcome == "pass", hidden.explain()
    assert hidden.evidence == "xenstore"
    assert any("no device log and no xenoffload-csum-result" in what
               for what in hidden.unchecked), hidden.unchecked
    required = run(Role.BACKEND, "R2-lenient-values-after-connect", impl,
                   require_observable=True)
    assert required.outcome == "fail" and "could not be checked" in required.observed


SLOW = ("--react-delay", "0.6")  # longer than the quiet period (0.3 s), shorter than the grace


def test_a_slow_correct_implementation_is_judged_after_it_reacted() -> None:
    verdict = run(Role.BACKEND, "R12-flip-while-connected", command(Role.BACKEND, *SLOW))
    assert verdict.outcome == "pass", verdict.explain()


def test_a_slow_implementation_that_rewrites_state_is_caught() -> None:
    impl = command(Role.BACKEND, *SLOW, "--bug", "rewrite-state")
    verdict = run(Role.BACKEND, "R12-flip-while-connected", impl)
    assert verdict.outcome == "fail" and verdict.rule == "R12", verdict.explain()
    assert "wrote state Connected(4)" in verdict.observed


def test_without_waiting_for_a_reaction_the_slow_implementation_is_judged_too_early() -> None:
    # The settle before this suite judged as soon as the implementation's last request was
    # older than the quiet period: grace 0 is that settle. The slow implementation still held
    # the pre-flip result when judged: a correct one is failed, a broken one could pass.
    early = run(Role.BACKEND, "R12-flip-while-connected", command(Role.BACKEND, *SLOW),
                timing=Timing(timeout=10.0, quiet=0.3, grace=0.0, poll=0.01))
    assert early.outcome == "fail", early.explain()
    assert "device log: to-guest=ipv4+ipv6" in early.observed
