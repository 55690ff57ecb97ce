"""Running scenarios: one lab per run, the peer's script, the judges, a verdict; and the
suite's report as a table and as JUnit XML.

A :class:`Verdict` names the scenario, the role, the rule, the outcome (``pass``, ``fail`` or
``skip``), what was expected and what was observed, and the step during which the offending
request was made.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from xenoffload.conformance.judges import Finding, Mark, Observation
from xenoffload.conformance.lab import DEVID, GUEST_DOMID, Lab, Timing
from xenoffload.conformance.peer import PeerContext, perform
from xenoffload.conformance.scenarios import CATALOGUE, IutPolicy, Scenario
from xenoffload.conformance.subjects import CommandSubject, Setup, Subject
from xenoffload.machine import Mode
from xenoffload.schema import Role
from xenoffload.toggles.base import ToggleError

__all__ = ["Verdict", "format_table", "run_scenario", "run_suite", "selected", "write_junit"]

PASS, FAIL, SKIP = "pass", "fail", "skip"


@attrs.frozen
class Verdict:
    """The outcome of one scenario for one role."""

    scenario: str
    role: Role
    rule: str
    title: str
    outcome: str
    expected: str
    observed: str
    step: str | None = None
    evidence: str = "xenstore"
    seconds: float = 0.0
    output: str = ""

    @property
    def name(self) -> str:
        return f"{self.role.value}:{self.scenario}"

    @property
    def passed(self) -> bool:
        return self.outcome != FAIL

    def explain(self) -> str:
        """Return the verdict as a few lines (rule, expected, observed, step)."""
        lines = [f"{self.name} [{self.rule}] {self.outcome.upper()}: {self.title}",
                 f"  expected: {self.expected}", f"  observed: {self.observed}"]
        if self.step:
            lines.append(f"  at: {self.step}")
        if self.output and self.outcome == FAIL:
            lines.append("  implementation output (tail):")
            lines.extend(f"    {line}" for line in self.output.splitlines())
        return "\n".join(lines)


def _final_device(running: object) -> tuple[dict[str, bool] | None, int | None]:
    toggles = getattr(running, "toggles", None)
    device = getattr(running, "device", None)
    if toggles is None or device is None:
        return None, None
    try:
        features = {name: state.active for name, state in toggles.read(device).items()}
    except ToggleError:
        features = {}
    return features, len(toggles.applies)


def run_scenario(scenario: Scenario, role: Role, subject: Subject,
                 timing: Timing | None = None) -> Verdict:
    """Run ``scenario`` for an IUT of ``role`` started from ``subject``; return the verdict.

    The IUT is stopped before judging. A step that cannot complete (a timeout, the IUT gone)
    fails the run unless a judge names a more precise violation."""
    started = time.monotonic()
    steps, judges = scenario.build(role)
    if isinstance(subject, CommandSubject) and not subject.takes_policy and \
            scenario.policy is not IutPolicy.ALLOW_ALL:
        return Verdict(scenario.id, role, scenario.rule, scenario.title, SKIP,
                       f"the IUT runs with a policy that {scenario.policy.value}",
                       "the command has no {config}: its policy cannot be set")
    with Lab(role, scenario.mode, timing) as lab:
        lab.layout()
        setup = Setup(role, scenario.mode, lab.iut_socket, scenario.policy.link_policy(role),
                      lab.workdir, GUEST_DOMID, DEVID)
        running = subject.start(setup)
        ctx = PeerContext(lab, running)
        marks: list[Mark] = []

        def mark(index: int) -> None:
            toggles = running.toggles
            marks.append(Mark(index, steps[index].describe(), lab.position(),
                              len(toggles.applies) if toggles is not None else None))

        try:
            failure = perform(ctx, steps, mark)
            if failure is None:
                lab.settle(running.gone)
        finally:
            gone = running.gone()
            output = running.stop()
        device, applies = _final_device(running)
        observation = Observation(role, scenario.mode, lab.own_dir, lab.peer_dir,
                                  tuple(lab.iut_ops()), tuple(marks), lab.dump(), device,
                                  applies)
    findings = [judge.judge(observation) for judge in judges]
    evidence = "xenstore+device" if device is not None else "xenstore"
    seconds = time.monotonic() - started

    def verdict(outcome: str, finding: Finding) -> Verdict:
        return Verdict(scenario.id, role, scenario.rule, scenario.title, outcome,
                       finding.expected, finding.observed, finding.step, evidence, seconds,
                       output)

    for finding in findings:
        if not finding.passed:
            return verdict(FAIL, finding)
    if failure is not None:
        index, message = failure
        return verdict(FAIL, Finding(False, f"step {index + 1} completes: "
                                     f"{steps[index].describe()}", message,
                                     f"step {index + 1}"))
    if gone is not None:
        return verdict(FAIL, Finding(False, "keeps running", gone))
    return verdict(PASS, Finding(True, "; ".join(f.expected for f in findings),
                                 "; ".join(f.observed for f in findings)))


def selected(role: Role, modes: Iterable[Mode] = (Mode.FULL, Mode.COMPANION),
             ids: Sequence[str] = ()) -> list[Scenario]:
    """Return the catalogue's scenarios for ``role`` in ``modes`` (and with ``ids`` when
    given; an unknown id is a KeyError)."""
    known = {scenario.id for scenario in CATALOGUE}
    unknown = [scenario_id for scenario_id in ids if scenario_id not in known]
    if unknown:
        raise KeyError(", ".join(unknown))
    wanted_modes = set(modes)
    return [scenario for scenario in CATALOGUE
            if role in scenario.roles and scenario.mode in wanted_modes
            and (not ids or scenario.id in ids)]


def run_suite(role: Role, subject: Subject, scenarios: Sequence[Scenario],
              timing: Timing | None = None) -> list[Verdict]:
    """Run each scenario for ``role``; return the verdicts in catalogue order."""
    return [run_scenario(scenario, role, subject, timing) for scenario in scenarios]


def format_table(verdicts: Sequence[Verdict]) -> str:
    """Return a pass/fail table, then the explanation of every failure."""
    width = max((len(v.name) for v in verdicts), default=10)
    lines = [f"{'scenario':<{width}}  {'rule':<4}  {'result':<6}  {'secs':>5}  evidence",
             "-" * (width + 36)]
    for v in verdicts:
        lines.append(f"{v.name:<{width}}  {v.rule:<4}  {v.outcome.upper():<6}  "
                     f"{v.seconds:5.2f}  {v.evidence}")
    failed = [v for v in verdicts if v.outcome == FAIL]
    passed = sum(1 for v in verdicts if v.outcome == PASS)
    skipped = sum(1 for v in verdicts if v.outcome == SKIP)
    lines.append(f"{passed} passed, {len(failed)} failed, {skipped} skipped")
    for v in failed:
        lines += ["", v.explain()]
    return "\n".join(lines)


def write_junit(verdicts: Sequence[Verdict], path: Path, suite_name: str) -> None:
    """Write the verdicts as a JUnit XML report (one testcase per scenario and role)."""
    failures = sum(1 for v in verdicts if v.outcome == FAIL)
    skipped = sum(1 for v in verdicts if v.outcome == SKIP)
    suite = ET.Element("testsuite", name=suite_name, tests=str(len(verdicts)),
                       failures=str(failures), skipped=str(skipped), errors="0",
                       time=f"{sum(v.seconds for v in verdicts):.3f}")
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", classname=f"conformance.{v.role.value}",
                             name=v.scenario, time=f"{v.seconds:.3f}")
        ET.SubElement(case, "properties").extend([
            ET.Element("property", name="rule", value=v.rule),
            ET.Element("property", name="evidence", value=v.evidence)])
        if v.outcome == FAIL:
            failure = ET.SubElement(case, "failure",
                                    message=f"[{v.rule}] expected {v.expected}; observed "
                                            f"{v.observed}")
            failure.text = v.explain()
        elif v.outcome == SKIP:
            ET.SubElement(case, "skipped", message=v.observed)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
