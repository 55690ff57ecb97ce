"""Every scenario passes for xenoffload's own agents and fails for a mutant with one bug."""

from __future__ import annotations

import pytest

from xenoffload.conformance.runner import run_scenario
from xenoffload.conformance.scenarios import CATALOGUE, Scenario
from xenoffload.conformance.subjects import AgentSubject
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
    "R12-close-mid-negotiation": "ignores-peer-closing",
    "R13-garbage-state": "lenient-state",
    "R13-skipped-states": "trusts-skipped-states",
    "R13-legal-own-transitions": "walk-end-only",
    "R14-device-removed": "resurrects-removed",
    "R10-companion-stock-linux": "companion-writes-state",
}


def test_every_scenario_has_a_mutant_that_it_catches() -> None:
    assert set(KILLERS) == {scenario.id for scenario in CATALOGUE}
    assert set(KILLERS.values()) <= set(MUTANT_NAMES)


def test_scenario_ids_are_unique_and_start_with_their_rule() -> None:
    ids = [scenario.id for scenario in CATALOGUE]
    assert len(ids) == len(set(ids))
    for scenario in CATALOGUE:
        assert scenario.id.startswith(scenario.rule + "-")


@pytest.mark.parametrize(("scenario", "role"), INSTANCES, ids=IDS)
def test_our_agent_passes(scenario: Scenario, role: Role) -> None:
    verdict = run_scenario(scenario, role, AgentSubject(), FAST)
    assert verdict.outcome == "pass", verdict.explain()
    assert verdict.evidence == "xenstore+device"


@pytest.mark.parametrize(("scenario", "role"), INSTANCES, ids=IDS)
def test_its_mutant_fails(scenario: Scenario, role: Role) -> None:
    with mutant(KILLERS[scenario.id]) as subject:
        verdict = run_scenario(scenario, role, subject, FAST)
    assert verdict.outcome == "fail", verdict.explain()
    assert verdict.rule == scenario.rule and verdict.expected and verdict.observed
