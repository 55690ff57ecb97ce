"""Running scenarios: one lab per run, the peer's script, the judges, a verdict; and the
suite's report as a table and as JUnit XML.

A :class:`Verdict` names the scenario, the role, the rule, the outcome (``pass``, ``fail``,
``skip`` or ``error``), what was expected and what was observed, the step during which the
offending request was made, and what could not be checked.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from xenoffload.conformance.judges import Finding, Mark, Observation
from xenoffload.conformance.lab import DEVID, GUEST_DOMID, Lab, LabTimeout, Timing
from xenoffload.conformance.peer import PeerContext, perform
from xenoffload.conformance.scenarios import CATALOGUE, IutPolicy, Scenario, every_run
from xenoffload.conformance.subjects import CommandSubject, Running, Setup, Subject
from xenoffload.devicelog import read_device_log
from xenoffload.machine import Mode
from xenoffload.schema import RESULT_KEY, Role
from xenoffload.toggles.base import ToggleError

__all__ = ["ERROR", "FAIL", "PASS", "SKIP", "SelectionError", "Verdict", "format_table",
           "run_scenario", "run_suite", "selected", "write_junit"]

PASS, FAIL, SKIP, ERROR = "pass", "fail", "skip", "error"


@attrs.frozen
class Verdict:
    """The outcome of one scenario for one role: ``pass``, ``fail`` (a rule violated),
    ``skip`` (the scenario cannot be run against this subject) or ``error`` (the
    implementation exited: nothing was judged). ``rule`` is the rule whose check failed
    (the scenario's own unless a check made in every scenario failed); ``unchecked`` lists
    what could not be checked because the implementation does not show it."""

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
    unchecked: tuple[str, ...] = ()
    workdir: str | None = None

    @property
    def name(self) -> str:
        return f"{self.role.value}:{self.scenario}"

    @property
    def passed(self) -> bool:
        return self.outcome in (PASS, SKIP)

    def explain(self) -> str:
        """Return the verdict as a few lines (rule, expected, observed, step)."""
        lines = [f"{self.name} [{self.rule}] {self.outcome.upper()}: {self.title}",
                 f"  expected: {self.expected}", f"  observed: {self.observed}"]
        if self.step:
            lines.append(f"  at: {self.step}")
        lines.extend(f"  not checked: {what}" for what in self.unchecked)
        if self.workdir:
            lines.append(f"  lab kept in: {self.workdir}")
        if self.output and self.outcome in (FAIL, ERROR):
            lines.append("  implementation output (tail):")
            lines.extend(f"    {line}" for line in self.output.splitlines())
        return "\n".join(lines)


def _final_device(running: Running) -> tuple[dict[str, bool] | None, int | None]:
    toggles, device = running.toggles, running.device
    if toggles is None or device is None:
        return None, None
    try:
        features = {name: state.active for name, state in toggles.read(device).items()}
    except ToggleError:
        features = {}
    return features, len(toggles.applies)


def _evidence(running: Running, observation: Observation) -> str:
    if running.toggles is not None:
        return "xenstore+device"
    if running.device_log is not None:
        return "xenstore+device-log"
    published = any(f"{observation.own_dir}/{RESULT_KEY}" in point.dump
                    for point in observation.quiet_points)
    return "xenstore+result" if published else "xenstore"


def _skip_reason(scenario: Scenario, subject: Subject) -> str | None:
    if not isinstance(subject, CommandSubject) or subject.takes_policy:
        return None
    if scenario.changes_policy:
        return "the command has no {config}: its policy cannot be changed"
    if scenario.policy is not IutPolicy.ALLOW_ALL:
        return "the command has no {config}: its policy cannot be set"
    return None


def run_scenario(scenario: Scenario, role: Role, subject: Subject,
                 timing: Timing | None = None, require_observable: bool = False,
                 keep_workdir: bool = False) -> Verdict:
    """Run ``scenario`` for an IUT of ``role`` started from ``subject``; return the verdict.

    The IUT is stopped before judging. The verdict is the first failed check of the
    scenario, else the first violation a check made in every run located in the IUT's
    requests; an end-state check counts only when the script ran to its end. Else an IUT
    that exited gets an ``error`` verdict naming its exit status and output, and a step that
    could not complete (a timeout) fails the run. With ``require_observable`` a
    check that could not be made (no published result, no device log) is a failure; with
    ``keep_workdir`` the lab's directory (request log, policy file, the IUT's output and
    device log) is kept and named in the verdict."""
    started = time.monotonic()
    steps, own_judges = scenario.build(role)
    every_run_judges = every_run(scenario.mode)
    skip = _skip_reason(scenario, subject)
    if skip is not None:
        return Verdict(scenario.id, role, scenario.rule, scenario.title, SKIP,
                       f"the IUT runs with a policy that {scenario.policy.value}", skip)
    with Lab(role, scenario.mode, timing, keep=keep_workdir) as lab:
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
                ctx.step = len(steps)
                try:
                    ctx.settle()
                except LabTimeout as error:
                    failure = (len(steps), str(error))
        finally:
            gone = running.gone()
            output = running.stop()
        device, applies = _final_device(running)
        lines, problems = read_device_log(running.device_log) \
            if running.device_log is not None else ([], [])
        observation = Observation(
            role, scenario.mode, lab.own_dir, lab.peer_dir, tuple(lab.iut_ops()), tuple(marks),
            lab.dump(), device, applies, tuple(lab.harness_ops()), tuple(ctx.quiet_points),
            tuple(lines) if running.device_log is not None else None, tuple(problems))
    workdir = str(lab.workdir) if keep_workdir else None
    evidence = _evidence(running, observation)
    seconds = time.monotonic() - started

    def verdict(outcome: str, finding: Finding, rule: str | None = None,
                unchecked: tuple[str, ...] = ()) -> Verdict:
        return Verdict(scenario.id, role, rule or finding.rule or scenario.rule,
                       scenario.title, outcome, finding.expected, finding.observed,
                       finding.step, evidence, seconds, output, unchecked, workdir)

    findings = [judge.judge(observation) for judge in (*own_judges, *every_run_judges)]
    own, general = findings[:len(own_judges)], findings[len(own_judges):]
    # The scenario's own checks first, then the checks of every run that located a violation
    # in the request log; a check of the end state counts only when the script ran to its end
    # (an exit or a step that could not complete explains it otherwise).
    completed = failure is None and gone is None
    ranked = [*((True, f) for f in own), *((False, f) for f in general)]
    first = next((finding for is_own, finding in ranked if not finding.passed and (
        finding.step is not None or (completed and is_own))), None)
    if first is not None:
        observed = first.observed if gone is None else \
            f"{first.observed}; then the implementation {gone}"
        return verdict(FAIL, attrs.evolve(first, observed=observed))
    if gone is not None:
        return verdict(ERROR, Finding(False, "the implementation keeps running until stopped",
                                      f"the implementation {gone}"), "-")
    failed = next((finding for finding in general if not finding.passed), None)
    if failed is not None and failure is None:
        return verdict(FAIL, failed)
    unchecked = tuple(what for finding in findings for what in finding.unchecked)
    if unchecked and require_observable:
        first = next(finding for finding in findings if finding.unchecked)
        return verdict(FAIL, Finding(False, first.expected, "could not be checked: "
                                     + "; ".join(unchecked), None, first.rule), None,
                       unchecked)
    if failure is not None:
        index, message = failure
        what = steps[index].describe() if index < len(steps) else \
            "the implementation settles after the last step"
        return verdict(FAIL, Finding(False, f"step {index + 1} completes: {what}", message,
                                     f"step {index + 1}"), None, unchecked)
    return verdict(PASS, Finding(True, "; ".join(f.expected for f in findings),
                                 "; ".join(f.observed for f in findings)), None, unchecked)


class SelectionError(ValueError):
    """A scenario selection names an unknown scenario or matches none."""


def selected(role: Role, modes: Iterable[Mode] = (Mode.FULL, Mode.COMPANION),
             ids: Sequence[str] = ()) -> list[Scenario]:
    """Return the catalogue's scenarios for ``role`` in ``modes`` (and with ``ids`` when
    given). Raises SelectionError for an unknown id or a selection that matches nothing."""
    known = {scenario.id for scenario in CATALOGUE}
    unknown = [scenario_id for scenario_id in ids if scenario_id not in known]
    if unknown:
        valid = ", ".join(sorted({scenario.id for scenario in CATALOGUE
                                  if role in scenario.roles}))
        raise SelectionError(f"unknown scenario {', '.join(repr(u[:60]) for u in unknown)}; "
                             f"the {role.value} scenarios are: {valid}")
    wanted_modes = set(modes)
    chosen = [scenario for scenario in CATALOGUE
              if role in scenario.roles and scenario.mode in wanted_modes
              and (not ids or scenario.id in ids)]
    if not chosen:
        modes_text = " or ".join(sorted(mode.value for mode in wanted_modes))
        raise SelectionError(f"no scenario for a {role.value} in {modes_text} mode"
                             + (f" among {', '.join(ids)}" if ids else ""))
    return chosen


def run_suite(role: Role, subject: Subject, scenarios: Sequence[Scenario],
              timing: Timing | None = None, require_observable: bool = False,
              keep_workdir: bool = False) -> list[Verdict]:
    """Run each scenario for ``role``; return the verdicts in catalogue order."""
    return [run_scenario(scenario, role, subject, timing, require_observable, keep_workdir)
            for scenario in scenarios]


def format_table(verdicts: Sequence[Verdict]) -> str:
    """Return a pass/fail table, then the explanation of every failure and error, then what
    could not be checked."""
    width = max((len(v.name) for v in verdicts), default=10)
    lines = [f"{'scenario':<{width}}  {'rule':<4}  {'result':<6}  {'secs':>5}  evidence",
             "-" * (width + 36)]
    for v in verdicts:
        note = f" ({len(v.unchecked)} not checked)" if v.unchecked else ""
        lines.append(f"{v.name:<{width}}  {v.rule:<4}  {v.outcome.upper():<6}  "
                     f"{v.seconds:5.2f}  {v.evidence}{note}")
    count = {outcome: sum(1 for v in verdicts if v.outcome == outcome)
             for outcome in (PASS, FAIL, ERROR, SKIP)}
    lines.append(f"{count[PASS]} passed, {count[FAIL]} failed, {count[ERROR]} errors, "
                 f"{count[SKIP]} skipped")
    for v in verdicts:
        if v.outcome in (FAIL, ERROR):
            lines += ["", v.explain()]
    kept = [v for v in verdicts if v.workdir and v.outcome not in (FAIL, ERROR)]
    if kept:
        lines += ["", "Lab directories kept:"]
        lines.extend(f"  {v.name}: {v.workdir}" for v in kept)
    unchecked = [v for v in verdicts if v.unchecked and v.outcome == PASS]
    if unchecked:
        lines += ["", "Passed, but not everything could be checked (publish "
                  f"{RESULT_KEY} or take {{device-log}}; --require-observable makes this a "
                  "failure):"]
        for v in unchecked:
            lines.extend(f"  {v.name}: {what}" for what in v.unchecked)
    return "\n".join(lines)


def write_junit(verdicts: Sequence[Verdict], path: Path, suite_name: str) -> None:
    """Write the verdicts as a JUnit XML report (one testcase per scenario and role)."""
    count = {outcome: sum(1 for v in verdicts if v.outcome == outcome)
             for outcome in (FAIL, ERROR, SKIP)}
    suite = ET.Element("testsuite", name=suite_name, tests=str(len(verdicts)),
                       failures=str(count[FAIL]), skipped=str(count[SKIP]),
                       errors=str(count[ERROR]),
                       time=f"{sum(v.seconds for v in verdicts):.3f}")
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", classname=f"conformance.{v.role.value}",
                             name=v.scenario, time=f"{v.seconds:.3f}")
        ET.SubElement(case, "properties").extend([
            ET.Element("property", name="rule", value=v.rule),
            ET.Element("property", name="evidence", value=v.evidence),
            *(ET.Element("property", name="not-checked", value=what) for what in v.unchecked)])
        if v.outcome in (FAIL, ERROR):
            element = ET.SubElement(case, "failure" if v.outcome == FAIL else "error",
                                    message=f"[{v.rule}] expected {v.expected}; observed "
                                            f"{v.observed}")
            element.text = v.explain()
        elif v.outcome == SKIP:
            ET.SubElement(case, "skipped", message=v.observed)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
