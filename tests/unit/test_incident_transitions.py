"""The incident workflow's rules: which status may follow which, and when a resolution is needed."""

from __future__ import annotations

from typing import Any

import pytest

from security.alerts.incidents import (
    TRANSITIONS,
    BadIncidentChange,
    IncidentError,
    Status,
    TransitionNotAllowed,
    checked,
)


def current(status: str, resolution: str | None = None, assignee: str | None = None) -> dict[str, Any]:
    return {"status": status, "assignee": assignee, "resolution": resolution}


class TestForwardMoves:
    @pytest.mark.parametrize(
        "before, after",
        [
            ("new", "acknowledged"),
            ("new", "in_progress"),  # steps may be skipped
            ("acknowledged", "in_progress"),
        ],
    )
    def test_allowed(self, before: str, after: str) -> None:
        assert checked(current(before), {"status": after}) == {"status": after}

    @pytest.mark.parametrize("before", ["acknowledged", "in_progress", "resolved", "false_positive"])
    def test_never_back_to_new(self, before: str) -> None:
        resolution = "why" if before in ("resolved", "false_positive") else None
        with pytest.raises(TransitionNotAllowed, match=f"from {before} to new"):
            checked(current(before, resolution), {"status": "new"})

    def test_not_backwards(self) -> None:
        with pytest.raises(TransitionNotAllowed, match="allowed: false_positive, resolved"):
            checked(current("in_progress"), {"status": "acknowledged"})


class TestClosing:
    @pytest.mark.parametrize("closed", ["resolved", "false_positive"])
    def test_needs_a_resolution(self, closed: str) -> None:
        with pytest.raises(BadIncidentChange, match="needs a resolution"):
            checked(current("in_progress"), {"status": closed})
        assert checked(current("new"), {"status": closed, "resolution": "scanner"}) == {
            "status": closed,
            "resolution": "scanner",
        }

    def test_a_resolution_only_goes_with_a_closed_status(self) -> None:
        with pytest.raises(BadIncidentChange, match="goes with the status"):
            checked(current("new"), {"resolution": "nothing"})

    def test_the_resolution_of_a_closed_incident_can_be_edited(self) -> None:
        assert checked(current("resolved", "old"), {"resolution": "new"}) == {"resolution": "new"}


class TestReopening:
    def test_reopening_clears_the_resolution(self) -> None:
        changed = checked(current("resolved", "fixed", "sofia"), {"status": "in_progress"})
        assert changed == {"status": "in_progress", "resolution": None}

    @pytest.mark.parametrize("closed", ["resolved", "false_positive"])
    def test_only_to_in_progress(self, closed: str) -> None:
        with pytest.raises(TransitionNotAllowed):
            checked(current(closed, "why"), {"status": "acknowledged"})


def test_unchanged_fields_are_not_changes() -> None:
    assert checked(current("new", assignee="sofia"), {"assignee": "sofia", "status": "new"}) == {}


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(IncidentError, match="cannot change severity"):
        checked(current("new"), {"severity": "low"})


def test_every_status_has_its_transitions() -> None:
    assert set(TRANSITIONS) == set(Status)
