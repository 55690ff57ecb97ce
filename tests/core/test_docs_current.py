"""docs/protocol.md's generated tables match the code."""

from __future__ import annotations

from pathlib import Path

from xenoffload.doctables import generated_section

ROOT = Path(__file__).resolve().parents[2]


def test_protocol_doc_tables_are_generated_from_the_current_code() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    assert generated_section() in text, (
        "run: python -m xenoffload.doctables --write docs/protocol.md")
