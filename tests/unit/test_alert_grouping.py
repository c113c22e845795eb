"""Which alerts are duplicates of each other, and which share an incident: the pure grouping functions."""

from __future__ import annotations

from typing import Any

import pytest

from security.alerts import grouping
from security.alerts.model import Alert, AlertEvent, AlertRule


def alert(
    *,
    kind: str = "rule",
    suppression: dict[str, Any] | None = None,
    group: dict[str, Any] | None = None,
    entities: dict[str, list[str]] | None = None,
    fields: tuple[dict[str, Any], ...] = (),
) -> Alert:
    at = "2026-11-25T10:00:00.000000Z"
    return Alert(
        id="a",
        kind=kind,  # type: ignore[arg-type]
        rule=AlertRule(id="r", title="r", suppression=suppression or {}),
        first=at,
        last=at,
        detected_at=at,
        events=tuple(
            AlertEvent(id=f"e{n}", timestamp=at, dataset="d", fields=f) for n, f in enumerate(fields)
        ),
        group=group or {},
        entities=entities or {},
    )


@pytest.mark.parametrize(
    "made, expected",
    [
        # A rule match groups on its entities (host, user, source address), not on anything else it carries.
        (alert(entities={"source_ip": ["192.0.2.1"], "other": ["x"]}), {"source_ip": ["192.0.2.1"]}),
        # A correlation groups on its group-by values.
        (
            alert(kind="correlation", group={"user.name": "bob"}, entities={"host": ["h"]}),
            {"user.name": "bob"},
        ),
        # The rule's own suppression fields win, with every distinct value of its events, sorted.
        (
            alert(
                suppression={"fields": ["user.name"]},
                entities={"host": ["h"]},
                fields=({"user.name": "bob"}, {"user.name": ["carol", "bob"]}, {}),
            ),
            {"user.name": ["bob", "carol"]},
        ),
        # A field that names an entity also takes the entity's values: events carry only the fields rules read.
        (
            alert(suppression={"fields": ["source.ip"]}, entities={"source_ip": ["192.0.2.1"]}),
            {"source.ip": ["192.0.2.1"]},
        ),
        # A single field may be named without a list.
        (alert(suppression={"fields": "host.name"}, fields=({"host.name": "h1"},)), {"host.name": ["h1"]}),
    ],
)
def test_group_values(made: Alert, expected: dict[str, Any]) -> None:
    assert grouping.group_values(made) == expected


def test_group_key_is_a_stable_digest_of_the_values() -> None:
    one = alert(entities={"host": ["h"], "user": ["u"]})
    same = alert(entities={"user": ["u"], "host": ["h"]})
    other = alert(entities={"host": ["h2"], "user": ["u"]})
    assert grouping.group_key(one) == grouping.group_key(same) != grouping.group_key(other)
    assert len(grouping.group_key(one)) == 64


@pytest.mark.parametrize(
    "suppression, expected_s",
    [
        ({}, 300.0),  # the sink's default
        ({"window": "10m"}, 600.0),  # a Sigma timespan
        ({"window": "2h"}, 7200.0),
        ({"window": 45}, 45.0),  # plain seconds
        ({"window": "soon"}, 300.0),  # unreadable: the default, never a lost alert
    ],
)
def test_suppression_window(suppression: dict[str, Any], expected_s: float) -> None:
    assert grouping.suppression_window_s(alert(suppression=suppression), 300.0) == expected_s


def test_entities_are_shared_on_host_user_or_source_address_only() -> None:
    assert grouping.shares_entity({"host": ["a", "b"]}, {"host": ["b"]})
    assert grouping.shares_entity({"source_ip": ["192.0.2.1"]}, {"source_ip": ["192.0.2.1"], "host": ["x"]})
    assert not grouping.shares_entity({"host": ["a"]}, {"user": ["a"]})
    assert not grouping.shares_entity({"other": ["a"]}, {"other": ["a"]})
    assert grouping.merged_entities({"host": ["b"]}, {"host": ["a", "b"], "user": ["u"]}) == {
        "host": ["a", "b"],
        "user": ["u"],
    }
