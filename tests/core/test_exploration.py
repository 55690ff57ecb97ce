"""The protocol over every interleaving within a bound: tests/core/explore.py explores both
ends of one vif (real endpoints and machines) on an abstract XenStore with C xenstored's
transaction rule, with watch events delayed and batched, races between an end's reads and its
commit, policy changes at either end and the vif removed and re-created; every state is
checked against the invariants of docs/protocol.md ("Convergence", "Races").

CI explores the bound below (about 20 s on 2 cores); ``tox -e soak`` sets
XENOFFLOAD_EXPLORE_POLICY_CHANGES / _REMOVALS higher. The two other tests put back, through
monkeypatch, a defect the exploration must find: it tells each race from its fix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import SUMMARY

from xenoffload import endpoint

from . import explore as model

POLICY_CHANGES = int(os.environ.get("XENOFFLOAD_EXPLORE_POLICY_CHANGES", "2"))
REMOVALS = int(os.environ.get("XENOFFLOAD_EXPLORE_REMOVALS", "1"))


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    logging.disable(logging.CRITICAL)  # the refusals and retries are expected, by the million
    yield
    logging.disable(logging.NOTSET)


def test_every_interleaving_within_the_bound_keeps_the_invariants(
        record_property: Callable[[str, object], None]) -> None:
    report = model.explore(policy_changes=POLICY_CHANGES, removals=REMOVALS)
    record_property(SUMMARY,
                    f"exploration: {POLICY_CHANGES} policy changes, {REMOVALS} removal(s): "
                    f"{report.states} states, {report.transitions} transitions "
                    f"({report.races} with a race between reads and commit), "
                    f"{report.quiescent} quiescent, deepest path {report.depth}, "
                    f"{report.seconds:.1f} s")
    if (POLICY_CHANGES, REMOVALS) == (2, 1):  # the search reaches what it reached when written
        assert report.states >= 16_000 and report.races >= 30_000, report


def test_it_finds_a_device_left_behind_by_a_conflicted_commit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The defect of issue 19: a step that changed the device and then conflicted does not
    tell the machine; the redo decides what the machine believes applied and enforces
    nothing."""
    monkeypatch.setattr(endpoint, "_device_unknown", lambda batch: None)
    with pytest.raises(model.Violation, match="device sends blank checksums"):
        model.explore(policy_changes=2, removals=0)


def test_it_finds_what_the_protocol_owes_to_xenstores_read_conflicts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A XenStore that checked at commit only the nodes a transaction wrote (not those it
    read) would let an end write into the directory the toolstack removed after the end
    read its ``state``: R14."""
    def end_transactions(self: model.AbstractConn, ends: Any) -> list[bool]:
        race = self.xs.race.pop(self.ident, None)
        if race is not None:
            race()
        outcome = []
        for txn, commit in ends:
            stale = any(self.xs.generation(path) != seen
                        for path, seen in txn.accessed.items() if path in txn.writes)
            if commit and not stale:
                self.xs._apply(txn.writes)
            outcome.append(commit and not stale)
        return outcome

    monkeypatch.setattr(model.AbstractConn, "end_transactions", end_transactions)
    with pytest.raises(model.Violation, match="R14"):
        model.explore(policy_changes=1, removals=1)
