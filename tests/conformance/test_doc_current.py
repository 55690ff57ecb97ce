"""docs/conformance.md's scenario catalogue is generated from the current code."""

from __future__ import annotations

from pathlib import Path

from xenoffload.conformance.doc import catalogue_section
from xenoffload.conformance.scenarios import CATALOGUE

ROOT = Path(__file__).resolve().parents[2]


def test_conformance_doc_catalogue_is_generated_from_the_current_code() -> None:
    text = (ROOT / "docs" / "conformance.md").read_text()
    assert catalogue_section() in text, (
        "run: python -m xenoffload.conformance.doc --write docs/conformance.md")


def test_every_scenario_and_its_steps_are_in_the_catalogue() -> None:
    section = catalogue_section()
    for scenario in CATALOGUE:
        assert f"### {scenario.id}" in section
        for role in scenario.roles:
            steps, judges = scenario.build(role)
            assert all(step.describe() in section for step in steps)
            assert all(judge.expectation(role) in section for judge in judges)
