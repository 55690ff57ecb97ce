"""Every scenario passes for xenoffload's own agents and fails for a mutant with one bug; every
check made in every scenario fails for a mutant with the bug it is there for."""

from __future__ import annotations

import pytest

from xenoffload.conformance.judges import (
    AtomicAnnouncements,
    BoundedWatches,
    Judge,
    KeysBeforeState,
    LegalOwnTransitions,
    NeverWritesState,
    OwnDirectoryOnly,
    QuietWhenIdle,
    ResultAgrees,
    SnapshotInOneTransaction,
    StateOnlyOnChange,
)
from xenoffload.conformance.runner import run_scenario
from xenoffload.conformance.scenarios import CATALOGUE, Scenario, by_id, every_run
from xenoffload.conformance.subjects import AgentSubject
from xenoffload.machine import Mode
from xenoffload.schema import Role

from .conftest import FAST
from .mutants import MUTANT_NAMES, mutant

INSTANCES = [(scenario, role) for scenario in CATALOGUE for role in scenario.roles]
IDS = [f"{role.value}:{scenario.id}" for scenario, role in INSTANCES]

#: The mutant that each scenario must catch (one bug, found by that scenario).
KILLERS = {
    "R1-own-directory-only": "outside-dir",
    "R2-garbage-own-key-safe": "lenient-values",
    "R2-garbage-legacy-key-safe": "lenient-values",
    "R2-companion-hostile-frontend": "lenient-values",
    "R3-withdrawn-key": "frozen-after-connect",
    "R4-legacy-peer": "no-legacy-read",
    "R4-legacy-keys-consistent": "no-legacy-write",
    "R5-peer-refuses-blank": "blank-always",
    "R5-negotiates-offload": "checksums-always",
    "R7-default-computes": "blank-always",
    "R9-keys-before-state": "state-before-features",
    "R11-snapshot-transaction": "reads-outside-transaction",
    "R11-level-triggered": "reapplies-every-event",
    "R12-renegotiate-from-scratch": "frozen-after-connect",
    "R12-flip-while-connected": "frozen-after-connect",
    "R2-lenient-values-after-connect": "lenient-values",
    "R12-own-policy-change": "ignores-policy-change",
    "R12-close-mid-negotiation": "ignores-peer-closing",
    "R13-garbage-state": "lenient-state",
    "R13-skipped-states": "trusts-skipped-states",
    "R13-legal-own-transitions": "walk-end-only",
    "R14-device-removed": "resurrects-removed",
    "R10-companion-stock-linux": "companion-writes-state",
}


#: Each check made in every scenario: the mutant that fails it and a scenario in which that
#: check (not the scenario's own) is what fails.
EVERY_RUN_KILLERS: dict[type[Judge], tuple[str, str]] = {
    OwnDirectoryOnly: ("outside-dir", "R5-negotiates-offload"),
    AtomicAnnouncements: ("legacy-outside-transaction", "R5-negotiates-offload"),
    SnapshotInOneTransaction: ("reads-state-alone", "R5-negotiates-offload"),
    BoundedWatches: ("rearms-watches", "R5-negotiates-offload"),
    QuietWhenIdle: ("polls", "R5-negotiates-offload"),
    ResultAgrees: ("publishes-wrong-result", "R5-peer-refuses-blank"),
    StateOnlyOnChange: ("rewrites-state-on-apply", "R3-withdrawn-key"),
    KeysBeforeState: ("state-before-features", "R5-negotiates-offload"),
    LegalOwnTransitions: ("walk-end-only", "R1-own-directory-only"),
    NeverWritesState: ("companion-writes-state", "R2-companion-hostile-frontend"),
}
#: Our agents' known bugs, each found by a scenario (strict: the test fails once fixed).
KNOWN_BUGS: dict[tuple[str, Role], str] = {}


def test_every_scenario_has_a_mutant_that_it_catches() -> None:
    assert set(KILLERS) == {scenario.id for scenario in CATALOGUE}
    assert set(KILLERS.values()) <= set(MUTANT_NAMES)


def test_scenario_ids_are_unique_and_start_with_their_rule() -> None:
    ids = [scenario.id for scenario in CATALOGUE]
    assert len(ids) == len(set(ids))
    for scenario in CATALOGUE:
        assert scenario.id.startswith(scenario.rule + "-")


def _instances() -> list[object]:
    return [pytest.param(scenario, role, id=f"{role.value}:{scenario.id}",
                         marks=[pytest.mark.xfail(reason=KNOWN_BUGS[(scenario.id, role)],
                                                  strict=True)]
                         if (scenario.id, role) in KNOWN_BUGS else [])
            for scenario, role in INSTANCES]


@pytest.mark.parametrize(("scenario", "role"), _instances())
def test_our_agent_passes(scenario: Scenario, role: Role) -> None:
    verdict = run_scenario(scenario, role, AgentSubject(), FAST)
    assert verdict.outcome == "pass", verdict.explain()
    assert verdict.evidence == "xenstore+device"
    assert not verdict.unchecked, verdict.unchecked


#: Where the mutant's bug cannot show as a violation because the store refuses it, and the
#: mutant, which does not expect the refusal, exits: (scenario, role) -> what it exits on.
EXITS_INSTEAD = {
    # libxl's ownership: a guest cannot create nodes in its removed device directory.
    ("R14-device-removed", Role.FRONTEND): "EACCES",
}


@pytest.mark.parametrize(("scenario", "role"), INSTANCES, ids=IDS)
def test_its_mutant_fails(scenario: Scenario, role: Role) -> None:
    with mutant(KILLERS[scenario.id]) as subject:
        verdict = run_scenario(scenario, role, subject, FAST)
    if (scenario.id, role) in EXITS_INSTEAD:
        assert verdict.outcome == "error", verdict.explain()
        assert EXITS_INSTEAD[(scenario.id, role)] in verdict.observed, verdict.explain()
        return
    assert verdict.outcome == "fail", verdict.explain()
    assert verdict.rule == scenario.rule and verdict.expected and verdict.observed


def test_every_check_made_in_every_run_has_a_mutant() -> None:
    made = {type(judge) for mode in Mode for judge in every_run(mode)}
    assert made == set(EVERY_RUN_KILLERS)
    assert {name for name, _ in EVERY_RUN_KILLERS.values()} <= set(MUTANT_NAMES)


@pytest.mark.parametrize("judge", list(EVERY_RUN_KILLERS), ids=lambda judge: judge.__name__)
def test_each_check_made_in_every_run_fails_its_mutant(judge: type[Judge]) -> None:
    name, scenario_id = EVERY_RUN_KILLERS[judge]
    scenario = by_id(scenario_id)
    role = scenario.roles[0]
    with mutant(name) as subject:
        verdict = run_scenario(scenario, role, subject, FAST)
    assert verdict.outcome == "fail", verdict.explain()
    assert verdict.rule == judge.RULE, verdict.explain()
    assert verdict.expected == judge().expectation(role), verdict.explain()


def test_a_result_not_published_is_reported_as_not_checked_and_can_be_required() -> None:
    scenario = by_id("R5-negotiates-offload")
    with mutant("publishes-no-result") as subject:
        lenient = run_scenario(scenario, Role.FRONTEND, subject, FAST)
        strict = run_scenario(scenario, Role.FRONTEND, subject, FAST, require_observable=True)
    assert lenient.outcome == "pass", lenient.explain()
    assert lenient.unchecked and "no xenoffload-csum-result" in lenient.unchecked[0]
    assert strict.outcome == "fail" and strict.rule == "R6", strict.explain()
    assert "could not be checked" in strict.observed
