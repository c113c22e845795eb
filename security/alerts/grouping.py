"""What makes two alerts duplicates, and what makes an alert part of an incident: pure functions of the alerts.

Duplicates share a rule and a group key within the rule's suppression window. The group key is, in order of
preference: the values of the rule's own suppression fields (``suppression: {fields: [...]}``), a correlation's
group-by values, or a rule match's entities (host, user, source address). So a brute force that keeps matching
from one address is one alert with a count, while the same rule firing for another address is another alert.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from sigma.correlations import SigmaCorrelationTimespan
from sigma.exceptions import SigmaError

from security.alerts.model import ENTITY_FIELDS, Alert

GROUPING_ENTITIES: tuple[str, ...] = ("host", "user", "source_ip")
"""The entities an incident groups its alerts on."""
log = logging.getLogger(__name__)


def group_values(alert: Alert) -> dict[str, Any]:
    """The values that identify ``alert``'s series of duplicates (see the module docstring)."""
    fields = alert.rule.suppression.get("fields") or ()
    if isinstance(fields, str):
        fields = (fields,)
    if fields:
        return {name: _values_of(alert, str(name)) for name in fields}
    if alert.kind == "correlation":
        return dict(alert.group)
    return {name: alert.entities.get(name, []) for name in GROUPING_ENTITIES if alert.entities.get(name)}


def group_key(alert: Alert) -> str:
    """SHA-256 (hex) of the group values in canonical JSON: a fixed-width key an index can hold."""
    canonical = orjson.dumps(group_values(alert), option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(canonical).hexdigest()


def suppression_window_s(alert: Alert, default_s: float) -> float:
    """The rule's own ``suppression.window`` (a Sigma timespan such as ``10m``), else ``default_s``.

    A window the rule spells wrong falls back to the default (logged) rather than dropping the alert.
    """
    window = alert.rule.suppression.get("window")
    if window is None:
        return default_s
    if isinstance(window, int | float) and not isinstance(window, bool):
        return float(window)
    try:
        return float(SigmaCorrelationTimespan(str(window)).seconds)
    except (SigmaError, ValueError):
        log.warning(
            "rule %s: suppression window %r is not a timespan; using %.0f s", alert.rule.id, window, default_s
        )
        return default_s


def shares_entity(entities: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether two entity maps name the same host, user or source address."""
    return any(set(entities.get(name) or ()) & set(other.get(name) or ()) for name in GROUPING_ENTITIES)


def merged_entities(entities: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, list[str]]:
    """The union of two entity maps, each list sorted."""
    names = set(entities) | set(other)
    return {
        name: sorted(set(entities.get(name) or ()) | set(other.get(name) or ())) for name in sorted(names)
    }


def _values_of(alert: Alert, name: str) -> list[str]:
    """Distinct values of field ``name`` in the alert's group, its events' fields and, for a field that names an
    entity (``source.ip``), the alert's entity values (the events carry only the fields the rule read), sorted."""
    found: set[str] = set()
    if name in alert.group:
        found.add(str(alert.group[name]))
    for entity, names in ENTITY_FIELDS.items():
        if name in names:
            found.update(alert.entities.get(entity) or ())
    for event in alert.events:
        value = event.fields.get(name)
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                found.add(str(item))
    return sorted(found)
